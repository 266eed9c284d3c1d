from .arch import ARCHS, RepVGGArch, canonical_arch_name, get_arch
from .backbone import DILATION_MODES, RepVGG
from .blocks import RepVGGBlock
from .classifier import RepVGGClassifier
from .psp_head import SemsegPSPHead

__all__ = [
    "ARCHS",
    "DILATION_MODES",
    "RepVGG",
    "RepVGGArch",
    "RepVGGBlock",
    "RepVGGClassifier",
    "SemsegPSPHead",
    "canonical_arch_name",
    "get_arch",
]
