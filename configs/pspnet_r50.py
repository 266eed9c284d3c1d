# Baseline of RepVGG Table 8: PSPNet with mmseg's ResNetV1c-50-D8, under the paper's recipe
# like the RepVGG configs here (semseg's augmentation, head, LR and test; docs/training.md).
_base_ = [
    "./_base_/models/pspnet_r50-d8_semseg.py",
    "./_base_/datasets/cityscapes_semseg.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/schedule_semseg_40e.py",
]
