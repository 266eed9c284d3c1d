# PSPNet with mmseg's ResNetV1c-50-D8 (the closest mmseg backbone to semseg's deep-stem
# ResNet-50) and semseg's head and test, exactly as pspnet_repvgg_semseg.py: pyramid branches
# of 2048 / 4 = 512, 3x3 conv to 512 on 4096 channels; auxiliary 3x3 conv to 256 on 1024;
# align_corners=True; 713x713 sliding windows with stride 476.
_base_ = "./pspnet_r50-d8.py"
data_preprocessor = dict(size=(713, 713))
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(type="SemsegPSPHead", align_corners=True),
    auxiliary_head=dict(align_corners=True),
    test_cfg=dict(mode="slide", crop_size=(713, 713), stride=(476, 476)),
)
