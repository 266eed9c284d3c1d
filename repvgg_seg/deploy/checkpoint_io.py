"""The names :mod:`repvgg_seg.deploy.pipeline` reads checkpoints by.

Reading lives in :mod:`repvgg_seg.checkpoint` (one reader, one allow-list, one error type);
these are that module's functions, not copies.
"""

from __future__ import annotations

from ..checkpoint import read_checkpoint, state_dict_of

# The deploy pipeline's name for read_checkpoint; new code calls read_checkpoint.
load_checkpoint_file = read_checkpoint

__all__ = ["load_checkpoint_file", "read_checkpoint", "state_dict_of"]
