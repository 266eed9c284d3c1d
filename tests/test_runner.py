"""repvgg_seg.runner: the atomic-checkpoint runner and hook, and how a training resumes.

The hook and runner cases drive mmengine's real Runner on a one-parameter model (seconds);
the ``--resume`` refusals run tools/train.py's main in this process as from the command line
(they stop before a runner is built, so they need no dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.evaluator import BaseMetric, Evaluator
from mmengine.model import BaseModel
from mmengine.runner import load_checkpoint
from torch import nn

import repvgg_seg.runner.runner as runner_module
from repvgg_seg.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from repvgg_seg.loader import build_segmentor
from repvgg_seg.runner import AtomicCheckpointRunner, NothingToTrainError
from repvgg_seg.work_dir import LOCK_NAME

from helpers import one_error_line, tool_exit

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "pspnet_repvgg_a0_synthetic.py"
QA_CONFIG = ROOT / "configs" / "pspnet_qarepvgg_a0_synthetic.py"


class OneParameter(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, inputs, data_samples=None, mode="tensor"):
        if mode == "loss":
            return {"loss": ((self.weight - torch.stack(inputs)) ** 2).mean()}
        return list(inputs)


class ScriptedMetric(BaseMetric):
    """Reports the given mIoU values, one per validation."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = list(scores)

    def process(self, data_batch, data_samples) -> None:
        self.results.append(0)

    def compute_metrics(self, results) -> dict:
        return {"mIoU": self.scores.pop(0)}


def loader() -> dict:
    return dict(
        dataset=[dict(inputs=torch.ones(1))] * 2,
        sampler=dict(type="DefaultSampler", shuffle=False),
        batch_size=1,
        num_workers=0,
    )


def tiny_runner(
    work_dir: Path, scores: list[float], max_iters: int | None = None, **kwargs
) -> AtomicCheckpointRunner:
    """A runner validating every iteration and keeping the best mIoU; ``scores`` are the
    validations' results (one per iteration unless ``max_iters`` says more)."""
    return AtomicCheckpointRunner(
        model=OneParameter(),
        work_dir=str(work_dir),
        train_dataloader=loader(),
        train_cfg=dict(by_epoch=False, max_iters=max_iters or len(scores), val_interval=1),
        val_dataloader=loader(),
        val_cfg=dict(),
        val_evaluator=Evaluator([ScriptedMetric(scores)]),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.1)),
        default_hooks=dict(
            checkpoint=dict(
                type="CheckpointHook", interval=1, by_epoch=False, save_best="mIoU", rule="greater"
            )
        ),
        default_scope="mmengine",
        log_level="INFO",
        # Unique: mmengine reuses the logger of an earlier runner of the same name.
        experiment_name=f"tiny_{work_dir.name}_{time.monotonic_ns()}",
        **kwargs,
    )


def log_text(work_dir: Path) -> str:
    return "".join(p.read_text() for p in work_dir.glob("*/*.log"))


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (hidden ones included)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# --------------------------------------------------------------------------- the hook


def test_best_checkpoint_is_written_before_the_old_one_is_removed(tmp_path, monkeypatch):
    removals = []
    real_remove = os.remove

    def remove(path, *args, **kwargs):
        if Path(path).name.startswith("best_"):
            removals.append((Path(path).name, sorted(p.name for p in tmp_path.glob("best_*"))))
        real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", remove)
    tiny_runner(tmp_path, scores=[1.0, 2.0, 1.5, 3.0]).train()
    assert removals == [
        ("best_mIoU_iter_1.pth", ["best_mIoU_iter_1.pth", "best_mIoU_iter_2.pth"]),
        ("best_mIoU_iter_2.pth", ["best_mIoU_iter_2.pth", "best_mIoU_iter_4.pth"]),
    ]
    assert sorted(p.name for p in tmp_path.glob("best_*")) == ["best_mIoU_iter_4.pth"]
    assert not list(tmp_path.glob(".*part*"))


def test_runner_writes_checkpoints_through_atomic_io(tmp_path, monkeypatch):
    import repvgg_seg.runner.checkpoint_hook as hook_module

    written = []
    real = hook_module.write_atomically

    def spy(path, write, *args, **kwargs):
        written.append(Path(path).name)
        return real(path, write, *args, **kwargs)

    monkeypatch.setattr(hook_module, "write_atomically", spy)
    tiny_runner(tmp_path, scores=[1.0, 2.0]).train()
    assert {"iter_1.pth", "iter_2.pth", "best_mIoU_iter_2.pth"} <= set(written)


