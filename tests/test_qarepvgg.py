"""QARepVGG (Chu et al., "Make RepVGG Greater Again", AAAI 2024): exact fusion in float64,
parameter counts, the authors' checkpoint layout, and the same deployed network as RepVGG.

Block fusion in float32 (every block case, BN and SyncBN) is in test_reparam.py and every
variant x dilation mode in test_backbone.py, both for both block types.

The authors' key lists (``fixtures/checkpoint_formats/qarepvgg_QARepVGG-*_train.tsv``) were
written from the structure of their ``QARepVGGBlockV2`` network: per block ``rbr_dense``
(3x3 conv + BN), ``rbr_1x1`` (bare conv, no bias), ``rbr_identity`` (``nn.Identity``, no
parameters, only where the shape allows it) and ``bn``; stem ``stage0``, stages
``stage1``..``stage4``, head ``linear``. The B0 list's parameters add up to the count the
authors publish (15,808,616 with a 1000-class head), which checks the lists.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import re
from pathlib import Path

import pytest
import torch

from repvgg_seg.models import ARCHS, DILATION_MODES, RepVGG, RepVGGClassifier
from repvgg_seg.weights import CheckpointError, convert_checkpoint_file

from helpers import assert_outputs_close, load_tool, randomize_bn, run_script

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoint_formats"
AUTHORS_B0_PARAMETERS = 15_808_616
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (FIXTURES / f"qarepvgg_QARepVGG-{arch}_train.tsv").read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(int(n) for n in re.findall(r"\d+", shape))
    return shapes


def parameter_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(
        torch.Size(shape).numel() for key, shape in shapes.items() if not key.endswith(BUFFERS)
    )


OUR_KEY = re.compile(r"^(?:stem|stages\.(\d+)\.(\d+))\.(branch_3x3|branch_1x1|bn)\.(.+)$")
THEIR_BRANCH = {"branch_3x3": "rbr_dense", "branch_1x1": "rbr_1x1", "bn": "bn"}


def in_authors_layout(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict:
    """Our QARepVGG backbone's state dict under the authors' keys, with a random head."""
    out = {}
    for key, value in state.items():
        stage, block, branch, leaf = OUR_KEY.match(key).groups()
        module = "stage0" if stage is None else f"stage{int(stage) + 1}.{block}"
        out[f"{prefix}{module}.{THEIR_BRANCH[branch]}.{leaf}"] = value.clone()
    channels = state["stages.3.0.bn.weight"].shape[0]
    out[f"{prefix}linear.weight"] = torch.randn(1000, channels)
    out[f"{prefix}linear.bias"] = torch.randn(1000)
    return out


def random_backbone(arch: str = "A0", **kwargs) -> RepVGG:
    torch.manual_seed(0)
    model = RepVGG(arch, out_indices=(0, 1, 2, 3, 4), block_type="QARepVGG", **kwargs)
    return randomize_bn(model).eval()


def features(model: RepVGG, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return model.eval()(x)


def assert_same_features(actual: RepVGG, expected: RepVGG) -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for got, want in zip(features(actual, x), features(expected, x), strict=True):
        assert_outputs_close(got, want)


def pretrained(checkpoint: Path, **kwargs) -> RepVGG:
    model = RepVGG(
        "A0",
        out_indices=(0, 1, 2, 3, 4),
        init_cfg={"type": "Pretrained", "checkpoint": str(checkpoint)},
        **kwargs,
    )
    model.init_weights()
    return model


# ---------------------------------------------------------------- fusion in float64


@pytest.mark.parametrize("mode", DILATION_MODES)
@pytest.mark.parametrize("arch", ["A0", "B1g4"])
def test_fusion_is_exact_in_float64(arch, mode):
    # Round-off of float64 is ~1e-16 relative; 1e-10 leaves room for depth, not for a
    # wrong term (a missing eps or bias shifts outputs by far more than that).
    model = random_backbone(arch, dilation_mode=mode).double()
    x = torch.randn(1, 3, 40, 40, dtype=torch.float64)
    expected = features(model, x)
    model.switch_to_deploy()
    for got, want in zip(features(model, x), expected, strict=True):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * max(1.0, scale))


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("arch", ["A0", "B0", "B1g2"])
def test_parameter_count_equals_the_authors_network(arch):
    expected = parameter_count(reference_shapes(arch))
    if arch == "B0":
        assert expected == AUTHORS_B0_PARAMETERS
    model = RepVGGClassifier(arch, num_classes=1000, block_type="QARepVGG")
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("arch", ARCHS)
def test_deployed_classifier_is_repvggs(arch):
    with torch.device("meta"):
        qarepvgg = RepVGGClassifier(arch, block_type="QARepVGG", deploy=True)
        repvgg = RepVGGClassifier(arch, deploy=True)
    shapes = {k: v.shape for k, v in repvgg.state_dict().items()}
    assert {k: v.shape for k, v in qarepvgg.state_dict().items()} == shapes


def test_fused_qarepvgg_loads_into_a_deployed_repvgg_backbone():
    model = random_backbone(dilation_mode="fast")
    fused = random_backbone(dilation_mode="fast")
    fused.switch_to_deploy()
    target = RepVGG("A0", out_indices=(0, 1, 2, 3, 4), dilation_mode="fast", deploy=True)
    target.load_state_dict(fused.state_dict(), strict=True)
    assert_same_features(target, model)


# ---------------------------------------------------------------- the authors' layout


@pytest.mark.parametrize("arch", ["A0", "B0", "B1g2"])
def test_layout_matches_the_authors_key_list(arch):
    with torch.device("meta"):
        model = RepVGG(arch, block_type="QARepVGG")
    written = in_authors_layout(model.state_dict(), prefix="")
    assert {k: tuple(v.shape) for k, v in written.items()} == reference_shapes(arch)


def test_authors_checkpoint_loads_strictly_with_the_same_features(tmp_path):
    source = random_backbone()
    path = tmp_path / "qarepvgg_a0_ddp.pth"
    torch.save({"state_dict": in_authors_layout(source.state_dict())}, path)
    assert_same_features(pretrained(path, block_type="QARepVGG"), source)
    # A deployed backbone fuses it on load, whatever its block type: fused, they are one.
    assert_same_features(pretrained(path, deploy=True), source)


def test_converted_authors_checkpoint_loads_into_our_backbone(tmp_path):
    source = random_backbone()
    torch.save(in_authors_layout(source.state_dict()), tmp_path / "theirs.pth")
    meta = convert_checkpoint_file(tmp_path / "theirs.pth", tmp_path / "ours.pth")
    assert meta["source_format"] == "qarepvgg" and meta["block_type"] == "QARepVGG"
    model = RepVGG("A0", out_indices=(0, 1, 2, 3, 4), block_type="QARepVGG")
    model.load_state_dict(torch.load(tmp_path / "ours.pth")["state_dict"], strict=True)
    assert_same_features(model, source)


def test_convert_tool_says_how_to_load_a_training_time_qarepvgg(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    torch.save(in_authors_layout(random_backbone().state_dict()), tmp_path / "theirs.pth")
    convert = load_tool("convert_checkpoint").main
    assert convert([str(tmp_path / "theirs.pth"), str(tmp_path / "ours.pth")]) == 0
    assert "RepVGG(arch='A0', deploy=False, block_type='QARepVGG')" in caplog.text
    caplog.clear()
    assert convert([str(tmp_path / "theirs.pth"), str(tmp_path / "fused.pth"), "--deploy"]) == 0
    assert "RepVGG(arch='A0', deploy=True)." in caplog.text


def test_block_type_mismatch_names_the_setting(tmp_path):
    torch.save(in_authors_layout(random_backbone().state_dict()), tmp_path / "qa.pth")
    with pytest.raises(CheckpointError, match="QARepVGG blocks.*block_type='QARepVGG'"):
        pretrained(tmp_path / "qa.pth")
    torch.save({"model": RepVGG("A0").state_dict()}, tmp_path / "repvgg.pth")
    with pytest.raises(CheckpointError, match="RepVGG blocks.*block_type='RepVGG'"):
        pretrained(tmp_path / "repvgg.pth", block_type="QARepVGG")


# ---------------------------------------------------------------- deploying a segmentor


def test_segmentor_deploys_to_the_repvgg_deploy_config():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from repvgg_seg.deploy import deploy_segmentor, make_deploy_config

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = Config.fromfile(str(root / "pspnet_qarepvgg_a0_synthetic.py"))
    init_default_scope("mmseg")
    trained = randomize_bn(MODELS.build(cfg.model), seed=1).eval()
    deployed = copy.deepcopy(trained)
    pairs = deploy_segmentor(deployed, torch.randn(1, 3, 32, 32))
    deploy_cfg = make_deploy_config(cfg, pairs)
    # The deploy config of the RepVGG config rebuilds it too: one deployed network.
    repvgg_cfg = Config.fromfile(str(root / "pspnet_repvgg_a0_synthetic.py"))
    for config in (deploy_cfg, make_deploy_config(repvgg_cfg, pairs)):
        rebuilt = MODELS.build(config.model).eval()
        rebuilt.load_state_dict(deployed.state_dict(), strict=True)
        image = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            # Rebuilt with Winograd convs: equal up to float32 round-off.
            assert_outputs_close(rebuilt(image, mode="tensor"), trained(image, mode="tensor"))


# ---------------------------------------------------------------- the quantization study


# The study's data checks run in a process of their own: scikit-learn (the digits) brings its
# own OpenMP runtime, and importing it first into the test process, after earlier tests' torch,
# ONNX Runtime and OpenVINO threads, crashed pytest with SIGSEGV in .ci/run (2 threads).
STUDY_DATA_CHECKS = """
import importlib.util, sys, torch
from pathlib import Path
path = Path("experiments/quantization_study.py").resolve()
spec = importlib.util.spec_from_file_location("experiments_quantization_study", path)
study = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = study
spec.loader.exec_module(study)
train, val = study.digits()
assert train.images.shape == (1437, 3, 16, 16) and val.images.shape == (360, 3, 16, 16)
assert sorted(set(val.labels.tolist())) == list(range(10))
# No flips or crops: two calls give the same tensors, and the three channels are one.
again, _ = study.digits()
torch.testing.assert_close(again.images, train.images, rtol=0, atol=0)
torch.testing.assert_close(
    train.images[:, 0] * 0.229 + 0.485, train.images[:, 2] * 0.225 + 0.406
)
fit, holdout = study.holdout(train)
assert len(fit.labels) + len(holdout.labels) == 1437 and len(holdout.labels) == 360
# The LR is chosen on a quarter of train (never on val), and trained on the rest.
torch.testing.assert_close(holdout.images, train.images[::4], rtol=0, atol=0)
keep = torch.arange(1437) % 4 != 0
torch.testing.assert_close(fit.images, train.images[keep], rtol=0, atol=0)
print("checked")
"""


def test_study_data_is_every_digit_once_unaugmented_and_the_lr_holdout_is_disjoint():
    if importlib.util.find_spec("sklearn") is None:  # found without importing it here
        pytest.skip("needs scikit-learn (requirements/dev.txt)")
    done = run_script(STUDY_DATA_CHECKS, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "checked", done.stderr
