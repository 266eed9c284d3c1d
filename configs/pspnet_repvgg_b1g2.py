# PSPNet, RepVGG-B1g2 backbone (dilated: output stride 8).
# The paper's recipe (RepVGG Table 8, as trained with hszhao/semseg; docs/training.md, "PSPNet on
# Cityscapes"): 713x713 crops with semseg's augmentation, 10x LR on the heads, semseg's PPM
# widths, sliding-window test, 40 epochs at a global batch of 16.
# Heads: 512b = 2048 and 256a = 512 input channels.
_base_ = [
    "./_base_/models/pspnet_repvgg_semseg.py",
    "./_base_/datasets/cityscapes_semseg.py",
    "./_base_/default_runtime.py",
    "./_base_/schedules/schedule_semseg_40e.py",
]
model = dict(
    backbone=dict(
        arch="B1g2",
        dilation_mode="dilated",
        init_cfg=dict(type="Pretrained", checkpoint="repvgg:B1g2"),
    ),
    decode_head=dict(in_channels=2048),
    auxiliary_head=dict(in_channels=512),
)
