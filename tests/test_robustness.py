"""What a training run guarantees when things go wrong (issue 12, points 7-9).

Two trainings in one work dir, killed runs, a broken ``last_checkpoint``, and the one-line
errors for bad labels, bad configs and bad checkpoints. The command-line cases run
tools/train.py as a real process on tiny synthetic Cityscapes. The runner and its checkpoint
hook (best checkpoint replaced, leftovers cleaned) are tested in test_runner.py.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS
from test_train_test import CONFIG, ENV, ROOT, small

from repvgg_seg.checkpoint import CheckpointError, UnsafeCheckpointError, read_checkpoint
from repvgg_seg.cli import one_line
from repvgg_seg.datasets import CityscapesDataError, make_synthetic_cityscapes
from repvgg_seg.work_dir import (
    LOCK_NAME,
    WorkDirLock,
    checkpoint_to_resume,
)

from helpers import one_error_line, tool_exit


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("data"), 4, 3, (128, 64), 0)


def train_command(work_dir: Path, data_root: Path, *options: str) -> list[str]:
    return [sys.executable, "tools/train.py", CONFIG, "--work-dir", str(work_dir)] + small(
        data_root, "train_cfg.val_interval=1000", *options
    )


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, **kwargs
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


# --- 7: one training per work dir ------------------------------------------------------------


def lock_owner_pid(work_dir: Path) -> int | None:
    try:
        return json.loads((work_dir / LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_second_training_in_a_busy_work_dir_is_refused(tmp_path, data_root):
    work_dir = tmp_path / "work"
    command = train_command(
        work_dir, data_root, "train_cfg.max_iters=100000", "param_scheduler.0.end=100000"
    )
    first = subprocess.Popen(
        command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while lock_owner_pid(work_dir) != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, "first run never started"
            time.sleep(0.05)
        second = run(command)
        assert second.returncode != 0
        message = last_line(second)
        assert f"Work dir '{work_dir}' is in use by another training (pid {first.pid}" in message
        assert "--work-dir" in message
        assert first.poll() is None, "the running training was disturbed"
        assert lock_owner_pid(work_dir) == first.pid
    finally:
        first.kill()
        first.wait()
    # SIGKILL released the lock with the process; the next run takes it over.
    lock = WorkDirLock(work_dir)
    stale = lock.acquire()
    lock.release()
    assert stale is not None and stale.pid == first.pid


def test_distributed_training_in_a_busy_work_dir_is_refused_on_every_rank(tmp_path, data_root):
    # The two ranks are started as torchrun would (env:// rendezvous over gloo), but by the
    # test: torchrun kills the other ranks when one fails, which would hide a rank that
    # hangs instead of stopping.
    work_dir = tmp_path / "dist"
    command = train_command(work_dir, data_root, "train_cfg.max_iters=1") + [
        "--launcher",
        "pytorch",
    ]
    rendezvous = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29523"}
    with WorkDirLock(work_dir):
        ranks = [
            subprocess.Popen(
                command,
                cwd=ROOT,
                env={**ENV, **rendezvous, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for rank in range(2)
        ]
        try:
            outputs = [rank.communicate(timeout=300) for rank in ranks]
        finally:
            for rank in ranks:
                rank.kill()
    busy = rf"error: Work dir '{re.escape(str(work_dir))}' is in use .*pid {os.getpid()}"
    for rank, (stdout, stderr) in zip(ranks, outputs, strict=True):
        assert rank.returncode != 0 and re.search(busy, stderr), (stdout + stderr)[-3000:]
    assert not list(work_dir.glob("iter_*.pth"))


# --- 8: resume -------------------------------------------------------------------------------


def save_iterations(work_dir: Path, *iterations: int) -> None:
    for iteration in iterations:
        torch.save({"meta": {"iter": iteration}}, work_dir / f"iter_{iteration}.pth")


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


def test_reading_a_checkpoint_keeps_mmengine_types_allowed(tmp_path):
    # mmengine's --resume loads with plain torch.load: the process-wide allow-list must
    # survive a read_checkpoint call (a safe_globals context removed it on exit).
    path = tmp_path / "hub.pth"
    torch.save({"message_hub": HistoryBuffer([1.0, 2.0], [1, 1])}, path)
    read_checkpoint(path)
    assert torch.load(path, weights_only=True)["message_hub"].current() == 2.0


def train_argv(work_dir: Path, data_root: Path, *options: str, flags=()) -> list[str]:
    # Unique names: mmengine hands out an existing logger or visualizer of the same name.
    name = f"{work_dir.parent.name}_{time.monotonic_ns()}"
    options += (f"experiment_name={name}", f"visualizer.name={name}")
    return train_command(work_dir, data_root, *options)[2:] + list(flags)


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like ENV's OMP_NUM_THREADS=1: more threads only contend here
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_in_process(work_dir: Path, data_root: Path, *options: str, flags=()) -> None:
    """tools/train.py's main in this process (a subprocess would mostly measure imports)."""
    with one_thread():
        load_tool("train").main(train_argv(work_dir, data_root, *options, flags=flags))


