# Cityscapes as hszhao/semseg trains and tests it (config/cityscapes/cityscapes_pspnet50.yaml
# and util/transform.py), the code base that RepVGG's example_pspnet.py took its PSPNet from.
# Train: images as float32 (semseg converts to float before augmenting), random scale 0.5-2.0,
# rotation by -10..10 degrees with probability 0.5 (image padded with the mean pixel, labels
# with 255), 5x5 Gaussian blur with probability 0.5, horizontal flip, 713x713 random crop
# (images smaller than that padded evenly with the mean / 255 first).
# Test: the whole image at base size 2048 (Cityscapes' own size, as in cityscapes.py); the
# model config slides 713x713 windows over it with stride 476.
# PadAndRandomCrop and RandomGaussianBlur are repvgg_seg's (repvgg_seg/datasets/transforms.py);
# the rest are mmseg's. Preparation: data/README.md.
# Everything else (dataset, test pipeline, --tta pipeline, loaders, metric) is cityscapes.py's.
_base_ = "./cityscapes.py"
crop_size = (713, 713)
# semseg pads with the ImageNet mean pixel (RGB 123.675, 116.28, 103.53); images are BGR here.
mean_bgr = (103.53, 116.28, 123.675)
train_pipeline = [
    dict(type="LoadImageFromFile", to_float32=True),
    dict(type="LoadAnnotations"),
    # semseg scales the image itself by 0.5-2.0; for 2048x1024 images this is the same.
    dict(type="RandomResize", scale=(2048, 1024), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomRotate", prob=0.5, degree=(-10, 10), pad_val=mean_bgr, seg_pad_val=255),
    dict(type="RandomGaussianBlur", prob=0.5, kernel_size=5),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PadAndRandomCrop", crop_size=crop_size, pad_val=mean_bgr, seg_pad_val=255),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
