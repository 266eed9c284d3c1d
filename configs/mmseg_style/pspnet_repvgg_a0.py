# mmseg-style recipe (docs/training.md): PSPNet, RepVGG-A0 backbone (dilated:
# output stride 8), Cityscapes 512x1024 crops, the paper's 40-epoch schedule.
# Heads: 512b = 1280 and 256a = 192 input channels.
_base_ = [
    "../_base_/models/pspnet_repvgg.py",
    "../_base_/datasets/cityscapes.py",
    "../_base_/default_runtime.py",
    "../_base_/schedules/schedule_paper_40e.py",
]
model = dict(
    backbone=dict(
        arch="A0", dilation_mode="dilated", init_cfg=dict(type="Pretrained", checkpoint="repvgg:A0")
    ),
    decode_head=dict(in_channels=1280),
    auxiliary_head=dict(in_channels=192),
)
