# Baseline of RepVGG Table 8: PSPNet with mmseg's ResNetV1c-101-D8, under the same
# 40-epoch schedule and pipeline as the RepVGG configs.
_base_ = "./pspnet_r50.py"
model = dict(pretrained="open-mmlab://resnet101_v1c", backbone=dict(depth=101))
