# PSPNet, RepVGG-B1g2-fast, the paper's recipe: output stride 8 like pspnet_repvgg_b1g2.py, but
# only the last 5 layers are dilated (our reading of the paper's "fast" setting, see
# repvgg_seg/models/backbone.py): the same weights, less computation.
_base_ = "./pspnet_repvgg_b1g2.py"
model = dict(backbone=dict(dilation_mode="fast"))
