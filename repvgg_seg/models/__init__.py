from .arch import ARCHS, BLOCK_TYPES, ModelName, RepVGGArch, canonical_arch_name, get_arch
from .backbone import DILATION_MODES, RepVGG
from .blocks import QARepVGGBlock, RepVGGBlock
from .classifier import RepVGGClassifier
from .psp_head import SemsegPSPHead

__all__ = [
    "ARCHS",
    "BLOCK_TYPES",
    "DILATION_MODES",
    "ModelName",
    "QARepVGGBlock",
    "RepVGG",
    "RepVGGArch",
    "RepVGGBlock",
    "RepVGGClassifier",
    "SemsegPSPHead",
    "canonical_arch_name",
    "get_arch",
]
