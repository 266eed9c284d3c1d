"""A training's work dir holds only what trainings wrote (issue 25, case 1b).

``tools/train.py`` runs in this process on tiny synthetic Cityscapes (the helpers of
tests/test_train.py); a user's files in the work dir are never replaced or deleted,
and the refusal names them as what they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_train import save_iterations, snapshot, train_exit, train_in_process

from repvgg_seg.checkpoint import read_checkpoint
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.output_dir import RECORD_NAME, WrittenRecord
from repvgg_seg.work_dir import checkpoint_to_resume, written_only_by

from helpers import one_error_line

CONFIG_DUMP = "pspnet_repvgg_a0_synthetic.py"
ONE_ITERATION = ("train_cfg.max_iters=1", "default_hooks.checkpoint.interval=1")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("data"), 4, 3, (128, 64), 0)


def users_folder(tmp_path, *names: str):
    work_dir = tmp_path / "mine"
    work_dir.mkdir()
    for name in names:
        (work_dir / name).write_text(f"the user's {name}\n")
    return work_dir


def test_a_users_config_named_like_the_dump_is_refused_not_replaced(tmp_path, data_root, capsys):
    work_dir = users_folder(tmp_path, CONFIG_DUMP)
    before = snapshot(work_dir)
    status, err = train_exit(work_dir, data_root, *ONE_ITERATION, capsys=capsys)
    message = one_error_line(err, "train")
    assert status == 2 and f"holds {CONFIG_DUMP}, which no training wrote" in message
    assert "Move it out of the work dir" in message and snapshot(work_dir) == before


def test_a_users_best_model_is_named_as_such_and_never_deleted(tmp_path, data_root, capsys):
    work_dir = users_folder(tmp_path, "best_model.pth")
    before = snapshot(work_dir)
    for flags in ([], ["--overwrite-work-dir"]):
        status, err = train_exit(work_dir, data_root, *ONE_ITERATION, flags=flags, capsys=capsys)
        message = one_error_line(err, "train")
        assert status == 2 and "holds best_model.pth, which no training wrote" in message
        assert "earlier run" not in message
        assert snapshot(work_dir) == before


def test_a_users_hidden_part_file_survives_a_training(tmp_path, data_root):
    work_dir = users_folder(tmp_path, ".name.x1y2z3w4.part", "notes.txt")
    train_in_process(work_dir, data_root, *ONE_ITERATION)
    assert (work_dir / ".name.x1y2z3w4.part").read_text() == "the user's .name.x1y2z3w4.part\n"
    assert (work_dir / "iter_1.pth").is_file() and (work_dir / RECORD_NAME).is_file()


def test_new_run_over_an_earlier_one_is_refused_unless_asked(tmp_path, data_root, capsys):
    work_dir = tmp_path / "work"
    options = ("default_hooks.checkpoint.interval=1", "param_scheduler.0.end=2")
    train_in_process(work_dir, data_root, "train_cfg.max_iters=2", *options)
    before = snapshot(work_dir)
    status, err = train_exit(work_dir, data_root, "train_cfg.max_iters=1", capsys=capsys)
    assert status == 2
    message = one_error_line(err, "train")
    assert f"Work dir '{work_dir}' holds checkpoints of an earlier run (" in message
    for option in ("--resume", "--work-dir", "--overwrite-work-dir"):
        assert option in message
    assert snapshot(work_dir) == before

    train_in_process(work_dir, data_root, *ONE_ITERATION, flags=["--overwrite-work-dir"])
    # The earlier run's files are gone, not mixed in with this run's.
    assert "iter_2.pth" not in os.listdir(work_dir)
    assert read_checkpoint(work_dir / "iter_1.pth")["meta"]["iter"] == 1
    assert (work_dir / "last_checkpoint").read_text().endswith("iter_1.pth")


def test_a_demos_own_work_dir_is_told_from_another_runs(tmp_path):
    work_dir = tmp_path / "demo"
    work_dir.mkdir()
    checkpoint = work_dir / "iter_2.pth"
    checkpoint.write_bytes(b"weights")
    # mmengine rewrites last_checkpoint in place: it is a run's when it names a recorded file.
    (work_dir / "last_checkpoint").write_text(str(checkpoint))
    record = WrittenRecord(work_dir)
    record.add(checkpoint, "demo", checkpoint)
    assert written_only_by(work_dir, "demo") and not written_only_by(work_dir, "train")
    (work_dir / "last_checkpoint").write_text("/elsewhere/a_users_file.pth")
    assert not written_only_by(work_dir, "demo")


@pytest.mark.parametrize("record", ["", "{work_dir}/moved/iter_9.pth", "{work_dir}/iter_3.pth"])
def test_resume_falls_back_to_newest_readable_iteration(tmp_path, record):
    save_iterations(tmp_path, 1, 2, 10)
    (tmp_path / "iter_3.pth").write_bytes(b"PK\3\4 truncated")
    (tmp_path / "iter_10.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").write_text(record.format(work_dir=tmp_path))
    choice = checkpoint_to_resume(tmp_path)
    assert choice.path == str(tmp_path / "iter_2.pth") and choice.fell_back
    assert any("iter_10.pth' cannot be read" in reason for reason in choice.skipped)


def test_resume_uses_last_checkpoint_when_readable(tmp_path):
    save_iterations(tmp_path, 1, 2)
    (tmp_path / "last_checkpoint").write_text(str(tmp_path / "iter_1.pth"))
    assert checkpoint_to_resume(tmp_path).path == str(tmp_path / "iter_1.pth")
    assert checkpoint_to_resume(tmp_path / "empty").path is None


def test_resuming_another_folders_checkpoint_into_a_work_dir_of_a_third_run_is_refused(tmp_path):
    import torch

    from repvgg_seg.work_dir import EarlierRunError, plan_training_start

    other, work_dir, new = tmp_path / "A", tmp_path / "B", users_folder(tmp_path, "best_model.pth")
    other.mkdir(), work_dir.mkdir()
    torch.save({"meta": {"iter": 2}}, other / "iter_2.pth")
    torch.save({"meta": {"iter": 4}}, work_dir / "iter_4.pth")
    WrittenRecord(work_dir).add(work_dir / "iter_4.pth", "train", work_dir / "iter_4.pth")
    before = snapshot(work_dir)
    with pytest.raises(EarlierRunError, match=r"iter_4.pth\), and --resume .*A/iter_2.pth"):
        plan_training_start(work_dir, True, str(other / "iter_2.pth"), False)
    assert snapshot(work_dir) == before
    # The work dir's own checkpoint resumes; so does another's into a folder without a
    # training's checkpoints (a user's best_model.pth is no run's).
    assert plan_training_start(work_dir, True, str(work_dir / "iter_4.pth"), False).resume
    assert plan_training_start(new, True, str(other / "iter_2.pth"), False).resume


THREE_ITERATIONS = (
    "train_cfg.max_iters=3",
    "default_hooks.checkpoint.interval=1",
    "param_scheduler.0.end=3",
)


def earlier_release_work_dir(tmp_path, data_root) -> Path:
    """A work dir as the release before the record left it when killed after iteration 2 of
    3: a training's files, no record."""
    work_dir = tmp_path / "work"
    train_in_process(work_dir, data_root, *THREE_ITERATIONS)
    (work_dir / "iter_3.pth").unlink()
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_2.pth"))
    (work_dir / RECORD_NAME).unlink()
    return work_dir


