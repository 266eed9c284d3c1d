"""tools/train.py when things go wrong: a busy work dir, killed runs, broken checkpoints to
resume, and the one-line refusals for bad configs, checkpoints and downloads.

The command-line cases run tools/train.py as a real process on tiny synthetic Cityscapes,
the others in this process through ``run_tool``. The runner and its checkpoint hook are
tested in test_runner.py, the happy paths of train and test in test_train_test.py.
"""

from __future__ import annotations

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

import pytest
import torch
from test_train_test import CONFIG, ENV, ROOT, small

from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.work_dir import LOCK_NAME, WorkDirLock

from helpers import load_tool, one_error_line, tool_exit

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # like ENV's OMP_NUM_THREADS=1


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


def train_argv(work_dir: Path, data_root: Path, *options: str, flags=()) -> list[str]:
    # Unique names: mmengine hands out an existing logger or visualizer of the same name.
    name = f"{work_dir.parent.name}_{time.monotonic_ns()}"
    options += (f"experiment_name={name}", f"visualizer.name={name}")
    return train_command(work_dir, data_root, *options)[2:] + list(flags)


def train_in_process(work_dir: Path, data_root: Path, *options: str, flags=()) -> None:
    """tools/train.py's main in this process (a subprocess would mostly measure imports)."""
    load_tool("train").main(train_argv(work_dir, data_root, *options, flags=flags))


def train_exit(work_dir: Path, data_root: Path, *options: str, flags=(), capsys) -> tuple:
    """tools/train.py run in this process as from the command line: (status, stderr)."""
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


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (hidden ones included)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def save_iterations(work_dir: Path, *iterations: int) -> None:
    for iteration in iterations:
        torch.save({"meta": {"iter": iteration}}, work_dir / f"iter_{iteration}.pth")


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
        ("batch_size", r"train_dataloader.batch_size is 0: set a positive whole number"),
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
        status, err = tool_exit("train", argv, capsys)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert status == 1, err[-3000:]
    message = one_error_line(err, "train")
    assert (
        message.startswith(f"Could not download {url}: HTTP Error 404") and message.count(url) == 1
    )
