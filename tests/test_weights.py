"""Pretrained weights: the published table, downloads, checkpoint formats and conversion.

Format fixtures are our own randomized backbone written out in each format's key layout;
the layout is checked against the reference key lists (``fixtures/checkpoint_formats``,
every key and shape of the real implementations), so loading them back and getting the
same features proves the conversion for that format.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.server
import re
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from repvgg_seg.models.backbone import RepVGG, pretrained_source
from repvgg_seg.weights import (
    BASE_URL_ENV,
    OFFLINE_ENV,
    WEIGHTS,
    CheckpointError,
    ChecksumError,
    published_weights,
)

from helpers import assert_outputs_close, load_tool, one_error_line, randomize_bn, tool_exit

FIXTURES = Path(__file__).parent / "fixtures" / "checkpoint_formats"
ROOT = Path(__file__).resolve().parents[1]

OUR_BRANCHES = (
    "branch_3x3.conv",
    "branch_3x3.bn",
    "branch_1x1.conv",
    "branch_1x1.bn",
    "branch_identity",
    "fused_conv",
)
OUR_KEY = re.compile(
    r"^(?:stem|stages\.(\d+)\.(\d+))\.(" + "|".join(map(re.escape, OUR_BRANCHES)) + r")\.(\w+)$"
)

# format -> (prefix, stem, stage template, number of our stages.0, branch names in
# OUR_BRANCHES order, head keys). Written from the reference key lists, independently of
# repvgg_seg.weights.formats.
LAYOUTS = {
    "official": (
        "",
        "stage0",
        "stage{}.{}",
        1,
        (
            "rbr_dense.conv",
            "rbr_dense.bn",
            "rbr_1x1.conv",
            "rbr_1x1.bn",
            "rbr_identity",
            "rbr_reparam",
        ),
        ("linear.weight", "linear.bias"),
    ),
    "mmpretrain": (
        "backbone.",
        "stem",
        "stage_{}.{}",
        1,
        (
            "branch_3x3.conv",
            "branch_3x3.norm",
            "branch_1x1.conv",
            "branch_1x1.norm",
            "branch_norm",
            "branch_reparam",
        ),
        ("head.fc.weight", "head.fc.bias"),
    ),
    "timm": (
        "",
        "stem",
        "stages.{}.{}",
        0,
        (
            "conv_kxk.conv",
            "conv_kxk.bn",
            "conv_1x1.conv",
            "conv_1x1.bn",
            "identity",
            "reparam_conv",
        ),
        ("head.fc.weight", "head.fc.bias"),
    ),
    "repvgg_seg": ("backbone.", "stem", "stages.{}.{}", 0, OUR_BRANCHES, ("fc.weight", "fc.bias")),
}

REFERENCE_LISTS = {
    ("official", "A0", False): "official_RepVGG-A0_train.tsv",
    ("official", "A0", True): "official_RepVGG-A0_deploy.tsv",
    ("official", "B1g2", False): "official_RepVGG-B1g2_train.tsv",
    ("official", "B1g2", True): "official_RepVGG-B1g2_deploy.tsv",
    ("mmpretrain", "A0", False): "mmpretrain_repvgg-A0_train.tsv",
    ("mmpretrain", "B1g2", False): "mmpretrain_repvgg-B1g2_train.tsv",
    ("timm", "A0", False): "timm_repvgg_a0_train.tsv",
}

INPUT = (1, 3, 64, 64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_reference(name: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (FIXTURES / name).read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        shapes[key] = tuple(int(n) for n in re.findall(r"\d+", shape))
    return shapes


def source_model(arch: str, deploy: bool = False, seed: int = 0) -> RepVGG:
    """Our backbone with random weights and BN statistics, fused if ``deploy``."""
    torch.manual_seed(seed)
    model = randomize_bn(RepVGG(arch, out_indices=(0, 1, 2, 3, 4)), seed).eval()
    if deploy:
        model.switch_to_deploy()
    return model


def in_layout(state: dict[str, torch.Tensor], fmt: str, num_classes: int = 1000) -> dict:
    """Our backbone state dict written in format ``fmt``'s key layout, head included."""
    prefix, stem, stage, first, branches, head = LAYOUTS[fmt]
    out = {}
    for key, value in state.items():
        match = OUR_KEY.match(key)
        assert match, key
        stage_index, block, branch, leaf = match.groups()
        module = stem if stage_index is None else stage.format(int(stage_index) + first, block)
        out[f"{prefix}{module}.{branches[OUR_BRANCHES.index(branch)]}.{leaf}"] = value.clone()
    channels = next(v.shape[0] for k, v in state.items() if k.startswith("stages.3.0."))
    out[head[0]] = torch.randn(num_classes, channels)
    out[head[1]] = torch.randn(num_classes)
    return out


