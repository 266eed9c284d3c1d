"""Shared test utilities (imported by test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from unittest import mock

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
