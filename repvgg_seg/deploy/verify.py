"""Checking that a deployed segmentor predicts what the trained one does."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder


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
