"""ImageNet pretraining of RepVGG classifiers with the paper's recipes (Sec. 4.1).

:func:`run_pretraining` is the whole run; ``tools/pretrain_imagenet.py`` is its command line.
The checkpoints it writes initialize the segmentation backbone
(``init_cfg=dict(type='Pretrained', checkpoint=...)``) without conversion.
"""

from .config import PretrainConfig
from .recipe import RECIPES, Recipe, build_optimizer, named_parameter_groups
from .train import run_pretraining

__all__ = [
    "RECIPES",
    "PretrainConfig",
    "Recipe",
    "build_optimizer",
    "named_parameter_groups",
    "run_pretraining",
]
