"""The one place an ONNX Runtime session is built: what it may read and how it runs.

Every ONNX Runtime session of the package (the ONNX segmentor of ``tools/test.py`` and
``tools/infer.py``, deploy's ONNX check, quantize's sensitivity and classifier runs, the
benchmark's ``onnxruntime`` runtimes) comes from :func:`open_session`, with the options
decided here once:

- **external data: refused.** An ONNX tensor may keep its bytes in another file, named by
  a path inside the model (``../secret/key.bin``, ``/etc/passwd``); ONNX Runtime opens that
  path, so any file the user can read would become weights. The tools never write external
  data (a segmentor is far below protobuf's 2 GB limit: ``deploy.export_onnx`` and
  ``tools/quantize.py`` write one self-contained file), so a model that uses it is refused
  whatever the path says, which also closes a symbolic link inside the model's folder. The
  file is read once, checked, and ONNX Runtime gets those bytes, not the path: the model
  checked is the model run.
- **NaN or infinite weights: refused**, naming the file, as the loader refuses such a
  checkpoint: the model would label every pixel 0 and a test would still print an mIoU.
- **threads**: intra-op threads as the caller asks (0: ONNX Runtime's choice, one per
  physical core); one inter-op thread (the sequential executor runs one node at a time);
  idle threads sleep instead of spinning, so that a session does not take the cores from
  the PyTorch work beside it (data pipelines, the benchmark's interleaved cases).
- **graph optimization**: all of ONNX Runtime's (``ORT_ENABLE_ALL``, its default, named so
  that a change in that default cannot change what is measured).
- **log severity**: not set per session (-1): ONNX Runtime's process-wide default logger
  decides, which the tools' quiet mode (``repvgg_seg.cli``) sets to fatal and ``--verbose``
  leaves at its warnings. Every error ONNX Runtime logs it also raises, and the tool says it
  in one line; the library itself hides nothing.

The lowest floor: no package module but :mod:`repvgg_seg.errors`. ``onnx`` and
``onnxruntime`` are imported on use (a development requirement, as for quantization).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError, preview_keys

# ONNX Runtime's "use the default logger's severity" (set_default_logger_severity).
DEFAULT_LOGGER_SEVERITY = -1
WRITTEN_BY = "pass a file written by tools/deploy.py --onnx or tools/quantize.py"


class OnnxModelError(UsageError):
    """An ONNX file that cannot be read, uses external data, or does not fit its config
    (the message names the file)."""


def session_options(num_threads: int = 0):
    """The ``onnxruntime.SessionOptions`` every session of the package runs with."""
    import onnxruntime

    if num_threads < 0:
        raise UsageError(f"ONNX Runtime threads must be 0 (its choice) or more, got {num_threads}.")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = DEFAULT_LOGGER_SEVERITY
    return options


def open_session(source: str | os.PathLike | bytes, num_threads: int = 0):
    """An ONNX Runtime CPU session for an ONNX file (or a serialized model).

    Args:
        source: The ``.onnx`` file, or the bytes of a serialized model.
        num_threads: Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).

    Raises:
        FileNotFoundError: ``source`` names no file.
        OnnxModelError: ``source`` is not an ONNX model ONNX Runtime can load, or a tensor
            of it keeps its data in an external file.
    """
    import onnxruntime

    name = "The model" if isinstance(source, bytes) else f"'{os.fspath(source)}'"
    model_bytes = source if isinstance(source, bytes) else read_model_bytes(source)
    check_finite_weights(check_self_contained(model_bytes, name), name)
    try:
        return onnxruntime.InferenceSession(
            model_bytes, session_options(num_threads), providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # ONNX Runtime raises its own InvalidProtobuf, Fail, ...
        raise _not_loadable(name, error) from error


def read_model_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an ONNX file (a missing file, a folder: one line naming it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model '{path}' does not exist (or is not a file).")
    return path.read_bytes()


def check_self_contained(model_bytes: bytes, name: str):
    """Refuses a model any of whose tensors keeps its data in an external file.

    Args:
        model_bytes: The serialized model.
        name: How messages name it (``'path/model.onnx'``).

    Returns:
        The parsed ``onnx.ModelProto``.

    Raises:
        OnnxModelError: The bytes are not an ONNX model, or a tensor uses external data
            (the message names the tensor and the path it gives).
    """
    import onnx

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as error:  # protobuf's DecodeError, and what onnx wraps it in
        raise _not_loadable(name, error) from error
    for tensor in _model_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            entries = {entry.key: entry.value for entry in tensor.external_data}
            raise OnnxModelError(
                f"ONNX model {name} keeps tensor {tensor.name!r} in an external file "
                f"({entries.get('location', '?')!r}); the tools read only self-contained "
                "models (every weight inside the .onnx, as tools/deploy.py --onnx and "
                "tools/quantize.py write them), so that a model cannot make them read other "
                "files. Save it as one file (onnx.save without save_as_external_data) or "
                f"{WRITTEN_BY}."
            )
    return model


def check_finite_weights(model, name: str) -> None:
    """Refuses a model whose floating-point weights hold NaN or infinity.

    As with a checkpoint (:func:`repvgg_seg.loader.check_finite_weights`): such a model
    computes NaN logits, and a test would report an mIoU and inference label every pixel 0.

    Raises:
        OnnxModelError: Some float tensor is not finite; the message names the model and
            the first such tensors.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    tensors = [tensor for tensor in _model_tensors(model) if tensor.data_type in floats]
    bad = [t.name for t in tensors if not np.isfinite(numpy_helper.to_array(t)).all()]
    if bad:
        raise OnnxModelError(
            f"ONNX model {name} holds NaN or infinite weights in {len(bad)} of "
            f"{len(tensors)} float tensors ({preview_keys(bad, 3)}): the training it was "
            f"exported from diverged. Export an earlier checkpoint of that run, or {WRITTEN_BY}."
        )


def _not_loadable(name: str, error: BaseException) -> OnnxModelError:
    message = " ".join(str(error).split())[:200]
    return OnnxModelError(
        f"{name} is not an ONNX model ONNX Runtime can load ({message}); {WRITTEN_BY}."
    )


def _model_tensors(model) -> Iterator:
    """Every TensorProto of a model: initializers, sparse ones, node attributes, subgraphs
    (``If``/``Loop`` bodies) and functions, wherever ONNX lets a tensor hold data."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                yield from _attribute_tensors(attribute)


def _graph_tensors(graph) -> Iterator:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute)


def _attribute_tensors(attribute) -> Iterator:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
    for tensor in [*sparse, *attribute.sparse_tensors]:
        yield from (tensor.values, tensor.indices)
    if attribute.HasField("g"):
        yield from _graph_tensors(attribute.g)
    for graph in attribute.graphs:
        yield from _graph_tensors(graph)
