"""The quantization flags of ``tools/quantize.py`` and ``tools/qat.py``: one definition each.

Every flag here sets the :class:`~repvgg_seg.quantize.QuantizeOptions` field of its name,
with that field's default. ``tools/quantize.py`` describes each flag in full;
``tools/qat.py`` lists the ones it takes under a group that points to tools/quantize.py, in
its own order and with the short help of :data:`QUANTIZE_FLAGS` (None: no help line).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..quantize import QuantizeOptions
from ..quantize.onnx_quant import ACTIVATION_FORMATS, CALIBRATION_METHODS

DEFAULTS = QuantizeOptions()


@dataclass(frozen=True)
class Flag:
    """One flag: argparse's keywords besides ``help``, its full help and its short one."""

    keywords: dict = field(default_factory=dict)
    help: str | None = None
    short_help: str | None = None


QUANTIZE_FLAGS: dict[str, Flag] = {
    "--calib-images": Flag(
        {"type": int, "default": DEFAULTS.calib_images, "metavar": "N"},
        f"calibration images from the train pipeline (default {DEFAULTS.calib_images})",
    ),
    "--calib-method": Flag(
        {"choices": sorted(CALIBRATION_METHODS), "default": DEFAULTS.calib_method},
        f"how activation ranges are set (default {DEFAULTS.calib_method})",
    ),
    "--per-channel": Flag(
        {"action": argparse.BooleanOptionalAction, "default": DEFAULTS.per_channel},
        "one weight scale per output channel (default: on)",
    ),
    "--activations": Flag(
        {"choices": ACTIVATION_FORMATS, "default": DEFAULTS.activations},
        "how the INT8 model stores activations: int8, uint8 (the same numbers; ONNX "
        "Runtime's fast form on CPUs with VNNI or AMX) or auto, by this host's CPU (default)",
        "how the INT8 model stores activations (as tools/quantize.py; auto: by the host)",
    ),
    "--eval-images": Flag(
        {"type": int, "default": DEFAULTS.eval_images, "metavar": "M"},
        f"val images INT8 is measured on against float (default {DEFAULTS.eval_images})",
    ),
    "--max-miou-drop": Flag(
        {"type": float, "default": DEFAULTS.max_miou_drop, "metavar": "D"},
        f"refuse (exit 1, write nothing) above this mIoU drop (default "
        f"{DEFAULTS.max_miou_drop})",
    ),
    "--sensitivity": Flag(
        {"action": "store_true"},
        "rank the convs by how much each alone, quantized, moves the logits",
    ),
    "--keep-float": Flag(
        {"type": int, "default": DEFAULTS.keep_float, "metavar": "K"},
        "leave the K most sensitive convs in float32 (ranks them; default 0)",
    ),
    "--keep-float-layers": Flag(
        {"nargs": "+", "default": DEFAULTS.keep_float_layers, "metavar": "NAME"},
        "leave these convs (PyTorch module names, e.g. backbone.stages.2.13.fused_conv) "
        "in float32",
    ),
}


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The positional ``config checkpoint out_dir`` of both tools."""
    parser.add_argument("config", help="the checkpoint's config (training or *_deploy.py)")
    parser.add_argument("checkpoint", help="training-time, fused or deployed checkpoint")
    parser.add_argument("out_dir", type=Path, help="output folder")


def add_quantize_flags(
    parser: argparse._ActionsContainer,
    flags: Sequence[str] = tuple(QUANTIZE_FLAGS),
    short: bool = False,
) -> None:
    """Adds ``flags`` (keys of :data:`QUANTIZE_FLAGS`, in this order) to ``parser`` (or an
    argument group), with their full help or, ``short``, their short help."""
    for name in flags:
        flag = QUANTIZE_FLAGS[name]
        parser.add_argument(name, **flag.keywords, help=flag.short_help if short else flag.help)


def quantize_options_from(args: argparse.Namespace) -> QuantizeOptions:
    """The :class:`QuantizeOptions` of the parsed flags (a flag the tool does not take keeps
    the option's default)."""
    given = {}
    for name in QUANTIZE_FLAGS:
        dest = name.removeprefix("--").replace("-", "_")
        if hasattr(args, dest):
            given[dest] = getattr(args, dest)
    if "keep_float_layers" in given:
        given["keep_float_layers"] = tuple(given["keep_float_layers"])
    return QuantizeOptions(**given)
