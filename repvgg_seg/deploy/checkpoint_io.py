"""Reading deploy checkpoints (``weights_only`` loading with clear errors)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch


def _harmless_checkpoint_globals() -> dict[str, object]:
    """Non-tensor types that mmengine training checkpoints hold besides the weights.

    mmengine saves its message hub (``HistoryBuffer`` of numpy values) next to the state
    dict; these plain data types are allowed, anything else is refused.
    """
    from mmengine.logging import HistoryBuffer

    objects: list[object] = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        np.core.multiarray._reconstruct,
        np.core.multiarray.scalar,
    ]
    objects += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return {f"{obj.__module__}.{obj.__name__}": obj for obj in objects}


def load_checkpoint_file(path: str | Path) -> dict:
    """Loads a checkpoint with ``weights_only=True``, allowing mmengine's bookkeeping types.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds other Python objects (it is not loaded).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    allowed = _harmless_checkpoint_globals()
    unknown = [name for name in needed if name not in allowed]
    if unknown:
        raise ValueError(
            f"Checkpoint {path!r} contains Python objects that are not safe to load "
            f"({', '.join(unknown)}); it is not loaded (weights_only=True). Save the weights "
            "as {'meta': ..., 'state_dict': model.state_dict()} from a trusted session. "
            "(mmengine training checkpoints pickle their message hub with bound methods, "
            "'builtins.getattr'.)"
        )
    with torch.serialization.safe_globals([allowed[name] for name in needed]):
        return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_of(checkpoint: dict, path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint (mmengine's ``state_dict`` key or bare)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"Checkpoint {str(path)!r} has no 'state_dict' of tensors (keys: "
            f"{', '.join(map(str, list(checkpoint)[:8]))}); pass an mmengine/mmseg checkpoint."
        )
    return state
