"""Shared test utilities (imported by test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
SYNTHETIC_CONFIG = ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py"
# Deploy checks for tiny models: no Winograd (their convs are too narrow to gain), a small
# random input.
QUICK_DEPLOY = {"random_size": (32, 64), "winograd": False}


@torch.no_grad()
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Gives every BN random running statistics and affine parameters.

    Default statistics (mean 0, var 1, weight 1, bias 0) hide most fusion bugs.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
            module.weight.copy_(torch.randn(n, generator=generator) * 0.5 + 1)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def assert_outputs_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Float32 round-off agreement: rtol 1e-4, atol scaled to the output magnitude."""
    atol = 1e-5 * max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=atol)


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    """``model``'s float logits for one fixed random 64x96 image."""
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    return model(image.to(next(model.parameters()).device), mode="tensor").float()


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module (its ``__main__`` block not run)."""
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(
    source: str, *args: str, timeout: float, merge_stderr: bool = False
) -> subprocess.CompletedProcess:
    """Runs the Python ``source`` with ``args`` in a process of its own (``python -c``), in the
    repository root, its output captured as text (``merge_stderr``: stderr into stdout).

    For what the long-lived test process should not run, or not depend on: a crash there
    ends every later test, and earlier tests leave threads and signal handlers behind.
    """
    return subprocess.run(
        [sys.executable, "-c", source, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        timeout=timeout,
    )


def tool_exit(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """Runs ``tools/<name>.py`` in this process as its ``__main__`` does (through
    ``run_tool``, named in its messages as from the command line): ``(exit status, stderr)``.
    """
    from repvgg_seg.cli import run_tool

    module = load_tool(name)
    capsys.readouterr()
    argv0 = mock.patch.object(sys, "argv", [f"tools/{name}.py", *argv])
    with argv0, pytest.raises(SystemExit) as ended:
        run_tool(lambda: module.main(argv))
    return ended.value.code, capsys.readouterr().err


def one_error_line(err: str, tool: str) -> str:
    """The message of the one ``tools/<tool>.py: error: ...`` line that ``err`` must be."""
    lines = [line for line in err.splitlines() if line.strip()]
    prefix = f"tools/{tool}.py: error: "
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0].removeprefix(prefix)


def tiny_config(path: Path, data_root: Path | None = None, **overrides) -> Path:
    """Writes ``path``: the synthetic PSPNet-RepVGG-A0 config made quick for a test.

    Every split on ``data_root`` (when given); training in batches of 2 with no workers on
    64x64 crops, 2 iterations, no LR schedule, a checkpoint at the end and a log line per
    iteration; mmengine logs warnings only. ``overrides`` are top-level keys of the config,
    merged over these as a leaf config merges into its base (a dict into a dict).
    """
    settings: dict = {
        "model": {"data_preprocessor": {"size": (64, 64)}},
        "train_dataloader": {"batch_size": 2, "num_workers": 0, "persistent_workers": False},
        "train_cfg": {"max_iters": 2, "val_interval": 1000},
        "param_scheduler": [],
        "default_hooks": {"checkpoint": {"interval": 2}, "logger": {"interval": 1}},
        "log_level": "WARNING",
    }
    if data_root is not None:
        settings["data_root"] = f"{data_root}/"
        for split in ("train", "val", "test"):
            _merge(settings, {f"{split}_dataloader": {"dataset": {"data_root": f"{data_root}/"}}})
    _merge(settings, overrides)
    lines = [f"_base_ = {str(SYNTHETIC_CONFIG)!r}"]
    lines += [f"{key} = {value!r}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _merge(into: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def quantization_model_files(
    root: Path,
    images: tuple[int, int],
    crop: tuple[int, int],
    dataloaders: str,
    label_split: str,
    moderate_bn: bool = False,
) -> tuple[Path, Path]:
    """``(config, checkpoint)`` of a tiny random PSPNet-RepVGG-A0 for the INT8 tools' tests.

    ``root/data``: a synthetic Cityscapes of ``images`` (train, val) 96x48 images.
    ``root/tiny.py``: the synthetic Cityscapes config on it, crops of ``crop``, 16-channel
    heads, then the ``dataloaders`` lines. ``root/model.pth``: seeded
    random weights and BN statistics (``moderate_bn``: BN scales that keep the activations
    O(1) through 20 layers); ``root/other.pth``: another model's weights. The labels of
    ``label_split`` are replaced by the fused float model's predictions, so that float
    scores 100 % there.
    """
    from mmseg.apis import inference_model
    from PIL import Image

    from repvgg_seg.datasets.synthetic import make_synthetic_cityscapes
    from repvgg_seg.loader import build_segmentor, load_segmentor

    num_train, num_val = images
    data_root = make_synthetic_cityscapes(
        root / "data", num_train=num_train, num_val=num_val, image_size=(96, 48)
    )
    config = root / "tiny.py"
    config.write_text(
        f"_base_ = {str(SYNTHETIC_CONFIG)!r}\n"
        f"data_root = {str(data_root) + '/'!r}\n"
        "image_scale = (96, 48)\n"
        f"crop_size = {tuple(crop)}\n"
        "model = dict(data_preprocessor=dict(size=crop_size),\n"
        "    decode_head=dict(channels=16), auxiliary_head=dict(channels=16))\n"
        f"{dataloaders}"
        "test_dataloader = val_dataloader\n"
    )
    torch.manual_seed(0)
    model = randomize_bn(build_segmentor(config), seed=1)
    if moderate_bn:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, _BatchNorm):
                    module.running_var.fill_(1.0)
                    module.weight.mul_(0.5)
    checkpoint = root / "model.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, root / "other.pth")
    fused = load_segmentor(config, checkpoint, fuse=True)
    for image in sorted((data_root / "leftImg8bit" / label_split).rglob("*_leftImg8bit.png")):
        labels = inference_model(fused, str(image)).pred_sem_seg.data[0].numpy()
        name = image.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
        target = data_root / "gtFine" / image.relative_to(data_root / "leftImg8bit").parent
        Image.fromarray(labels.astype(np.uint8)).save(target / name)
    return config, checkpoint
