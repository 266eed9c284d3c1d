# PSPNet (Zhao et al., CVPR 2017) with a RepVGG backbone, as in RepVGG Table 8.
# The backbone returns paper stages 2-5 (out_indices 1-4); like mmseg's ResNet configs the
# PSP head reads the last one (in_index=3, 512b channels) and the auxiliary FCN head the
# one before (in_index=2, 256a channels). Leaf configs set the variant and both widths.
norm_cfg = dict(type="SyncBN", requires_grad=True)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=(512, 1024),
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="RepVGG",
        arch="B2",
        # 'dilated': stride 1 and dilation 2 / 4 in the last two stages (output stride 8);
        # 'fast': the same strides, dilation only in the last 5 layers.
        dilation_mode="dilated",
        out_indices=(1, 2, 3, 4),
        norm_cfg=norm_cfg,
        norm_eval=False,
        init_cfg=dict(type="Pretrained", checkpoint="repvgg:B2"),
    ),
    decode_head=dict(
        type="PSPHead",
        in_channels=2560,
        in_index=3,
        channels=512,
        pool_scales=(1, 2, 3, 6),
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type="FCNHead",
        in_channels=640,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=19,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)
