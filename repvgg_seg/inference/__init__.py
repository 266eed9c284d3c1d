"""Segmenting a user's own images and videos with a trained segmentor (``tools/infer.py``).

- :mod:`.model`: load any checkpoint form (training-time, fused, ``tools/deploy.py`` output)
  and predict label maps at each input's own size with mmseg's ``inference_model``;
- :mod:`.sources`: the inputs (files, folders, videos), their output paths, image reading;
- :mod:`.overlay`: label colours blended over the image, with a legend;
- :mod:`.run`: the loop over all inputs, with batching, progress and a summary; the output
  folder held for one run.
"""

from .model import load_inference_model, num_classes_of, predict_labels, resolve_device
from .overlay import PALETTE_NAMES, Palette, draw_overlay, legend_entries
from .run import RunSummary, claim_out_dir, segment_sources
from .sources import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Source,
    UnreadableInputError,
    existing_outputs,
    find_sources,
    read_image,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "PALETTE_NAMES",
    "VIDEO_EXTENSIONS",
    "Palette",
    "RunSummary",
    "Source",
    "UnreadableInputError",
    "claim_out_dir",
    "draw_overlay",
    "existing_outputs",
    "find_sources",
    "legend_entries",
    "load_inference_model",
    "num_classes_of",
    "predict_labels",
    "read_image",
    "resolve_device",
    "segment_sources",
]
