"""RepVGG (or QARepVGG) ImageNet classifier: the segmentation backbone + global average
pooling + FC."""

from __future__ import annotations

import torch
from torch import nn

from .arch import ModelName, RepVGGArch
from .backbone import RepVGG


class RepVGGClassifier(nn.Module):
    """The paper's classification network.

    Its ``backbone.*`` keys are exactly those of the segmentation backbone, so its state
    dict initializes ``RepVGG`` in an mmseg config without conversion.

    Args:
        arch: Variant name or :class:`RepVGGArch`.
        num_classes: Classes of the FC head.
        norm_cfg: mmcv norm config of the backbone.
        deploy: Build fused blocks.
        block_type: ``'RepVGG'`` or ``'QARepVGG'``; the fused classifiers are identical.
    """

    def __init__(
        self,
        arch: str | RepVGGArch = "A0",
        num_classes: int = 1000,
        norm_cfg: dict | None = None,
        deploy: bool = False,
        block_type: str = "RepVGG",
    ) -> None:
        super().__init__()
        self.backbone = RepVGG(
            arch, out_indices=(4,), norm_cfg=norm_cfg, deploy=deploy, block_type=block_type
        )
        self._init_weights()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.backbone.arch.channels[-1], num_classes)

    @classmethod
    def from_model_name(cls, name: str, **kwargs) -> RepVGGClassifier:
        """The classifier ``--model`` names: ``'A0'``, ``'RepVGG-A0'``, ``'QARepVGG-A0'``.

        Other arguments as the constructor's.
        """
        model = ModelName.parse(name)
        return cls(model.arch, block_type=model.block_type, **kwargs)

    def _init_weights(self) -> None:
        # The backbone's default init_cfg, applied directly: mmengine's init_weights()
        # would log one entry per parameter for every classifier built.
        for module in self.backbone.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)[-1]
        return self.fc(torch.flatten(self.pool(features), 1))

    def switch_to_deploy(self) -> None:
        """Fuses every block of the backbone. Idempotent."""
        self.backbone.switch_to_deploy()
