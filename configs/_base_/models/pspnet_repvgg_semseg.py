# PSPNet with a RepVGG backbone as hszhao/semseg builds PSPNet (RepVGG's example_pspnet.py):
# pspnet_repvgg.py with semseg's head and test.
# - Head (repvgg_seg/models/psp_head.py): pyramid branches of in_channels / 4 each (B2: 640,
#   B1g2: 512), then a 3x3 conv to 512 on 2 x in_channels, dropout 0.1, 1x1 classifier.
# - Auxiliary head on the second-to-last stage, as in example_pspnet.py: 3x3 conv to 256, BN,
#   ReLU, dropout 0.1, 1x1 classifier (FCNHead with one conv), loss weight 0.4.
# - align_corners=True in every upsampling (semseg's PPM, logits and loss).
# - Test: 713x713 windows with stride ceil(713 x 2/3) = 476, as semseg's scale_process.
_base_ = "./pspnet_repvgg.py"
data_preprocessor = dict(size=(713, 713))
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(type="SemsegPSPHead", align_corners=True),
    auxiliary_head=dict(align_corners=True),
    test_cfg=dict(mode="slide", crop_size=(713, 713), stride=(476, 476)),
)
