"""Pretrained RepVGG weights: where they come from and how they load into the backbone.

Minimal version: a local checkpoint in this package's own key layout. The weights issue
extends it with the published-weights table, download and format conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def pretrained_source(init_cfg: Any) -> dict | None:
    """Returns ``{'checkpoint': ..., 'prefix': ...}`` of a ``Pretrained`` init_cfg, else None."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, Mapping) and cfg.get("type") == "Pretrained":
            return {"checkpoint": cfg["checkpoint"], "prefix": cfg.get("prefix")}
    return None


def _unwrap(checkpoint: Mapping) -> Mapping[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_ema"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            return checkpoint[key]
    return checkpoint


def load_pretrained_backbone(
    backbone: nn.Module, checkpoint: str, prefix: str | None = None
) -> None:
    """Loads backbone weights from a local checkpoint, strictly."""
    state = _unwrap(torch.load(checkpoint, map_location="cpu", weights_only=True))
    prefix = prefix if prefix is not None else "backbone."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    backbone.load_state_dict(state, strict=True)
