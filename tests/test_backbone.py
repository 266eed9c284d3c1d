import pytest
import torch
from mmengine.model import revert_sync_batchnorm

from repvgg_seg.models import (
    ARCHS,
    BLOCK_TYPES,
    DILATION_MODES,
    RepVGG,
    RepVGGClassifier,
    get_arch,
)
from repvgg_seg.models.arch import layer_plan
from repvgg_seg.reparam import reparameterize_model

from helpers import assert_outputs_close, randomize_bn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


EXPECTED_OUTPUT_STRIDES = {
    "classification": (2, 4, 8, 16, 32),
    "dilated": (2, 4, 8, 8, 8),
    "fast": (2, 4, 8, 8, 8),
}

# Paper Table 4: deployed parameters (M) with a 1000-class FC.
PAPER_PARAMS = {
    "A0": 8.30,
    "A1": 12.78,
    "A2": 25.49,
    "B0": 14.33,
    "B1": 51.82,
    "B1g2": 41.36,
    "B1g4": 36.12,
    "B2": 80.31,
    "B2g4": 55.77,
    "B3": 110.96,
}


@pytest.fixture(scope="module")
def random_state_dicts():
    """One random training-time state dict per variant and block type, BN statistics
    included."""
    cache = {}

    def get(arch, block_type="RepVGG"):
        if (arch, block_type) not in cache:
            with torch.device("meta"):
                model = RepVGG(arch, block_type=block_type)
            generator = torch.Generator().manual_seed(0)
            state = {}
            for key, value in model.state_dict().items():
                if key.endswith("num_batches_tracked"):
                    state[key] = torch.zeros((), dtype=torch.long)
                elif key.endswith("running_var"):
                    state[key] = torch.rand(value.shape, generator=generator) + 0.25
                elif value.dim() == 4:  # conv kernels
                    fan_in = value[0].numel()
                    state[key] = torch.randn(value.shape, generator=generator) * (2 / fan_in) ** 0.5
                else:
                    state[key] = torch.randn(value.shape, generator=generator) * 0.5
            cache[arch, block_type] = state
        return cache[arch, block_type]

    return get


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
@pytest.mark.parametrize("mode", DILATION_MODES)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_variant_and_mode_forward_shapes_and_fuses_exactly(
    arch, mode, block_type, random_state_dicts
):
    # Built on the meta device and filled from a shared random state dict: constructing
    # and initializing the B3 variants three times over would dominate the suite.
    with torch.device("meta"):
        model = RepVGG(arch, dilation_mode=mode, out_indices=(0, 1, 2, 3, 4), block_type=block_type)
    # assign=True shares the cached tensors; fusion only reads them.
    model.load_state_dict(random_state_dicts(arch, block_type), strict=True, assign=True)
    model.eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        outs = model(x)
        assert len(outs) == 5
        strides = EXPECTED_OUTPUT_STRIDES[mode]
        for out, channels, stride in zip(outs, get_arch(arch).channels, strides):
            assert out.shape == (1, channels, -(-48 // stride), -(-48 // stride))
        reparameterize_model(model)
        fused_outs = model(x)
    assert model.deploy and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for out, fused_out in zip(outs, fused_outs):
        assert_outputs_close(fused_out, out)


def test_fast_mode_dilates_only_last_five_layers():
    model = RepVGG("B1g2", dilation_mode="fast")
    dilations = [model.stem.dilation] + [b.dilation for s in model.stages for b in s]
    assert dilations[-5:] == [2, 2, 2, 2, 4]
    assert set(dilations[:-5]) == {1}
    strides = [model.stem.stride] + [b.stride for s in model.stages for b in s]
    assert strides.count(2) == 3


@pytest.mark.parametrize("mode", list(DILATION_MODES))
@pytest.mark.parametrize("arch", ["A0", "B1g4"])
def test_backbone_blocks_are_the_layer_plan(arch, mode):
    model = RepVGG(arch, in_channels=4, dilation_mode=mode)
    plan = layer_plan(get_arch(arch), *DILATION_MODES[mode], in_channels=4)
    blocks = [[model.stem], *(list(stage) for stage in model.stages)]
    assert [len(stage) for stage in blocks] == [len(stage) for stage in plan]
    for block, spec in zip(sum(blocks, []), (spec for stage in plan for spec in stage)):
        built = (block.in_channels, block.out_channels, block.stride, block.dilation, block.groups)
        assert built == (
            spec.in_channels,
            spec.out_channels,
            spec.stride,
            spec.dilation,
            spec.groups,
        )
        assert (block.branch_identity is not None) == spec.identity
    # A0 "fast": 22 layers, of which the last 4 of stage 4 and the stage-5 layer are dilated.
    if (arch, mode) == ("A0", "fast"):
        specs = [spec for stage in plan for spec in stage]
        assert [(s.index, s.dilation) for s in specs if s.dilation > 1] == [
            (17, 2),
            (18, 2),
            (19, 2),
            (20, 2),
            (21, 4),
        ]


def test_dilated_mode_dilates_whole_last_two_stages():
    model = RepVGG("A0", dilation_mode="dilated")
    assert {b.dilation for b in model.stages[2]} == {2}
    assert {b.dilation for b in model.stages[3]} == {4}
    for block in model.stages[2]:
        assert block.branch_3x3.conv.padding == (2, 2)
        assert block.branch_1x1.conv.padding == (0, 0)


def test_groupwise_layers_follow_paper_layout():
    model = RepVGG("B1g4")
    groups = [model.stem.groups] + [b.groups for s in model.stages for b in s]
    assert groups[0] == 1
    assert [i for i, g in enumerate(groups) if g == 4] == list(range(2, 27, 2))


@pytest.mark.parametrize("arch", PAPER_PARAMS)
def test_deployed_classifier_parameter_count_matches_paper(arch):
    model = RepVGGClassifier(arch, deploy=True)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params - PAPER_PARAMS[arch]) < 0.01, f"{arch}: {params:.3f}M"


def test_classifier_fusion_is_exact_on_grouped_variant():
    model = randomize_bn(RepVGGClassifier("B1g2", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        reparameterize_model(model)
        assert_outputs_close(model(x), expected)


def test_syncbn_built_backbone_fuses_exactly_after_conversion_to_bn():
    model = RepVGG("A0", dilation_mode="fast", norm_cfg=dict(type="SyncBN"))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    model = randomize_bn(revert_sync_batchnorm(model)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model.switch_to_deploy()
        assert_outputs_close(model(x)[-1], expected[-1])


@pytest.mark.parametrize("block_type", BLOCK_TYPES)
def test_syncbn_modules_fuse_directly(block_type):
    sync = RepVGG("A0", norm_cfg=dict(type="SyncBN"), block_type=block_type)
    randomize_bn(sync)
    plain = revert_sync_batchnorm(RepVGG("A0", block_type=block_type))
    plain.load_state_dict(sync.state_dict())
    plain.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = plain(x)[-1]
        sync.switch_to_deploy()
        assert_outputs_close(sync.eval()(x)[-1], expected)


@pytest.mark.parametrize("frozen_stages", [0, 2])
def test_frozen_stages_have_no_gradient_and_stay_in_eval(frozen_stages):
    model = RepVGG("A0", frozen_stages=frozen_stages)
    model.train()
    sum(o.sum() for o in model(torch.randn(2, 3, 32, 32))).backward()
    for index in range(5):
        stage = model.stage(index)
        frozen = index <= frozen_stages
        assert all(not p.requires_grad for p in stage.parameters()) == frozen
        assert all(p.grad is None for p in stage.parameters()) == frozen
        assert all(not m.training for m in stage.modules()) == frozen


def test_norm_eval_keeps_bn_in_eval_and_train_returns_self():
    model = RepVGG("A0", norm_eval=True)
    assert model.train() is model
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert model.stage(4).training
    assert model.eval() is model


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    plain = RepVGG("A0", out_indices=(4,))
    checkpointed = RepVGG("A0", out_indices=(4,), with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    for model in (plain, checkpointed):
        model.train()
        model(x)[0].square().mean().backward()
    torch.testing.assert_close(
        checkpointed.stem.branch_3x3.conv.weight.grad, plain.stem.branch_3x3.conv.weight.grad
    )


def test_out_indices_order_and_channels():
    model = RepVGG("B2", out_indices=(4, 2))
    outs = model.eval()(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == list(model.out_channels) == [2560, 320]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(arch="B9"), "valid variants are A0, A1"),
        (dict(dilation_mode="slow"), "classification, dilated, fast"),
        (dict(out_indices=(5,)), "out_indices"),
        (dict(frozen_stages=7), "frozen_stages"),
        (dict(strides=(2, 2, 2)), "strides"),
        (dict(block_type="QARepVGGv2"), "RepVGG, QARepVGG"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RepVGG(**kwargs)


def test_variant_names_accept_paper_and_library_spellings():
    assert RepVGG("RepVGG-B1g2").arch_name == "B1g2"
    assert RepVGG("repvgg_a0").arch_name == "A0"
