# Baseline of RepVGG Table 8: PSPNet with mmseg's ResNetV1c-101-D8, under the paper's recipe
# like the RepVGG configs here (semseg's augmentation, head, LR and test; docs/training.md).
_base_ = "./pspnet_r50.py"
model = dict(pretrained="open-mmlab://resnet101_v1c", backbone=dict(depth=101))
