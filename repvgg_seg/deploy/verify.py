"""Checking that a deployed segmentor predicts what the trained one does."""

from __future__ import annotations

import copy

import torch
from mmengine.config import Config
from mmseg.models.segmentors import EncoderDecoder

from ..equivalence import ROUNDOFF_RTOL, Agreement, compare_logits, strict_float32
from ..errors import UsageError


class DatasetUnavailableError(UsageError, FileNotFoundError):
    """The config's dataset, needed for a check on a real image, cannot be built or is empty."""


@torch.no_grad()
def compare_on_tensor(
    reference: EncoderDecoder,
    deployed: EncoderDecoder,
    inputs: torch.Tensor,
    rtol: float = ROUNDOFF_RTOL,
) -> Agreement:
    """Compares the decode-head logits of two segmentors on a normalized batch (float32).

    ``rtol`` is the criterion's tolerance (:func:`repvgg_seg.equivalence.compare_logits`).
    """
    inputs = inputs.to(next(reference.parameters()).device)
    with strict_float32():
        reference_logits = reference(inputs, mode="tensor")
        return compare_logits(reference_logits, deployed(inputs, mode="tensor"), rtol=rtol)


@torch.no_grad()
def compare_on_batch(
    reference: EncoderDecoder, deployed: EncoderDecoder, data: dict, rtol: float = ROUNDOFF_RTOL
) -> Agreement:
    """Compares full predictions (test_cfg inference, resized to the original image), in float32.

    Args:
        data: A collated batch as a dataloader yields it (``inputs``, ``data_samples``).
        rtol: The criterion's tolerance (:func:`repvgg_seg.equivalence.compare_logits`).
    """
    results = []
    with strict_float32():
        for model in (reference, deployed):
            batch = model.data_preprocessor(copy.deepcopy(data), False)
            results.append(model.predict(batch["inputs"], batch["data_samples"]))
    ref = torch.stack([sample.seg_logits.data for sample in results[0]])
    dep = torch.stack([sample.seg_logits.data for sample in results[1]])
    return compare_logits(ref, dep, rtol=rtol)


def build_split_dataset(cfg: Config, split: str = "test"):
    """The config's ``{split}_dataloader`` dataset, with its own pipeline.

    Raises:
        ValueError: the config has no such dataloader.
        DatasetUnavailableError: the dataset is empty or its files are missing (the caller
            says what needs it, or which of its options avoids it).
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    key = f"{split}_dataloader"
    if key not in cfg or "dataset" not in cfg[key]:
        raise UsageError(f"The config has no {key}.dataset.")
    init_default_scope(cfg.get("default_scope", "mmseg"))
    dataset_cfg = copy.deepcopy(cfg[key].dataset)
    try:
        dataset = DATASETS.build(dataset_cfg)
    except Exception as error:
        raise DatasetUnavailableError(
            f"Could not build {key}.dataset (data_root={dataset_cfg.get('data_root')!r}): "
            f"{str(error).rstrip('.')}."
        ) from error
    if len(dataset) == 0:
        raise DatasetUnavailableError(
            f"{key}.dataset under {dataset_cfg.get('data_root')!r} is empty."
        )
    return dataset


def first_dataset_batch(cfg: Config, split: str = "test") -> dict:
    """One collated sample of the config's ``{split}_dataloader`` dataset (real pipeline).

    Raises:
        ValueError: the config has no such dataloader.
        DatasetUnavailableError: the dataset is empty or its files are missing.
    """
    from mmengine.dataset import pseudo_collate

    return pseudo_collate([build_split_dataset(cfg, split)[0]])
