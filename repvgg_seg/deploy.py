"""Deploying a trained segmentor: fuse it, prove the fusion exact, save it, export it.

The deployed model differs from the trained one in three ways, each exact in eval mode:

1. every RepVGG block is one 3x3 conv (:func:`repvgg_seg.reparam.reparameterize_model`);
2. every BN that directly follows a conv (heads, ResNet baselines) is folded into that conv,
   the BN replaced by ``nn.Identity`` and the conv given a bias;
3. the auxiliary head, which only adds a training loss, is dropped.

A deploy config rebuilds that structure from scratch: the backbone gets ``deploy=True`` and
the segmentor becomes :class:`DeployedEncoderDecoder`, which records the folded conv/BN pairs
by module name and re-creates them after building, so the deployed checkpoint loads strictly.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .reparam import fuse_bn, reparameterize_model

logger = logging.getLogger(__name__)

ConvBNPair = tuple[str, str]


# --------------------------------------------------------------------------- checkpoints


def _harmless_checkpoint_globals() -> dict[str, object]:
    """Non-tensor types that mmengine training checkpoints hold besides the weights.

    mmengine saves its message hub (``HistoryBuffer`` of numpy values) next to the state
    dict; these plain data types are allowed, anything else is refused.
    """
    from mmengine.logging import HistoryBuffer

    objects: list[object] = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        np.core.multiarray._reconstruct,
        np.core.multiarray.scalar,
    ]
    objects += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return {f"{obj.__module__}.{obj.__name__}": obj for obj in objects}


def load_checkpoint_file(path: str | Path) -> dict:
    """Loads a checkpoint with ``weights_only=True``, allowing mmengine's bookkeeping types.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file holds other Python objects (it is not loaded).
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    allowed = _harmless_checkpoint_globals()
    unknown = [name for name in needed if name not in allowed]
    if unknown:
        raise ValueError(
            f"Checkpoint {path!r} contains Python objects that are not safe to load "
            f"({', '.join(unknown)}); it is not loaded (weights_only=True). Save the weights "
            "as {'meta': ..., 'state_dict': model.state_dict()} from a trusted session. "
            "(mmengine training checkpoints pickle their message hub with bound methods, "
            "'builtins.getattr'.)"
        )
    with torch.serialization.safe_globals([allowed[name] for name in needed]):
        return torch.load(path, map_location="cpu", weights_only=True)


def state_dict_of(checkpoint: dict, path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint (mmengine's ``state_dict`` key or bare)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"Checkpoint {str(path)!r} has no 'state_dict' of tensors (keys: "
            f"{', '.join(map(str, list(checkpoint)[:8]))}); pass an mmengine/mmseg checkpoint."
        )
    return state


def save_checkpoint_atomic(checkpoint: dict, path: str | Path) -> None:
    """Writes ``checkpoint`` to a temp file beside ``path``, then renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------- conv + BN


def find_conv_bn_pairs(model: nn.Module, run_forward: Callable[[], object]) -> list[ConvBNPair]:
    """Names of every (conv, BN) pair where the BN reads exactly the conv's output.

    Candidates are sibling modules registered conv-then-BN (mmcv ``ConvModule``, ResNet
    blocks, ``Sequential`` stems); one forward pass (``run_forward``) keeps only those where
    the BN's input *is* the conv's output tensor, which rules out pre-norm layouts and
    convs whose output goes elsewhere first. Modules the forward pass never runs (an
    auxiliary head) are not folded.
    """
    candidates: dict[nn.Module, nn.Conv2d] = {}
    for parent in model.modules():
        previous = None
        for child in parent.children():
            if (
                isinstance(child, _BatchNorm)
                and isinstance(previous, nn.Conv2d)
                and previous.out_channels == child.num_features
            ):
                candidates[child] = previous
            previous = child

    conv_outputs: dict[nn.Module, torch.Tensor] = {}
    confirmed: set[nn.Module] = set()

    def remember_output(conv: nn.Module, args: tuple, output: torch.Tensor) -> None:
        conv_outputs[conv] = output

    def check_input(bn: nn.Module, args: tuple) -> None:
        if args and args[0] is conv_outputs.get(candidates[bn]):
            confirmed.add(bn)

    handles = [conv.register_forward_hook(remember_output) for conv in set(candidates.values())]
    handles += [bn.register_forward_pre_hook(check_input) for bn in candidates]
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
    names = {module: name for name, module in model.named_modules()}
    return [(names[candidates[bn]], names[bn]) for bn in candidates if bn in confirmed]


def _replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child_name, new)


def prepare_folded_structure(model: nn.Module, pairs: Iterable[Sequence[str]]) -> None:
    """Gives each pair's conv a bias and replaces its BN by ``nn.Identity`` (values unset).

    This is the structure a folded checkpoint has; :func:`fold_conv_bn` fills in the values.
    """
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, _BatchNorm | nn.Identity):
            raise ValueError(
                f"folded_conv_bn pair ({conv_name!r}, {bn_name!r}) does not name a conv and a "
                f"BN in this model (found {type(conv).__name__}, {type(bn).__name__}); the "
                "deploy config does not match the model it was written for."
            )
        if conv.bias is None:
            conv.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels))
        _replace_submodule(model, bn_name, nn.Identity())


@torch.no_grad()
def fold_conv_bn(model: nn.Module, pairs: Iterable[Sequence[str]]) -> None:
    """Folds each pair's eval-mode BN into its conv (paper Eq. 3, plus any conv bias)."""
    pairs = list(pairs)
    folded = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        kernel, bias = fuse_bn(conv.weight, bn)
        if conv.bias is not None:
            scale, _ = fuse_bn(torch.ones_like(conv.bias).reshape(-1, 1, 1, 1), bn)
            bias = bias + conv.bias * scale.flatten()
        folded.append((conv, kernel, bias))
    prepare_folded_structure(model, pairs)
    for conv, kernel, bias in folded:
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)


