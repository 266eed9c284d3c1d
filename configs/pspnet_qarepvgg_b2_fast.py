# PSPNet, QARepVGG-B2-fast: pspnet_repvgg_b2_fast.py (the paper's recipe, output stride 8, the
# last 5 layers dilated) built of QARepVGG blocks (Chu et al., AAAI 2024; docs/qarepvgg.md),
# which keep their accuracy under INT8 post-training quantization. Deployed, it is the same
# network as RepVGG-B2-fast: deploy, ONNX export and tools/quantize.py treat it alike.
# No QARepVGG ImageNet weights are published: pretrain them first, e.g. on 8 GPUs
#   torchrun --nproc_per_node 8 tools/pretrain_imagenet.py --data-path /data/imagenet \
#       --model QARepVGG-B2 -b 128 --output-dir work_dirs/pretrain_qarepvgg_b2
# and point the backbone at the result (or pass
# --cfg-options model.backbone.init_cfg.checkpoint=PATH): any checkpoint of that run, or one
# made with the authors' code (their key layout loads as it is).
_base_ = "./pspnet_repvgg_b2_fast.py"
pretrained = "work_dirs/pretrain_qarepvgg_b2/model_best.pth"
model = dict(
    backbone=dict(
        block_type="QARepVGG",
        init_cfg=dict(type="Pretrained", checkpoint=pretrained),
    ),
)
