import pytest
import torch
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm

from repvgg_seg.models import QARepVGGBlock, RepVGG, RepVGGBlock
from repvgg_seg.reparam import identity_kernel, reparameterize_model

from helpers import assert_outputs_close, randomize_bn

BLOCK_CASES = [
    # in, out, stride, dilation, groups
    (8, 8, 1, 1, 1),  # with identity
    (8, 16, 1, 1, 1),  # channel change: no identity
    (8, 8, 2, 1, 1),  # stride 2: no identity
    (8, 8, 1, 2, 1),  # dilated
    (8, 8, 1, 4, 2),  # dilated + grouped
    (16, 16, 1, 1, 4),  # grouped with identity
    (8, 16, 2, 1, 2),  # grouped, stride 2
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_class", [RepVGGBlock, QARepVGGBlock])
@pytest.mark.parametrize("norm", ["BN", "SyncBN"])
@pytest.mark.parametrize("in_channels, out_channels, stride, dilation, groups", BLOCK_CASES)
def test_block_fusion_is_exact(
    in_channels, out_channels, stride, dilation, groups, norm, block_class, dtype
):
    block = block_class(
        in_channels, out_channels, stride, dilation, groups, norm_cfg=dict(type=norm, eps=1e-3)
    )
    assert (block.branch_identity is not None) == (in_channels == out_channels and stride == 1)
    block = randomize_bn(revert_sync_batchnorm(block)).eval().to(dtype)
    x = torch.randn(2, in_channels, 17, 19, dtype=dtype)
    with torch.no_grad():
        expected = block(x)
        block.switch_to_deploy()
        block.switch_to_deploy()  # idempotent
        actual = block(x)
    assert not hasattr(block, "branch_3x3") and not hasattr(block, "bn") and block.deploy
    assert block.fused_conv.dilation == (dilation, dilation)
    assert block.fused_conv.padding == (dilation, dilation)
    if dtype == torch.float64:
        # float64 round-off is ~1e-16: 1e-10 would expose any term the fusion gets wrong.
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    else:
        assert_outputs_close(actual, expected)


@pytest.mark.parametrize("block_class", [RepVGGBlock, QARepVGGBlock])
def test_fusion_uses_each_bn_eps(block_class):
    block = block_class(4, 4, norm_cfg=dict(type="BN", eps=0.5))
    randomize_bn(block).eval()
    # RepVGG: the 1x1 branch's BN; QARepVGG: the BN after the sum.
    other_bn = block.branch_1x1.bn if block_class is RepVGGBlock else block.bn
    other_bn.eps = 1e-5
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = block(x)
        block.switch_to_deploy()
        assert_outputs_close(block(x), expected)


def test_equivalent_kernel_is_differentiable():
    block = randomize_bn(RepVGGBlock(4, 4, groups=2))
    kernel, bias = block.get_equivalent_kernel_bias()
    (kernel.square().sum() + bias.sum()).backward()
    assert block.branch_3x3.conv.weight.grad is not None
    assert block.branch_1x1.conv.weight.grad.abs().sum() > 0
    assert block.branch_identity.weight.grad.abs().sum() > 0


def test_qarepvgg_equivalent_kernel_is_differentiable():
    block = randomize_bn(QARepVGGBlock(4, 4, groups=2))
    kernel, bias = block.get_equivalent_kernel_bias()
    (kernel.square().sum() + bias.sum()).backward()
    for param in (block.branch_3x3.conv.weight, block.branch_1x1.weight, block.bn.weight):
        assert param.grad.abs().sum() > 0
    assert block.branch_3x3.bn.bias.grad.abs().sum() > 0  # through the sum's BN


def test_identity_kernel_is_identity_for_grouped_conv():
    x = torch.randn(1, 8, 5, 5)
    out = torch.nn.functional.conv2d(
        x, identity_kernel(8, 4, x.device, x.dtype), padding=1, groups=4
    )
    torch.testing.assert_close(out, x)


def test_reparameterize_copy_leaves_original_untouched():
    model = randomize_bn(RepVGG("A0")).eval()
    fused = reparameterize_model(model, inplace=False)
    assert fused is not model and not model.deploy and fused.deploy
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


@pytest.mark.parametrize("mode", ["classification", "fast"])
def test_deployed_state_dict_round_trips_strictly(mode):
    model = randomize_bn(RepVGG("B1g2", dilation_mode=mode)).eval()
    model.switch_to_deploy()
    target = RepVGG("B1g2", dilation_mode=mode, deploy=True).eval()
    target.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(target(x), model(x)):
            torch.testing.assert_close(a, b)


def test_loading_wrong_kind_of_checkpoint_explains_the_fix():
    training = RepVGG("A0")
    deployed = RepVGG("A0", deploy=True)
    with pytest.raises(RuntimeError, match="training-time checkpoint.*switch_to_deploy"):
        deployed.load_state_dict(training.state_dict())
    with pytest.raises(RuntimeError, match="deployed \\(fused\\) checkpoint.*deploy=True"):
        training.load_state_dict(deployed.state_dict())


def test_mmseg_config_with_custom_imports_builds_and_fuses_segmentor():
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules()
    cfg = Config(
        dict(
            custom_imports=dict(imports=["repvgg_seg"], allow_failed_imports=False),
            model=dict(
                type="EncoderDecoder",
                data_preprocessor=dict(type="SegDataPreProcessor", size=(64, 128)),
                backbone=dict(type="RepVGG", arch="A0", dilation_mode="fast"),
                decode_head=dict(
                    type="PSPHead",
                    in_channels=1280,
                    in_index=3,
                    channels=32,
                    pool_scales=(1, 2, 3, 6),
                    num_classes=19,
                    norm_cfg=dict(type="BN"),
                    align_corners=False,
                    loss_decode=dict(type="CrossEntropyLoss"),
                ),
            ),
        )
    )
    from mmengine.utils import import_modules_from_strings

    import_modules_from_strings(**cfg.custom_imports)
    model = MODELS.build(cfg.model)
    model.init_weights()
    randomize_bn(model).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        logits = model(x, mode="tensor")
        assert logits.shape == (1, 19, 8, 16)
        reparameterize_model(model)
        assert model.backbone.deploy
        assert_outputs_close(model(x, mode="tensor"), logits)
