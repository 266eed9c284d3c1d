# mmseg-style recipe (docs/training.md): PSPNet with mmseg's ResNetV1c-101-D8,
# under the same schedule and pipeline as the mmseg-style RepVGG configs here.
_base_ = "./pspnet_r50.py"
model = dict(pretrained="open-mmlab://resnet101_v1c", backbone=dict(depth=101))