def train_exit(work_dir: Path, data_root: Path, *options: str, flags=(), capsys) -> tuple:
    """tools/train.py run in this process as from the command line: (status, stderr)."""
    with one_thread():
        return tool_exit("train", train_argv(work_dir, data_root, *options, flags=flags), capsys)


def test_resume_with_empty_last_checkpoint_and_leftovers(tmp_path, data_root, capfd):
    work_dir = tmp_path / "work"
    options = ("default_hooks.checkpoint.interval=1", "param_scheduler.0.end=3")
    train_in_process(work_dir, data_root, "train_cfg.max_iters=2", *options)
    # A run killed while writing: last_checkpoint emptied, iter_2.pth cut short (a copy
    # interrupted), temporary files left behind.
    (work_dir / "last_checkpoint").write_text("")
    iter_2 = work_dir / "iter_2.pth"
    iter_2.write_bytes(iter_2.read_bytes()[:1000])
    # The killed run's lock names its marker; its temporary files carry it.
    record = {"pid": 2**22 + 1, "host": "h", "started": "t", "marker": "0badc0de"}
    (work_dir / LOCK_NAME).write_text(json.dumps(record))
    leftovers = [work_dir / ".iter_3.pth.0badc0de.k2j4_x9a.part"]
    for path in leftovers:
        path.write_bytes(b"\0" * 100)
    capfd.readouterr()
    train_in_process(work_dir, data_root, "train_cfg.max_iters=3", *options, flags=["--resume"])
    log = "".join(capfd.readouterr())
    assert f"passed over: '{iter_2}' cannot be read" in log
    assert f"--resume: using the newest readable {work_dir / 'iter_1.pth'}" in log
    assert re.search(r"resumed epoch: \d+, iter: 1\b", log), log[-3000:]
    assert re.findall(r"Iter\(train\) \[\s*(\d+)/3\]", log) == ["2", "3"]
    assert (work_dir / "iter_3.pth").is_file() and not any(p.exists() for p in leftovers)


# --- 9: one-line errors ----------------------------------------------------------------------


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_missing_config_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nope.py")
    status, err = tool_exit("train", [missing], capsys)
    assert status == 2
    assert one_error_line(err, "train").startswith(f"Config file '{missing}' does not exist")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("max_iters", r"train_cfg.max_iters is -1: this run would train nothing"),
        ("empty", r"Checkpoint '{path}' is empty \(0 bytes\)"),
        ("truncated", r"Checkpoint '{path}' is not a readable PyTorch checkpoint"),
    ],
)
def test_train_errors_are_one_line(tmp_path, data_root, case, expected, capsys):
    checkpoint = tmp_path / "given.pth"
    options = []
    if case == "max_iters":
        options.append("train_cfg.max_iters=-1")
    else:
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, checkpoint)
        checkpoint.write_bytes(b"" if case == "empty" else checkpoint.read_bytes()[:500])
    flags = [] if case == "max_iters" else ["--resume", str(checkpoint)]
    status, err = train_exit(tmp_path / "w", data_root, *options, flags=flags, capsys=capsys)
    assert status == 2
    message = one_error_line(err, "train")
    assert re.match(expected.format(path=re.escape(str(checkpoint))), message), message
    if flags:  # refused before the runner wrote its config and log
        assert list((tmp_path / "w").iterdir()) == []


def test_error_from_a_dataloader_worker_is_one_line():
    from torch._utils import ExceptionWrapper

    try:
        raise CityscapesDataError("Label 'x.png' holds values outside: 50 (9 pixels).")
    except CityscapesDataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(CityscapesDataError) as error:
        wrapped.reraise()  # what the main process gets: the worker's traceback in the text
    assert "Traceback" in str(error.value)
    message = one_line(error.value)
    assert message == "Label 'x.png' holds values outside: 50 (9 pixels)."