# --------------------------------------------------------------------------- segmentor


@MODELS.register_module()
class DeployedEncoderDecoder(EncoderDecoder):
    """An ``EncoderDecoder`` whose listed conv/BN pairs are already folded.

    Args:
        folded_conv_bn: ``[conv_name, bn_name]`` pairs, as written by
            :func:`make_deploy_config`; their BNs become ``nn.Identity`` and their convs get
            a bias, so a deployed checkpoint loads strictly.
        **kwargs: ``EncoderDecoder`` arguments.
    """

    def __init__(self, folded_conv_bn: Sequence[Sequence[str]] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.folded_conv_bn = [tuple(pair) for pair in folded_conv_bn]
        prepare_folded_structure(self, self.folded_conv_bn)


def build_segmentor(config: str | Path | Config) -> EncoderDecoder:
    """Builds a config's segmentor in eval mode without pretrained weights (load them next)."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    cfg = Config.fromfile(str(config)) if not isinstance(config, Config) else copy.deepcopy(config)
    if "custom_imports" in cfg:
        import_modules_from_strings(**cfg.custom_imports)
    init_default_scope(cfg.get("default_scope", "mmseg"))
    model_cfg = cfg.model
    model_cfg.pretrained = None
    model_cfg.backbone.init_cfg = None
    model_cfg.backbone.pop("pretrained", None)
    model = MODELS.build(model_cfg)
    model.eval()
    return model


def deploy_segmentor(
    model: EncoderDecoder, example_input: torch.Tensor, fuse_conv_bn: bool = True
) -> list[ConvBNPair]:
    """Turns a trained segmentor into its deployed form, in place.

    Fuses the RepVGG blocks, drops the auxiliary head and (``fuse_conv_bn``) folds every
    conv+BN pair that ``example_input`` (a normalized ``N,3,H,W`` batch) runs through.

    Returns:
        The folded (conv, BN) module names, for :func:`make_deploy_config`.
    """
    model.eval()
    reparameterize_model(model)
    model.auxiliary_head = None
    if not fuse_conv_bn:
        return []
    pairs = find_conv_bn_pairs(model, lambda: model(example_input, mode="tensor"))
    fold_conv_bn(model, pairs)
    logger.info("folded %d conv+BN pairs", len(pairs))
    return pairs


def make_deploy_config(cfg: Config, pairs: Sequence[ConvBNPair]) -> Config:
    """The config that rebuilds a segmentor deployed by :func:`deploy_segmentor`.

    Raises:
        ValueError: the config's model is not an mmseg ``EncoderDecoder``.
    """
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    if str(model.get("type", "")).split(".")[-1] not in (
        "EncoderDecoder",
        "DeployedEncoderDecoder",
    ):
        raise ValueError(
            f"model.type is {model.get('type')!r}; deploy supports mmseg 'EncoderDecoder' "
            "segmentors (PSPNet, FCN, DeepLabV3, ...)."
        )
    model.type = "DeployedEncoderDecoder"
    model.folded_conv_bn = [list(pair) for pair in pairs]
    model.pretrained = None
    model.auxiliary_head = None
    model.backbone.init_cfg = None
    model.backbone.pop("pretrained", None)
    if str(model.backbone.type).split(".")[-1] == "RepVGG":
        model.backbone.deploy = True
    imports = list(cfg.get("custom_imports", {}).get("imports", []))
    for module in ("repvgg_seg", __name__):
        if module not in imports:
            imports.append(module)
    cfg.custom_imports = {"imports": imports, "allow_failed_imports": False}
    return cfg


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Agreement:
    """How far two segmentors' outputs on the same input are apart.

    Attributes:
        max_abs_diff: Largest absolute difference of the logits.
        changed_pixels: Pixels whose predicted class (argmax) differs.
        num_pixels: Pixels compared.
        max_abs_reference: Largest absolute reference logit (the scale of the round-off).
    """

    max_abs_diff: float
    changed_pixels: int
    num_pixels: int
    max_abs_reference: float

    @property
    def relative_diff(self) -> float:
        """``max_abs_diff`` relative to the largest reference logit."""
        return self.max_abs_diff / max(self.max_abs_reference, 1e-12)

    @property
    def changed_fraction(self) -> float:
        return self.changed_pixels / max(1, self.num_pixels)


def compare_logits(reference: torch.Tensor, candidate: torch.Tensor) -> Agreement:
    """Compares ``N,C,H,W`` (or ``C,H,W``) logits and their per-pixel argmax."""
    if reference.shape != candidate.shape:
        raise ValueError(
            f"logit shapes differ: {tuple(reference.shape)} vs {tuple(candidate.shape)}"
        )
    channel_dim = -3
    changed = reference.argmax(channel_dim) != candidate.argmax(channel_dim)
    return Agreement(
        max_abs_diff=(reference - candidate).abs().max().item(),
        changed_pixels=int(changed.sum().item()),
        num_pixels=changed.numel(),
        max_abs_reference=reference.abs().max().item(),
    )


@torch.no_grad()
def compare_on_tensor(
    reference: EncoderDecoder, deployed: EncoderDecoder, inputs: torch.Tensor
) -> Agreement:
    """Compares the decode-head logits of two segmentors on a normalized batch."""
    return compare_logits(reference(inputs, mode="tensor"), deployed(inputs, mode="tensor"))


@torch.no_grad()
def compare_on_batch(reference: EncoderDecoder, deployed: EncoderDecoder, data: dict) -> Agreement:
    """Compares full predictions (test_cfg inference, resized to the original image).

    Args:
        data: A collated batch as a dataloader yields it (``inputs``, ``data_samples``).
    """
    results = []
    for model in (reference, deployed):
        batch = model.data_preprocessor(copy.deepcopy(data), False)
        results.append(model.predict(batch["inputs"], batch["data_samples"]))
    ref = torch.stack([sample.seg_logits.data for sample in results[0]])
    dep = torch.stack([sample.seg_logits.data for sample in results[1]])
    return compare_logits(ref, dep)


def first_dataset_batch(cfg: Config, split: str = "test") -> dict:
    """One collated sample of the config's ``{split}_dataloader`` dataset (real pipeline).

    Raises:
        ValueError: the config has no such dataloader.
        FileNotFoundError: the dataset is empty or its files are missing.
    """
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    key = f"{split}_dataloader"
    if key not in cfg or "dataset" not in cfg[key]:
        raise ValueError(f"The config has no {key}.dataset to take a verification image from.")
    init_default_scope(cfg.get("default_scope", "mmseg"))
    dataset_cfg = copy.deepcopy(cfg[key].dataset)
    try:
        dataset = DATASETS.build(dataset_cfg)
    except Exception as error:
        raise FileNotFoundError(
            f"Could not build {key}.dataset (data_root={dataset_cfg.get('data_root')!r}): "
            f"{error}. Prepare the dataset or pass --skip-real-image."
        ) from error
    if len(dataset) == 0:
        raise FileNotFoundError(f"{key}.dataset under {dataset_cfg.get('data_root')!r} is empty.")
    return pseudo_collate([dataset[0]])


# --------------------------------------------------------------------------- ONNX


class SegmentorLogits(nn.Module):
    """Normalized ``N,3,H,W`` image to per-pixel logits at the input size: the ONNX graph."""

    def __init__(self, segmentor: EncoderDecoder) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor(image, mode="tensor")
        return F.interpolate(
            logits,
            size=image.shape[2:],
            mode="bilinear",
            align_corners=self.segmentor.align_corners,
        )


class ShapeGenericAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two matrix products, so ONNX graphs keep dynamic sizes.

    The exporter's own decomposition bakes the example's bin indices into the graph (wrong
    results at other sizes). Here bin ``i`` of ``n`` over ``L`` pixels spans
    ``[floor(i L / n), ceil((i + 1) L / n))``, exactly PyTorch's rule, built from the shape.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        size = output_size if isinstance(output_size, tuple) else (output_size, output_size)
        if None in size:
            raise ValueError(f"output_size {output_size} with None is not supported.")
        self.output_size = size

    @staticmethod
    def _bins(length: int, bins: int, like: torch.Tensor) -> torch.Tensor:
        index = torch.arange(bins, device=like.device)
        start = (index * length) // bins
        end = ((index + 1) * length + bins - 1) // bins
        pixels = torch.arange(length, device=like.device)
        inside = (pixels >= start[:, None]) & (pixels < end[:, None])
        return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._bins(x.shape[-2], self.output_size[0], x)
        cols = self._bins(x.shape[-1], self.output_size[1], x)
        return rows @ x @ cols.transpose(0, 1)


def export_onnx(
    segmentor: EncoderDecoder, path: str | Path, example_input: torch.Tensor, opset: int = 18
) -> None:
    """Exports ``SegmentorLogits(segmentor)`` to ONNX with dynamic batch, height and width.

    The file is written beside ``path`` first and renamed into place when complete.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use 17 or newer.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = SegmentorLogits(copy.deepcopy(segmentor)).eval()
    for name, sub in list(module.named_modules()):
        if isinstance(sub, nn.AdaptiveAvgPool2d):
            _replace_submodule(module, name, ShapeGenericAdaptiveAvgPool2d(sub.output_size))
    tmp = path.with_name(f".{path.name}.tmp")
    dim = torch.export.Dim.DYNAMIC
    try:
        program = torch.onnx.export(
            module,
            (example_input,),
            dynamo=True,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"image": {0: dim, 2: dim, 3: dim}},
        )
        program.save(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def compare_onnx(
    path: str | Path, segmentor: EncoderDecoder, inputs: Sequence[torch.Tensor]
) -> list[Agreement]:
    """Runs the ONNX file with onnxruntime (CPU) and PyTorch on each input and compares."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = SegmentorLogits(segmentor).eval()
    agreements = []
    with torch.no_grad():
        for image in inputs:
            (onnx_logits,) = session.run(["logits"], {"image": image.numpy()})
            agreements.append(compare_logits(module(image), torch.from_numpy(onnx_logits)))
    return agreements


# --------------------------------------------------------------------------- the whole step


@dataclass
class DeployReport:
    """What :func:`deploy_checkpoint` wrote and how closely the deployed model agrees.

    Attributes:
        checkpoint: The deployed checkpoint.
        config: The deploy config (loads ``checkpoint`` strictly).
        folded_pairs: Conv+BN pairs folded outside the RepVGG blocks.
        random_input: Agreement of the decode-head logits on a random batch.
        real_image: Agreement of full predictions on the dataset's first image (or None).
        onnx: The ONNX file (or None).
        onnx_agreements: ONNX Runtime vs PyTorch, one per checked input.
    """

    checkpoint: Path
    config: Path
    folded_pairs: int
    random_input: Agreement
    real_image: Agreement | None = None
    onnx: Path | None = None
    onnx_agreements: list[Agreement] | None = None


def load_segmentor(config: str | Path | Config, checkpoint: str | Path) -> EncoderDecoder:
    """Builds a config's segmentor and loads a checkpoint into it strictly (eval mode)."""
    model = build_segmentor(config)
    state = state_dict_of(load_checkpoint_file(checkpoint), checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"Checkpoint {str(checkpoint)!r} does not fit the model of config {str(config)!r} "
            f"(strict load): {error}"
        ) from error
    model.eval()
    return model


def deploy_checkpoint(
    config: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    fuse_conv_bn: bool = True,
    random_size: tuple[int, int] | None = None,
    check_real_image: bool = True,
    onnx: bool = False,
    opset: int = 18,
) -> DeployReport:
    """Deploys a trained checkpoint, writes checkpoint + config, and verifies the result.

    The verification rebuilds the deployed model from the written config and checkpoint
    (strictly), so it checks exactly what a user will load.

    Args:
        config: The training config.
        checkpoint: The trained checkpoint (mmengine format or a bare state dict).
        out_dir: Where ``<config stem>_deploy.{pth,py[,onnx]}`` are written.
        fuse_conv_bn: Also fold conv+BN pairs in the heads and non-RepVGG backbones.
        random_size: ``(H, W)`` of the random check; default the config's crop size.
        check_real_image: Also compare full predictions on the dataset's first image.
        onnx: Also export to ONNX and compare ONNX Runtime with PyTorch.
        opset: ONNX opset (>= 17; torch 2.14's exporter writes 18 natively).
    """
    cfg = Config.fromfile(str(config))
    out_dir = Path(out_dir)
    stem = Path(config).stem
    reference = load_segmentor(cfg, checkpoint)
    deployed = copy.deepcopy(reference)
    pairs = deploy_segmentor(deployed, torch.randn(1, 3, 64, 64), fuse_conv_bn=fuse_conv_bn)

    checkpoint_path = out_dir / f"{stem}_deploy.pth"
    config_path = out_dir / f"{stem}_deploy.py"
    deploy_cfg = make_deploy_config(cfg, pairs)
    deploy_cfg.load_from = str(checkpoint_path)
    meta = load_checkpoint_file(checkpoint).get("meta", {})
    meta = {
        "dataset_meta": meta.get("dataset_meta"),
        "deployed_from": str(checkpoint),
        "folded_conv_bn": len(pairs),
    }
    save_checkpoint_atomic({"meta": meta, "state_dict": deployed.state_dict()}, checkpoint_path)
    config_path.parent.mkdir(parents=True, exist_ok=True)
    deploy_cfg.dump(str(config_path))
    logger.info("wrote %s and %s", checkpoint_path, config_path)

    rebuilt = load_segmentor(config_path, checkpoint_path)
    if random_size is None:
        random_size = tuple(cfg.model.get("data_preprocessor", {}).get("size") or (512, 1024))
    generator = torch.Generator().manual_seed(0)
    random_input = torch.randn(1, 3, *random_size, generator=generator)
    report = DeployReport(
        checkpoint=checkpoint_path,
        config=config_path,
        folded_pairs=len(pairs),
        random_input=compare_on_tensor(reference, rebuilt, random_input),
    )
    real_input = None
    if check_real_image:
        batch = first_dataset_batch(cfg)
        report.real_image = compare_on_batch(reference, rebuilt, batch)
        real_input = rebuilt.data_preprocessor(copy.deepcopy(batch), False)["inputs"]
    if onnx:
        onnx_path = out_dir / f"{stem}_deploy.onnx"
        export_onnx(rebuilt, onnx_path, random_input, opset=opset)
        inputs = [random_input, torch.randn(1, 3, random_size[0] // 2 + 8, random_size[1] + 16)]
        if real_input is not None:
            inputs.append(real_input)
        report.onnx = onnx_path
        report.onnx_agreements = compare_onnx(onnx_path, rebuilt, inputs)
    return report