def test_resuming_another_runs_checkpoint_never_deletes_its_best_one(tmp_path):
    # Issue 25 case 1: mmengine restores best_ckpt from the resumed checkpoint and removed
    # A's best checkpoint at B's first new best.
    run_a, run_b = tmp_path / "A", tmp_path / "B"
    tiny_runner(run_a, scores=[1.0, 2.0]).train()
    a_best = run_a / "best_mIoU_iter_2.pth"
    before = {name: when for name, when in snapshot(run_a).items() if name.endswith(".pth")}
    resumed = tiny_runner(
        run_b, scores=[3.0], max_iters=3, resume=True, load_from=str(run_a / "iter_2.pth")
    )
    resumed.train()
    assert resumed.iter == 3
    assert {name: when for name, when in snapshot(run_a).items() if name.endswith(".pth")} == before
    assert a_best.is_file()
    assert (run_b / "best_mIoU_iter_3.pth").is_file()
    assert f"best checkpoint {a_best} is outside this run's folder" in log_text(run_b)


def test_stale_lock_and_temporary_files_are_cleaned_at_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_pid = dead.pid
    record = {"pid": dead_pid, "host": "h", "started": "t", "marker": "0badc0de"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(record))
    leftovers = [tmp_path / ".iter_2.pth.0badc0de.abc_1234.part"]
    # Shaped like temporaries, but without the dead run's marker: not ours to delete.
    keep = [tmp_path / ".notes.part", tmp_path / ".iter_3.pth.abc_1234.part"]
    for path in leftovers + keep:
        path.write_bytes(b"\0" * 1000)
    tiny_runner(tmp_path, scores=[1.0]).train()
    assert not any(path.exists() for path in leftovers) and all(p.exists() for p in keep)
    log = log_text(tmp_path)
    assert f"ended without releasing it (pid {dead_pid} on host h" in log
    assert all(f"Removed {path}" in log for path in leftovers)
    assert not (tmp_path / LOCK_NAME).exists()


def test_zero_iterations_is_an_error(tmp_path):
    with pytest.raises(NothingToTrainError, match=r"train_cfg.max_iters is 0"):
        tiny_runner(tmp_path, scores=[]).train()


# --------------------------------------------------------------------------- load_from, resume


def test_load_from_goes_through_the_one_reader(tmp_path, monkeypatch):
    # Issue 25 case 11: mmengine's own torch.load read load_from before.
    source = tmp_path / "source.pth"
    torch.save({"state_dict": {"weight": torch.tensor([0.75])}}, source)
    read = []
    monkeypatch.setattr(
        runner_module, "read_checkpoint", lambda path: read.append(path) or read_checkpoint(path)
    )
    runner = tiny_runner(tmp_path / "run", scores=[1.0], load_from=str(source))
    runner.load_or_resume()
    assert read == [str(source)]
    torch.testing.assert_close(runner.model.weight.detach(), torch.tensor([0.75]))


def test_mmengines_own_reads_of_local_files_go_through_the_one_reader(tmp_path):
    # A Pretrained init_cfg of a ResNet, mmengine.runner.load_checkpoint: torch.load before.
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "args": argparse.Namespace()}, path)
    with pytest.raises(UnsafeCheckpointError, match="resnet.pth' holds Python objects"):
        load_checkpoint(OneParameter(), str(path))


def test_load_from_a_refused_or_diverged_checkpoint_is_one_error_naming_it(tmp_path):
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "args": argparse.Namespace()}, unsafe)
    with pytest.raises(UnsafeCheckpointError, match="unsafe.pth' holds Python objects"):
        tiny_runner(tmp_path / "a", scores=[1.0], load_from=str(unsafe)).load_or_resume()
    diverged = tmp_path / "nan.pth"
    torch.save({"state_dict": {"weight": torch.tensor([float("nan")])}}, diverged)
    with pytest.raises(CheckpointError, match="nan.pth' holds NaN or infinite weights"):
        tiny_runner(tmp_path / "b", scores=[1.0], load_from=str(diverged)).load_or_resume()