def test_an_earlier_releases_work_dir_is_adopted_when_it_is_exactly_a_training(
    tmp_path, data_root, caplog
):
    work_dir = earlier_release_work_dir(tmp_path, data_root)
    train_in_process(work_dir, data_root, *THREE_ITERATIONS, flags=["--resume"])
    (line,) = [r.getMessage() for r in caplog.records if "an earlier release" in r.getMessage()]
    assert "adopted as a training's" in line and f"{CONFIG_DUMP}" in line and "iter_2.pth" in line
    assert read_checkpoint(work_dir / "iter_3.pth")["meta"]["iter"] == 3
    record = WrittenRecord(work_dir)
    assert record.writer_of(work_dir / "iter_1.pth") == "train"


def test_an_earlier_releases_work_dir_with_anything_else_stays_refused(tmp_path, data_root, capsys):
    work_dir = earlier_release_work_dir(tmp_path, data_root)
    dump = work_dir / CONFIG_DUMP
    dump.write_text(dump.read_text() + "# the user's edit\n")
    before = snapshot(work_dir)
    flags = ["--resume"]
    status, err = train_exit(work_dir, data_root, *THREE_ITERATIONS, flags=flags, capsys=capsys)
    assert status == 2 and f"holds {CONFIG_DUMP}, which no training wrote" in err
    assert snapshot(work_dir) == before and not (work_dir / RECORD_NAME).exists()
