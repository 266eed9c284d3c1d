"""repvgg_seg: RepVGG backbones, re-parameterization and PSPNet segmentation on mmseg 1.x.

Importing the package registers the ``RepVGG`` backbone in mmseg's ``MODELS`` registry, so
an mmseg config only needs ``custom_imports=dict(imports=['repvgg_seg'])``.
"""

from . import models
from .models import RepVGG, RepVGGBlock, RepVGGClassifier
from .reparam import reparameterize_model

__version__ = "0.1.0"

__all__ = ["RepVGG", "RepVGGBlock", "RepVGGClassifier", "models", "reparameterize_model"]