# --- issue 20: no tool destroys a user's file, a refused run changes nothing -----------------


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (hidden ones included)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("link", ["same name", "hard link", "symlink to src", "src is a symlink"])
def test_convert_refuses_to_write_over_its_source(tmp_path, capsys, link):
    source = tmp_path / "segmentor.pth"
    torch.save({"state_dict": {"backbone.stage0.0.fused_conv.weight": torch.ones(3)}}, source)
    before = source.read_bytes()
    src, dst = source, tmp_path / "other.pth"
    if link == "same name":
        dst = source
    elif link == "hard link":
        os.link(source, dst)
    elif link == "symlink to src":
        dst.symlink_to(source)
    else:
        src = tmp_path / "link.pth"
        src.symlink_to(source)
        dst = source
    status, err = tool_exit("convert_checkpoint", [str(src), str(dst)], capsys)
    assert status == 2
    assert "would replace the source checkpoint" in one_error_line(err, "convert_checkpoint")
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def save_refused_checkpoint(path: Path) -> bytes:
    """A complete checkpoint the reader refuses: its meta holds a datetime."""
    torch.save({"meta": {"iter": 2, "time": datetime.datetime(2026, 1, 1)}}, path)
    return path.read_bytes()


def resume_refused(work_dir: Path, data_root: Path, capsys) -> str:
    """``--resume`` in ``work_dir``: refused in one line, nothing changed. The message."""
    before = snapshot(work_dir)
    status, err = train_exit(work_dir, data_root, flags=["--resume"], capsys=capsys)
    assert status == 2 and snapshot(work_dir) == before
    return one_error_line(err, "train")


def test_resume_refuses_a_complete_checkpoint_it_cannot_read(tmp_path, data_root, capsys):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    save_iterations(work_dir, 1)
    refused = save_refused_checkpoint(work_dir / "iter_2.pth")
    (work_dir / "last_checkpoint").write_text(str(work_dir / "iter_2.pth"))
    message = resume_refused(work_dir, data_root, capsys)
    assert f"'{work_dir / 'iter_2.pth'}' holds Python objects" in message
    assert "datetime.datetime" in message and "would write over it" in message
    assert (work_dir / "iter_2.pth").read_bytes() == refused


def test_resume_refuses_a_work_dir_whose_checkpoints_are_all_broken(tmp_path, data_root, capsys):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    (work_dir / "iter_4.pth").write_bytes(b"PK\3\4 truncated")
    message = resume_refused(work_dir, data_root, capsys)
    assert f"no checkpoint of work dir '{work_dir}' can be read" in message
    assert "iter_4.pth" in message and "--overwrite-work-dir" in message


def test_run_refused_as_busy_changes_nothing_in_the_work_dir(tmp_path, data_root, capsys):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    (work_dir / "pspnet_repvgg_a0_synthetic.py").write_text("# the running training's config\n")
    with WorkDirLock(work_dir):
        before = snapshot(work_dir)
        status, err = train_exit(
            work_dir, data_root, "optim_wrapper.optimizer.lr=0.5", capsys=capsys
        )
        assert snapshot(work_dir) == before
    assert status == 2 and "is in use by another training" in one_error_line(err, "train")
    assert (work_dir / "pspnet_repvgg_a0_synthetic.py").read_text().startswith("# the running")


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "archh",
            r"does not build: RepVGG.__init__\(\) got an unexpected keyword argument 'archh'",
        ),
        ("batch_size", r"batch_size should be a positive integer value, but got batch_size=0"),
    ],
)
def test_train_config_mistakes_are_one_line(tmp_path, data_root, case, expected, capsys):
    option = {
        "archh": "model.backbone.archh=A0",
        "batch_size": "train_dataloader.batch_size=0",
    }[case]
    status, err = train_exit(tmp_path / "w", data_root, option, capsys=capsys)
    assert status == 2 and re.search(expected, one_error_line(err, "train"))


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed"
)
def test_train_with_a_logging_backend_not_installed_is_one_line(tmp_path, data_root, capsys):
    option = "visualizer.vis_backends.0.type=TensorboardVisBackend"
    status, err = train_exit(tmp_path / "w", data_root, option, capsys=capsys)
    assert status == 2 and "pip install" in one_error_line(err, "train"), err


