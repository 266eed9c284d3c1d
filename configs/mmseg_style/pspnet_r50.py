# mmseg-style recipe (docs/training.md): PSPNet with mmseg's ResNetV1c-50-D8,
# under the same schedule and pipeline as the mmseg-style RepVGG configs here.
_base_ = [
    "../_base_/models/pspnet_r50-d8.py",
    "../_base_/datasets/cityscapes.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_paper_40e.py",
]
