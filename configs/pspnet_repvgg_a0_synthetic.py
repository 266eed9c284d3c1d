# A small CPU configuration on synthetic Cityscapes, for the demo and the tests:
# PSPNet RepVGG-A0 ('fast' dilation), plain BN (one process, or gloo on CPU), no pretrained
# weights, 128/64-channel heads, 256x128 images and 64x128 crops. Make the data first:
#   python tools/make_synthetic_cityscapes.py data/synthetic_cityscapes
# It is never a stand-in for Cityscapes: its data root holds only generated scenes.
_base_ = "./mmseg_style/pspnet_repvgg_a0_fast.py"
norm_cfg = dict(type="BN", requires_grad=True)
crop_size = (64, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(norm_cfg=norm_cfg, init_cfg=None),
    # Narrower heads than the paper's 512 / 256 channels: the PSP bottleneck dominates the
    # CPU time at this input size.
    decode_head=dict(channels=128, norm_cfg=norm_cfg),
    auxiliary_head=dict(channels=64, norm_cfg=norm_cfg),
)

data_root = "data/synthetic_cityscapes/"
image_scale = (256, 128)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=image_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_scale, keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
# tools/test.py --tta: the base's multi-scale + flip test around this config's test scale.
tta_scale_factors = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=image_scale, keep_ratio=True),
    dict(
        type="TestTimeAug",
        transforms=[
            [dict(type="Resize", scale_factor=r, keep_ratio=True) for r in tta_scale_factors],
            [
                dict(type="RandomFlip", prob=0.0, direction="horizontal"),
                dict(type="RandomFlip", prob=1.0, direction="horizontal"),
            ],
            [dict(type="LoadAnnotations")],
            [dict(type="PackSegInputs")],
        ],
    ),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(data_root=data_root, pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline),
)
test_dataloader = val_dataloader

# A short run: 400 iterations of 8 crops, validated and saved every 200.
max_iters = 400
optim_wrapper = dict(optimizer=dict(lr=0.02))
param_scheduler = [
    dict(type="PolyLR", eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=200)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=200),
    visualization=dict(type="SegVisualizationHook"),
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
randomness = dict(seed=0)
