"""Reading checkpoint files: the one reader, the one allow-list, the one error type.

Every tool and library function that opens a ``.pth`` file goes through
:func:`read_checkpoint`: ``torch.load(weights_only=True)`` on CPU, with exactly the
non-tensor types of mmengine checkpoints allowed (:data:`MMENGINE_CHECKPOINT_GLOBALS`), and
a :class:`CheckpointError` whose one-line message names the file and says what to do.
:func:`is_deployed_state_dict` is the one place that reads this package's key layout to
tell fused RepVGG weights from training-time ones.

This module imports no other module of the package, so every layer can use it.
"""

from __future__ import annotations

import errno
import importlib
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from .errors import UsageError, preview_keys

# Our key layout (the attribute names of models.blocks.RepVGGBlock): a deployed block holds
# one ``fused_conv``, a training-time block ``branch_3x3``, ``branch_1x1`` and maybe
# ``branch_identity``.
FUSED_CONV = "fused_conv"
TRAINING_BRANCH = "branch_3x3"


class CheckpointError(UsageError):
    """A checkpoint cannot be used; the message names the file and says what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """A complete checkpoint holding Python objects outside the allow-list (not loaded)."""


def _numpy_types() -> list:
    """numpy objects pickled into message-hub entries (arrays and scalars of the log)."""
    # numpy 2 moved numpy.core to numpy._core; pickles name whichever wrote them.
    package = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
    multiarray = importlib.import_module(f"{package}.multiarray")
    types = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    types += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return types


def _history_buffer_statistic(owner: object, name: str):
    """``getattr`` as the unpickler may use it: only to fetch HistoryBuffer's statistics.

    A ``HistoryBuffer`` pickles its statistics methods (``min``, ``max``, ``current``,
    ``mean``) as ``getattr(HistoryBuffer, 'min')``. Allowing the real ``getattr`` would let a
    crafted file reach any attribute of any allowed object, so this stand-in is registered
    under the name ``builtins.getattr`` instead.
    """
    allowed = {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f"Refusing getattr({owner!r}, {name!r}) while loading a checkpoint: only "
        "HistoryBuffer statistics methods are allowed (repvgg_seg.checkpoint)."
    )


# The non-tensor types of mmengine training checkpoints: its message hub (HistoryBuffer of
# numpy values) is saved beside the state dict. Anything else stays refused.
MMENGINE_CHECKPOINT_GLOBALS: list = [
    HistoryBuffer,
    *_numpy_types(),
    (_history_buffer_statistic, "builtins.getattr"),
]


def allow_mmengine_checkpoint_types() -> None:
    """Allow-lists :data:`MMENGINE_CHECKPOINT_GLOBALS` for every ``torch.load`` (idempotent).

    mmengine loads checkpoints with ``torch.load``'s default ``weights_only=True`` (since
    torch 2.6), so ``--resume`` needs these types allowed process-wide; importing
    ``repvgg_seg`` calls this. :func:`read_checkpoint` allows them itself.
    """
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_GLOBALS)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _global_name(entry: Any) -> str:
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"


# How the weights-only unpickler (and our getattr stand-in) words a refusal of an object the
# file holds, also of a module torch blocks (os, posix); any other unpickling error is a
# damaged file ("Unsupported operand 65").
_REFUSAL = re.compile(
    r"Unsupported global|Trying to (load unsupported GLOBAL|call reduce)|Can only (create|build)"
    r"|Refusing getattr"
)
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: |Trying to load unsupported )GLOBAL (\S+) ")
# Globals that run commands or code when a pickle calls them: a file naming one was made to
# run code when loaded, not saved by mistake.
_COMMAND_MODULES = frozenset({"os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "pty"})
_CODE_BUILTINS = frozenset({"eval", "exec", "compile", "__import__", "open", "breakpoint"})


def _refused_globals(path: str, error: pickle.UnpicklingError) -> str | None:
    """The names of the Python objects a refused checkpoint holds, the unpickler's reason
    for a refusal, or None when the file is damaged rather than refused."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files, damaged pickles; judged by the reason below
        names = []
    allowed = {_global_name(entry) for entry in MMENGINE_CHECKPOINT_GLOBALS}
    refused = [name for name in names if name not in allowed]
    if refused:
        return ", ".join(refused)
    # torch wraps the unpickler's own error (e.g. our getattr stand-in's refusal) in a
    # generic paragraph; the wrapped one says what was refused.
    reason = _first_line(error.__context__ or error)
    if not _REFUSAL.match(reason):
        return None
    named = _REFUSED_GLOBAL.match(reason)
    return named.group(1) if named else reason


def _runs_code(refused: str) -> bool:
    """Whether a refused global runs commands or code (``posix.system``, ``builtins.eval``)."""
    for name in refused.split(","):
        module, _, function = name.strip().rpartition(".")
        if module.split(".")[0] in _COMMAND_MODULES or (
            module == "builtins" and function in _CODE_BUILTINS
        ):
            return True
    return False