def test_runner_resumes_strictly(tmp_path):
    # A checkpoint with a key the model lacks: mmengine's resume loaded the rest and went on.
    tiny_runner(tmp_path / "A", scores=[1.0]).train()
    contents = read_checkpoint(tmp_path / "A" / "iter_1.pth")
    contents["state_dict"]["extra.weight"] = torch.zeros(2)
    torch.save(contents, tmp_path / "extra.pth")
    runner = tiny_runner(
        tmp_path / "B",
        scores=[1.0],
        max_iters=2,
        resume=True,
        load_from=str(tmp_path / "extra.pth"),
    )
    with pytest.raises(CheckpointError, match=r"extra.pth' does not fit .*unexpected \(1\): extra"):
        runner.train()
    assert not list((tmp_path / "B").glob("iter_*.pth"))


# ------------------------------------------------- tools/train.py --resume, before any training


@pytest.fixture(scope="module")
def a0_state() -> dict[str, torch.Tensor]:
    return build_segmentor(CONFIG).state_dict()


def resume_exit(tmp_path: Path, checkpoint: Path, capsys, *options: str) -> tuple[int, str]:
    """``tools/train.py CONFIG --work-dir W --resume CHECKPOINT``: (status, its one line);
    the work dir must be left as it was (nothing written)."""
    work_dir = tmp_path / "work"
    work_dir.mkdir(exist_ok=True)
    argv = [str(CONFIG), "--work-dir", str(work_dir), "--resume", str(checkpoint)]
    status, err = tool_exit(
        "train", argv + (["--cfg-options", *options] if options else []), capsys
    )
    assert snapshot(work_dir) == {}
    return status, one_error_line(err, "train")


def test_resume_refuses_the_other_block_type(tmp_path, capsys):
    # Issue 25 case 8: a QARepVGG checkpoint resumed into the RepVGG config trained, rc 0.
    checkpoint = tmp_path / "best_mIoU_iter_2.pth"
    torch.save({"state_dict": build_segmentor(QA_CONFIG).state_dict()}, checkpoint)
    status, message = resume_exit(tmp_path, checkpoint, capsys)
    assert status == 2
    assert f"'{checkpoint}' holds training-time QARepVGG blocks" in message
    assert "block_type='QARepVGG'" in message and str(CONFIG) in message


def test_resume_refuses_another_arch(tmp_path, a0_state, capsys):
    # An A0 checkpoint with arch=A1: a 50-line traceback at the first forward before.
    checkpoint = tmp_path / "iter_2.pth"
    torch.save({"state_dict": a0_state}, checkpoint)
    status, message = resume_exit(tmp_path, checkpoint, capsys, "model.backbone.arch=A1")
    assert status == 2 and "RepVGG-A0 weights" in message and "arch='A0'" in message


def test_resume_names_missing_keys_and_refuses_diverged_weights(tmp_path, a0_state, capsys):
    cut = tmp_path / "cut.pth"
    torch.save(
        {
            "state_dict": {
                k: v for k, v in a0_state.items() if not k.startswith("decode_head.conv_seg")
            }
        },
        cut,
    )
    status, message = resume_exit(tmp_path, cut, capsys)
    assert status == 2
    assert "does not fit" in message and "missing (2): decode_head.conv_seg" in message
    diverged = tmp_path / "nan.pth"
    state = dict(a0_state)
    state["decode_head.conv_seg.weight"] = torch.full_like(
        state["decode_head.conv_seg.weight"], float("inf")
    )
    torch.save({"state_dict": state}, diverged)
    status, message = resume_exit(tmp_path, diverged, capsys)
    assert status == 2 and "holds NaN or infinite weights" in message


class _RunsACommand:
    """Pickles as ``os.system(...)``: a crafted checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_resume_stops_at_a_legacy_checkpoint_that_runs_a_command(tmp_path, a0_state, capsys):
    # Issue 25 case 9: called "truncated or corrupt", passed over, an older one resumed.
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    torch.save({"state_dict": a0_state, "meta": {"iter": 1}}, work_dir / "iter_1.pth")
    marker = tmp_path / "ran"
    torch.save(
        {"state_dict": {}, "hook": _RunsACommand(marker)},
        work_dir / "iter_2.pth",
        _use_new_zipfile_serialization=False,
    )
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_2.pth"))
    before = snapshot(work_dir)
    status, err = tool_exit("train", [str(CONFIG), "--work-dir", str(work_dir), "--resume"], capsys)
    message = one_error_line(err, "train")
    assert status == 2 and snapshot(work_dir) == before and not marker.exists()
    assert f"'{work_dir / 'iter_2.pth'}' is unsafe and was not loaded" in message
    assert "posix.system" in message and "not passed over" in message
