"""repvgg_seg: RepVGG backbones, re-parameterization and PSPNet segmentation on mmseg 1.x.

Importing the package registers the ``RepVGG`` backbone (and the weight initializer behind
its ``Pretrained`` init_cfg), the checked Cityscapes dataset and the atomic-checkpoint
runner in mmseg's / mmengine's registries, so an mmseg config only needs
``custom_imports=dict(imports=['repvgg_seg'])``. It also allow-lists the exact types that
mmengine checkpoints hold, so ``--resume`` works with torch's ``weights_only`` loading.
"""

from . import datasets, models, runner, weights
from .models import RepVGG, RepVGGBlock, RepVGGClassifier
from .reparam import reparameterize_model

runner.allow_mmengine_checkpoint_types()

__version__ = "0.1.0"

__all__ = [
    "RepVGG",
    "RepVGGBlock",
    "RepVGGClassifier",
    "datasets",
    "models",
    "reparameterize_model",
    "runner",
    "weights",
]