class _NotFound(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_train_download_error_is_one_line(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/weights/a0.pth"
    config = tmp_path / "pretrained.py"
    config.write_text(
        f"_base_ = {CONFIG!r}\n"
        "model = dict(backbone=dict(\n"
        f"    init_cfg=dict(_delete_=True, type='Pretrained', checkpoint={url!r})))\n"
    )
    argv = train_argv(tmp_path / "w", data_root)
    argv[0] = str(config)
    try:
        with one_thread():
            status, err = tool_exit("train", argv, capsys)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert status == 1, err[-3000:]
    message = one_error_line(err, "train")
    assert (
        message.startswith(f"Could not download {url}: HTTP Error 404") and message.count(url) == 1
    )


def test_corrupt_zip_and_symlink_loop_are_named_as_such(tmp_path):
    path = tmp_path / "corrupt.pth"
    torch.save({"state_dict": {"w": torch.zeros(100)}}, path)
    data = bytearray(path.read_bytes())
    pickle_start = data.index(b"\x80\x02")  # data.pkl's PROTO opcode, the zip's first entry
    data[pickle_start + 2 : pickle_start + 12] = b"A" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert not isinstance(error.value, UnsafeCheckpointError)
    assert "is not a readable PyTorch checkpoint" in str(error.value)
    assert "not loaded for safety" not in str(error.value)

    (tmp_path / "a.pth").symlink_to(tmp_path / "b.pth")
    (tmp_path / "b.pth").symlink_to(tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="is a loop of symbolic links"):
        read_checkpoint(tmp_path / "a.pth")
    (tmp_path / "dangling.pth").symlink_to(tmp_path / "gone.pth")
    with pytest.raises(FileNotFoundError, match="is a symbolic link to .*gone.pth'"):
        read_checkpoint(tmp_path / "dangling.pth")


def build_dataset(root: Path, split: str = "train"):
    init_default_scope("mmseg")
    return DATASETS.build(
        dict(
            type="CheckedCityscapesDataset",
            data_root=str(root),
            data_prefix=dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}"),
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")],
        )
    )


@pytest.fixture
def synthetic(tmp_path) -> Path:
    return make_synthetic_cityscapes(tmp_path / "cityscapes", 2, 1, (128, 64), 0)


def test_out_of_range_train_ids_name_the_label_file(synthetic):
    dataset = build_dataset(synthetic)
    label = dataset.get_data_info(1)["seg_map_path"]
    train_ids = cv2.imread(label, cv2.IMREAD_UNCHANGED)
    train_ids[:2, :5] = 50
    train_ids[10, 10] = 19
    cv2.imwrite(label, train_ids)
    assert dataset[0]["gt_seg_map"].shape == (64, 128)
    with pytest.raises(CityscapesDataError) as error:
        dataset[1]
    message = str(error.value)
    assert f"Label '{label}'" in message and "19 (1 pixels), 50 (10 pixels)" in message
    assert "0-18" in message and "tools/prepare_cityscapes.py" in message


def test_wrong_size_label_names_the_file(synthetic):
    dataset = build_dataset(synthetic)
    info = dataset.get_data_info(0)
    label = info["seg_map_path"]
    cv2.imwrite(label, cv2.imread(label, cv2.IMREAD_UNCHANGED)[:32, :64])
    with pytest.raises(
        CityscapesDataError, match=r"is 64x32 pixels but its image .* is 128x64"
    ) as error:
        dataset[0]
    assert label in str(error.value) and info["img_path"] in str(error.value)


def test_prepare_cityscapes_refuses_unknown_label_ids(synthetic, capsys):
    (source,) = [p for p in (synthetic / "gtFine" / "val").rglob("*_labelIds.png")]
    label_ids = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    label_ids[0, :3] = 34
    label_ids[1, 0] = 200
    cv2.imwrite(str(source), label_ids)
    target = Path(str(source).replace("_labelIds", "_labelTrainIds"))
    before = target.read_bytes()
    status, err = tool_exit("prepare_cityscapes", [str(synthetic)], capsys)
    message = one_error_line(err, "prepare_cityscapes")
    assert status == 2 and f"'{source}'" in message
    assert "34 (3 pixels), 200 (1 pixels)" in message and "--unknown-ids-to-ignore" in message
    assert target.read_bytes() == before
    load_tool("prepare_cityscapes").main([str(synthetic), "--unknown-ids-to-ignore"])
    train_ids = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    assert (train_ids[0, :3] == 255).all() and train_ids[1, 0] == 255
    np.testing.assert_array_equal(
        train_ids[5:], cv2.imdecode(np.frombuffer(before, np.uint8), -1)[5:]
    )
