from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import randomize_bn, tiny_config


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module: on the shared 2-core test machine a second thread
    mostly waits on the first, making small ops many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Tiny:
    config: Path
    checkpoint: Path
    data_root: Path
    model: torch.nn.Module  # the checkpoint's model; tests copy it before changing it


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    """A small PSPNet-RepVGG-A0 (random BN statistics, untrained) on a two-image synthetic
    Cityscapes, its test images at their own size: ``tiny.py`` and ``trained.pth``."""
    from repvgg_seg.datasets import make_synthetic_cityscapes
    from repvgg_seg.loader import build_segmentor

    root = tmp_path_factory.mktemp("tiny")
    data_root = make_synthetic_cityscapes(root / "data", 2, 1, (64, 32), 0)
    pipeline = [
        {"type": "LoadImageFromFile"},
        {"type": "LoadAnnotations"},
        {"type": "PackSegInputs"},
    ]
    dataset = {"dataset": {"pipeline": pipeline}}
    config = tiny_config(
        root / "tiny.py",
        data_root,
        model={"decode_head": {"channels": 16}, "auxiliary_head": {"channels": 8}},
        val_dataloader=dataset,
        test_dataloader=dataset,
    )
    model = randomize_bn(build_segmentor(config), seed=1)
    checkpoint = root / "trained.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": model.state_dict()}, checkpoint)
    return Tiny(config, checkpoint, data_root, model)