def features(model: RepVGG, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    model.eval()
    with torch.no_grad():
        return model(x)


def assert_same_features(actual: RepVGG, expected: RepVGG) -> None:
    x = torch.randn(INPUT, generator=torch.Generator().manual_seed(1))
    for got, want in zip(features(actual, x), features(expected, x), strict=True):
        assert_outputs_close(got, want)


def pretrained(arch: str, checkpoint: str | Path, deploy: bool = False) -> RepVGG:
    model = RepVGG(
        arch,
        out_indices=(0, 1, 2, 3, 4),
        deploy=deploy,
        init_cfg={"type": "Pretrained", "checkpoint": str(checkpoint)},
    )
    model.init_weights()
    return model


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt, arch, deployed", list(REFERENCE_LISTS))
def test_layout_matches_reference_key_list(fmt, arch, deployed):
    reference = read_reference(REFERENCE_LISTS[fmt, arch, deployed])
    written = in_layout(source_model(arch, deployed).state_dict(), fmt)
    assert {k: tuple(v.shape) for k, v in written.items()} == reference


def wrap(fmt: str, state: dict, deployed: bool, arch: str) -> dict:
    """The container each publisher saves its state dict in."""
    if fmt == "mmpretrain":
        return {"state_dict": state, "meta": {"mmcls_version": "1.0.0rc5", "epoch": 100}}
    if fmt == "repvgg_seg":
        if deployed:
            return {"model": state, "deploy": True, "arch": arch}
        return {
            "model": state,
            "model_ema": copy.deepcopy(state),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
            "epoch": 3,
            "args": {"model": f"RepVGG-{arch}", "lr": 0.1, "epochs": 120},
        }
    return state


@pytest.mark.parametrize(
    "fmt, arch, deployed",
    [
        *REFERENCE_LISTS,  # and the forms without a stored key list:
        ("mmpretrain", "A0", True),
        ("timm", "A0", True),
        ("repvgg_seg", "A0", False),
        ("repvgg_seg", "A0", True),
    ],
)
def test_every_format_loads_with_the_same_features(tmp_path, fmt, arch, deployed):
    source = source_model(arch, deployed)
    path = tmp_path / f"{fmt}.pth"
    torch.save(wrap(fmt, in_layout(source.state_dict(), fmt), deployed, arch), path)
    assert_same_features(pretrained(arch, path, deploy=deployed), source)


def test_official_checkpoint_saved_from_ddp_loads(tmp_path):
    source = source_model("A0")
    state = {f"module.{k}": v for k, v in in_layout(source.state_dict(), "official").items()}
    torch.save(state, tmp_path / "ddp.pth")
    assert_same_features(pretrained("A0", tmp_path / "ddp.pth"), source)


def test_mmseg_segmentor_checkpoint_loads_backbone_only(tmp_path):
    source = source_model("A0")
    state = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    state["decode_head.conv_seg.weight"] = torch.randn(19, 512, 1, 1)
    state["auxiliary_head.conv_seg.weight"] = torch.randn(19, 256, 1, 1)
    torch.save({"state_dict": state, "meta": {"mmseg_version": "1.2.2"}}, tmp_path / "seg.pth")
    assert_same_features(pretrained("A0", tmp_path / "seg.pth"), source)


def test_training_checkpoint_is_fused_for_a_deployed_backbone(tmp_path):
    source = source_model("A0")
    torch.save(in_layout(source.state_dict(), "official"), tmp_path / "train.pth")
    model = pretrained("A0", tmp_path / "train.pth", deploy=True)
    assert model.stem.deploy and not hasattr(model.stem, "branch_3x3")
    assert_same_features(model, source)


def test_fused_checkpoint_for_training_backbone_says_deploy_true(tmp_path):
    torch.save(in_layout(source_model("A0", True).state_dict(), "official"), tmp_path / "f.pth")
    with pytest.raises(CheckpointError, match=r"deployed \(fused.*deploy=True"):
        pretrained("A0", tmp_path / "f.pth")


def test_wrong_variant_names_both(tmp_path):
    torch.save(in_layout(source_model("A0").state_dict(), "mmpretrain"), tmp_path / "a0.pth")
    with pytest.raises(CheckpointError, match=r"RepVGG-A0 weights.*backbone is RepVGG-B2\b"):
        pretrained("B2", tmp_path / "a0.pth")


@pytest.mark.parametrize("head", [LAYOUTS["official"][5], LAYOUTS["mmpretrain"][5]])
def test_head_only_checkpoint_fails(tmp_path, head):
    torch.save({head[0]: torch.randn(1000, 1280), head[1]: torch.randn(1000)}, tmp_path / "h.pth")
    with pytest.raises(CheckpointError, match="no RepVGG backbone weights.*head alone"):
        pretrained("A0", tmp_path / "h.pth")


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    state = in_layout(source_model("A0").state_dict(), "official")
    del state["stage1.1.rbr_identity.running_var"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing \(1\): stages\.0\.1\.branch_identity"):
        pretrained("A0", tmp_path / "missing.pth")

    state = in_layout(source_model("A0").state_dict(), "official")
    state["stage1.0.se.down.weight"] = torch.randn(12, 48, 1, 1)
    torch.save(state, tmp_path / "se.pth")
    with pytest.raises(CheckpointError, match="not RepVGG layers: 'stage1.0.se.down.weight'"):
        pretrained("A0", tmp_path / "se.pth")


def test_pickled_objects_are_refused_with_the_file_name(tmp_path):
    path = tmp_path / "objects.pth"
    # torchvision-style training scripts pickle their argparse.Namespace.
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        pretrained("A0", path)


# ---------------------------------------------------------------- published table


def test_table_names_urls_and_base_override(monkeypatch):
    monkeypatch.delenv(BASE_URL_ENV, raising=False)
    entry = published_weights("RepVGG-B2")
    assert entry.url == (
        "https://download.openmmlab.com/mmclassification/v0/repvgg/"
        "repvgg-B2_8xb32_in1k_20221213-d8b420ef.pth"
    )
    assert published_weights("repvgg:b1g2").sha256_prefix == "ae6428fd"
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:1/mirror")
    assert published_weights("A0").url.startswith("http://127.0.0.1:1/mirror/repvgg-A0_")
    with pytest.raises(ValueError, match="No published ImageNet weights for RepVGG-B2g2"):
        published_weights("B2g2")
    with pytest.raises(ValueError, match="Unknown RepVGG variant 'Z9'"):
        published_weights("repvgg:Z9")


def test_pretrained_source_reads_init_cfg():
    cfg = [{"type": "Kaiming"}, {"type": "Pretrained", "checkpoint": "repvgg:B2"}]
    assert pretrained_source(cfg) == {"checkpoint": "repvgg:B2", "prefix": None}
    assert pretrained_source({"type": "Kaiming"}) is None
    with pytest.raises(ValueError, match="needs checkpoint="):
        pretrained_source({"type": "Pretrained"})


# ---------------------------------------------------------------- downloads


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        if self.path.endswith("truncated.pth"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/'served'``; counts requests."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's cache under tmp_path, online."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def publish_a0(root: Path, monkeypatch, corrupt: bool = False) -> RepVGG:
    """Serves a random A0 mmpretrain checkpoint under the table's file name, with the
    table's hash set to the file's (or, for ``corrupt``, the file damaged afterwards)."""
    source = source_model("A0")
    path = root / WEIGHTS["A0"].filename
    torch.save(wrap("mmpretrain", in_layout(source.state_dict(), "mmpretrain"), False, "A0"), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(WEIGHTS, "A0", replace(WEIGHTS["A0"], sha256_prefix=sha[:8]))
    if corrupt:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return source


def test_name_downloads_verifies_caches_then_stays_offline(server, hub, monkeypatch):
    base, root, requests = server
    monkeypatch.setenv(BASE_URL_ENV, base)
    source = publish_a0(root, monkeypatch)

    assert_same_features(pretrained("A0", "repvgg:A0"), source)
    assert requests == ["/" + WEIGHTS["A0"].filename]
    assert sorted(p.name for p in hub.iterdir()) == [WEIGHTS["A0"].filename]

    assert_same_features(pretrained("A0", "repvgg:A0"), source)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    assert_same_features(pretrained("A0", "repvgg:A0"), source)
    assert len(requests) == 1


def test_url_with_hub_style_hash_is_verified_and_cached(server, hub):
    base, root, requests = server
    source = source_model("A0")
    staged = root / "staged.pth"
    torch.save(in_layout(source.state_dict(), "timm"), staged)
    name = f"repvgg_a0-{hashlib.sha256(staged.read_bytes()).hexdigest()[:10]}.pth"
    staged.rename(root / name)

    assert_same_features(pretrained("A0", base + name), source)
    assert_same_features(pretrained("A0", base + name), source)
    assert len(requests) == 1 and (hub / name).is_file()


def test_corrupted_download_is_rejected_and_not_cached(server, hub, monkeypatch):
    base, root, requests = server
    monkeypatch.setenv(BASE_URL_ENV, base)
    publish_a0(root, monkeypatch, corrupt=True)
    with pytest.raises(ChecksumError, match="does not start with the expected"):
        pretrained("A0", "repvgg:A0")
    assert requests and list(hub.iterdir()) == []


def test_cut_short_download_leaves_nothing(server, hub):
    base, _root, _requests = server
    with pytest.raises(ConnectionError, match="stopped after 1000 of 100000 bytes"):
        pretrained("A0", base + "truncated.pth")
    assert list(hub.iterdir()) == []


def test_offline_names_the_missing_file_and_where_to_put_it(server, hub, monkeypatch):
    base, _root, requests = server
    monkeypatch.setenv(BASE_URL_ENV, base)
    monkeypatch.setenv(OFFLINE_ENV, "1")
    target = hub / WEIGHTS["B2"].filename
    with pytest.raises(FileNotFoundError, match=re.escape(str(target))):
        pretrained("A0", "repvgg:B2")
    assert requests == []


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth' does not exist"):
        pretrained("A0", tmp_path / "nowhere.pth")


# ---------------------------------------------------------------- tools/convert_checkpoint.py


@pytest.mark.parametrize(
    "fmt, deployed, flags",
    [
        ("official", False, []),
        ("official", False, ["--deploy"]),
        ("official", True, ["--arch", "A0", "--bare"]),
        ("timm", False, []),
    ],
)
def test_convert_tool_writes_a_strict_state_dict(tmp_path, fmt, deployed, flags):
    source = source_model("A0", deployed)
    torch.save(in_layout(source.state_dict(), fmt), tmp_path / "src.pth")
    dst = tmp_path / "out" / "dst.pth"
    assert load_tool("convert_checkpoint").main([str(tmp_path / "src.pth"), str(dst), *flags]) == 0

    saved = torch.load(dst, weights_only=True)
    state = saved if "--bare" in flags else saved["state_dict"]
    deploy = deployed or "--deploy" in flags
    if "--bare" not in flags:
        assert saved["meta"]["arch"] == "A0" and saved["meta"]["deploy"] == deploy
    model = RepVGG("A0", out_indices=(0, 1, 2, 3, 4), deploy=deploy)
    model.load_state_dict(state, strict=True)
    assert_same_features(model, source)
    assert [p.name for p in dst.parent.iterdir()] == ["dst.pth"]


def test_convert_tool_rejects_the_wrong_arch(tmp_path, capsys):
    torch.save(in_layout(source_model("A0").state_dict(), "official"), tmp_path / "src.pth")
    argv = [str(tmp_path / "src.pth"), str(tmp_path / "dst.pth"), "--arch", "A1"]
    status, err = tool_exit("convert_checkpoint", argv, capsys)
    message = one_error_line(err, "convert_checkpoint")
    assert status == 2 and "RepVGG-A0 weights" in message and "RepVGG-A1" in message
    assert not (tmp_path / "dst.pth").exists()
