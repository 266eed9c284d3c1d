"""Deploying a trained segmentor: fuse it, prove the fusion exact, save it, export it.

The deployed model differs from the trained one in these ways, each exact in eval mode:

1. every RepVGG block is one 3x3 conv (:func:`repvgg_seg.reparam.reparameterize_model`);
2. every BN that directly follows a conv (heads, ResNet baselines) is folded into that conv,
   the BN replaced by ``nn.Identity`` and the conv given a bias;
3. the auxiliary head, which only adds a training loss, is dropped;
4. (default) its 3x3 stride-1 convs with enough channels run by Winograd F(4x4, 3x3) on CPU
   (:mod:`repvgg_seg.deploy.winograd`): same parameters, equal up to float32 round-off;
5. (``precision="bf16"``) backbone and heads hold bfloat16 weights and run bfloat16
   channels-last activations on CPU: not exact, measured against bf16's own precision.

A deploy config rebuilds that structure from scratch: the backbone gets ``deploy=True`` and
the segmentor becomes :class:`DeployedEncoderDecoder`, which records the folded conv/BN pairs
by module name and re-creates them after building, so the deployed checkpoint loads strictly.
:mod:`.publish` decides where the files go: one run per output folder, one consistent set.
"""

from .fold import ConvBNPair, find_conv_bn_pairs, fold_conv_bn, prepare_folded_structure
from .onnx_export import SegmentorLogits, ShapeGenericAdaptiveAvgPool2d, compare_onnx, export_onnx
from .pipeline import BF16_RTOL, BF16_UNIT_ROUNDOFF, DeployOptions, DeployReport, deploy_checkpoint
from .publish import OutputFolder
from .segmentor import (
    PRECISIONS,
    DeployedEncoderDecoder,
    deploy_segmentor,
    is_bf16_deployment,
    make_deploy_config,
    native_bf16,
    refuse_bf16_deployment,
    to_bfloat16,
)
from .verify import (
    Agreement,
    DatasetUnavailableError,
    build_split_dataset,
    compare_logits,
    compare_on_batch,
    compare_on_tensor,
    first_dataset_batch,
)
from .winograd import (
    WinogradConv2d,
    disable_winograd,
    enable_winograd,
    winograd_applies,
    winograd_conv2d,
)

__all__ = [
    "BF16_RTOL",
    "BF16_UNIT_ROUNDOFF",
    "PRECISIONS",
    "DeployOptions",
    "OutputFolder",
    "is_bf16_deployment",
    "native_bf16",
    "refuse_bf16_deployment",
    "to_bfloat16",
    "Agreement",
    "ConvBNPair",
    "DatasetUnavailableError",
    "DeployReport",
    "DeployedEncoderDecoder",
    "SegmentorLogits",
    "WinogradConv2d",
    "ShapeGenericAdaptiveAvgPool2d",
    "build_split_dataset",
    "compare_logits",
    "compare_on_batch",
    "compare_on_tensor",
    "compare_onnx",
    "deploy_checkpoint",
    "deploy_segmentor",
    "disable_winograd",
    "enable_winograd",
    "export_onnx",
    "find_conv_bn_pairs",
    "first_dataset_batch",
    "fold_conv_bn",
    "make_deploy_config",
    "prepare_folded_structure",
    "winograd_applies",
    "winograd_conv2d",
]
