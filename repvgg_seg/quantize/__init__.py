"""INT8 post-training quantization of a deployed segmentor with ONNX Runtime, measured.

:func:`quantize_checkpoint` (``tools/quantize.py``) deploys a checkpoint, exports it to
ONNX, calibrates on images of the config's train pipeline, optionally ranks the convs by
sensitivity and leaves the worst in float32, quantizes statically (QDQ, signed 8-bit
activations and weights) and measures the INT8 model against the float one on val images
with mmseg's IoUMetric; its files are published only when the mIoU drop is within bounds.
"""

from .calibration import calibration_inputs
from .evaluation import Evaluation, compare_segmentors
from .onnx_quant import CALIBRATION_METHODS
from .pipeline import QuantizeOptions, QuantizeReport, quantize_checkpoint
from .sensitivity import LayerSensitivity, rank_convs

__all__ = [
    "CALIBRATION_METHODS",
    "Evaluation",
    "LayerSensitivity",
    "QuantizeOptions",
    "QuantizeReport",
    "calibration_inputs",
    "compare_segmentors",
    "quantize_checkpoint",
    "rank_convs",
]
