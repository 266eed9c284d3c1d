# pspnet_repvgg_a0_synthetic.py built of QARepVGG blocks (docs/qarepvgg.md): the small CPU
# configuration on synthetic Cityscapes, for the quantization study and the tests.
_base_ = "./pspnet_repvgg_a0_synthetic.py"
model = dict(backbone=dict(block_type="QARepVGG"))