def _check_is_file(path: str) -> None:
    """Raises the reader's error for a path that names no regular file."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CheckpointError(
                f"Checkpoint {path!r} is a loop of symbolic links (one of them points back "
                "to another); make the link point to the checkpoint file itself."
            ) from None
        if os.path.islink(path):
            raise CheckpointNotFoundError(
                f"Checkpoint {path!r} is a symbolic link to {os.readlink(path)!r}, which does "
                "not exist; point it to an existing file."
            ) from None
        raise CheckpointNotFoundError(f"Checkpoint {path!r} does not exist.") from None
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path!r} is not a file; pass the .pth file itself.")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Loads a checkpoint file on CPU with ``weights_only=True``.

    Zip (torch >= 1.6) and legacy files both load; only tensors, plain Python data and
    :data:`MMENGINE_CHECKPOINT_GLOBALS` are unpickled.

    Raises:
        CheckpointNotFoundError: No such file (also a ``FileNotFoundError``).
        CheckpointError: The file is empty, truncated, corrupt or not a PyTorch file, a loop
            of symbolic links, or not a file.
        UnsafeCheckpointError: The file holds other Python objects (not loaded, for safety).
    """
    path = os.fspath(path)
    _check_is_file(path)
    if os.path.getsize(path) == 0:
        raise CheckpointError(
            f"Checkpoint {path!r} is empty (0 bytes): it was never written completely. Delete "
            "it and save, copy or download it again."
        )
    # Not torch.serialization.safe_globals(...): leaving it removes these types from the
    # process-wide list too, and mmengine's own torch.load (--resume) then refuses its files.
    allow_mmengine_checkpoint_types()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = _refused_globals(path, error)
        if refused is None:
            raise _damaged(path, error.__context__ or error) from error
        if _runs_code(refused):
            raise UnsafeCheckpointError(
                f"Checkpoint {path!r} is unsafe and was not loaded: unpickling it would call "
                f"{refused}, which runs commands on this machine. Do not load it with "
                "weights_only=False; get the checkpoint again from a source you trust."
            ) from error
        raise UnsafeCheckpointError(
            f"Checkpoint {path!r} holds Python objects that are not loaded for safety "
            f"(weights_only=True): {refused}. If you trust the file, re-save only its "
            "tensors, e.g. torch.save({'state_dict': model.state_dict()}, 'clean.pth')."
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise _damaged(path, error) from error


def _damaged(path: str, error: BaseException) -> CheckpointError:
    if _is_onnx_model(path):
        stem, suffix = os.path.splitext(path)
        advice = (
            "pass a PyTorch checkpoint (.pth) here"
            if suffix.lower() == ".onnx"
            else f"the tools recognise ONNX models by their suffix: rename it to '{stem}.onnx' "
            "(tools/test.py and tools/infer.py run it with ONNX Runtime)"
        )
        return CheckpointError(
            f"Checkpoint {path!r} is an ONNX model, not a PyTorch checkpoint; {advice}."
        )
    return CheckpointError(
        f"Checkpoint {path!r} is not a readable PyTorch checkpoint ({_first_line(error)}); it "
        "may be truncated or corrupt. Delete it and save, copy or download it again."
    )


# An ONNX ModelProto starts with field 1 (ir_version, a varint), then one of fields 2-8.
_ONNX_SECOND_TAGS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42})


def _is_onnx_model(path: str) -> bool:
    """Whether ``path`` starts like an ONNX model; a PyTorch file starts with ``PK`` (zip) or
    ``0x80`` (pickle), never with protobuf's tag of field 1 (``0x08``)."""
    try:
        with open(path, "rb") as file:
            head = file.read(3)
    except OSError:
        return False
    return (
        len(head) == 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_SECOND_TAGS
    )


def state_dict_of(checkpoint: object, source: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint.

    That is its ``state_dict`` entry (mmengine, mmseg, mmpretrain), its ``model`` entry (our
    pretraining, torchvision; ``model_ema`` is not taken), or else the tensors at its top
    level (a bare state dict).

    Raises:
        CheckpointError: ``checkpoint`` is no dict, or holds none of these.
    """
    source = os.fspath(source)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"Checkpoint {source!r} holds a {type(checkpoint).__name__}, not a dict; save "
            "model.state_dict(), not the model."
        )
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"Checkpoint {source!r} has no state dict: its top-level keys are "
            f"{preview_keys(checkpoint)}; expected 'state_dict', 'model', or parameter tensors."
        )
    return tensors


def meta_of(checkpoint: object) -> Mapping[str, Any]:
    """The ``meta`` entry of a loaded checkpoint (mmengine's), or an empty mapping."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def describe_key_mismatch(
    expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], limit: int = 8
) -> str | None:
    """Why ``state`` does not load strictly into a model whose state dict is ``expected``.

    Returns:
        ``'missing (2): a, b; unexpected (1): c; wrong shape (1): d: checkpoint (3,),
        model (4,)'``, or None when every key is present, known and of the right shape.
    """
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and tuple(state[key].shape) != tuple(value.shape)
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:limit])}{' ...' if len(keys) > limit else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong_shape),
        )
        if keys
    ]
    return "; ".join(problems) if problems else None


def is_deployed_state_dict(keys: Iterable[str], source: str = "the state dict") -> bool | None:
    """Whether the RepVGG blocks of a state dict (our keys, any prefix) are fused.

    Args:
        keys: State-dict keys (a state dict itself works too).
        source: What the keys come from, for the error message.

    Returns:
        True when the blocks are fused (``...fused_conv...``), False when they are
        training-time (``...branch_3x3...``), None when there are no RepVGG blocks.

    Raises:
        CheckpointError: Both kinds are present.
    """
    fused = training = False
    for key in keys:
        dotted = f".{key}."
        fused = fused or f".{FUSED_CONV}." in dotted
        training = training or f".{TRAINING_BRANCH}." in dotted
    if fused and training:
        raise CheckpointError(
            f"{source} mixes fused ({FUSED_CONV}) and training-time ({TRAINING_BRANCH}) RepVGG "
            "blocks; fuse all of them (repvgg_seg.reparam.reparameterize_model) or none "
            "before saving."
        )
    return True if fused else False if training else None
