"""repvgg_seg.deploy.publish: a deploy publishes one consistent set into its output folder,
says which earlier file it removes, cleans up after a killed run, leaves nothing behind on
SIGTERM, and refuses unusable folders in one line (the session's ``tiny`` model)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from mmengine.config import Config

from repvgg_seg.checkpoint import read_checkpoint
from repvgg_seg.deploy import DeployOptions, OutputFolder, deploy_checkpoint
from repvgg_seg.dir_lock import WorkDirBusyError
from repvgg_seg.output_dir import RECORD_NAME, WrittenRecord

from helpers import QUICK_DEPLOY, ROOT, load_tool, one_error_line, tool_exit


def test_deploy_publishes_one_consistent_set(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # An earlier deploy of this config with --onnx (as the folder's record says), and a
    # user's own file.
    (out / "tiny_deploy.onnx").write_bytes(b"an older model")
    WrittenRecord(out).add(out / "tiny_deploy.onnx", "deploy", out / "tiny_deploy.onnx")
    (out / "notes.txt").write_text("mine")
    report = deploy_checkpoint(
        tiny.config, tiny.checkpoint, out, DeployOptions(check_real_image=False, **QUICK_DEPLOY)
    )
    assert report.written and report.removed_earlier == [out / "tiny_deploy.onnx"]
    assert sorted(p.name for p in out.iterdir() if p.name != RECORD_NAME) == [
        "notes.txt",
        "tiny_deploy.pth",
        "tiny_deploy.py",
    ]
    deploy_id = Config.fromfile(str(report.config)).deploy_id
    assert read_checkpoint(report.checkpoint)["meta"]["deploy_id"] == deploy_id


def test_deploy_says_in_one_line_which_earlier_file_it_removes(tiny, tmp_path, capsys):
    # Case 6: deploy's own advice is "once with --onnx and once with --bf16"; the second
    # removes the first's ONNX (a model that is no longer the published one), and says so.
    out = tmp_path / "out"
    args = [str(tiny.config), str(tiny.checkpoint), str(out), "--random-size", "32", "64"]
    onnx = ["--onnx", "--onnx-atol", "1"]  # the tiny model's logits reach 3e4
    assert load_tool("deploy").main([*args, *onnx, "--skip-real-image"]) == 0
    assert (out / "tiny_deploy.onnx").is_file()
    capsys.readouterr()
    assert load_tool("deploy").main([*args, "--skip-real-image", "--winograd", "off"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "removed" in line]
    assert lines == [
        f"removed 1 file(s) of the earlier deploy that this one does not write (they belong "
        f"to the replaced model): {out / 'tiny_deploy.onnx'}"
    ]
    assert not (out / "tiny_deploy.onnx").exists()


def test_deploy_removes_a_killed_runs_staging_folder_and_refuses_a_live_run(tiny, tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, "tiny") as live:  # as a live deploy holds it
        with pytest.raises(WorkDirBusyError, match="in use by another tools/deploy.py run"):
            deploy_checkpoint(tiny.config, tiny.checkpoint, out, DeployOptions(**QUICK_DEPLOY))
        assert live.staging.is_dir()  # a live run's staging folder is left alone
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal\n"
            "from repvgg_seg.deploy.publish import OutputFolder\n"
            f"folder = OutputFolder({str(out)!r}, 'tiny').__enter__()\n"
            "(folder.staging / 'tiny_deploy.pth').write_bytes(bytes(10000))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert killed.returncode == -9
    (leftover,) = [p for p in out.iterdir() if p.name.endswith(".staging")]
    report = deploy_checkpoint(
        tiny.config, tiny.checkpoint, out, DeployOptions(check_real_image=False, **QUICK_DEPLOY)
    )
    assert report.removed_leftovers == [leftover]
    published = sorted(p.name for p in out.iterdir() if p.name != RECORD_NAME)
    assert published == ["tiny_deploy.pth", "tiny_deploy.py"]


def test_sigterm_during_a_deploy_leaves_nothing_in_the_output_folder(tiny, tmp_path):
    out = tmp_path / "out"
    # tools/deploy.py itself, held inside its staging step until the test has seen the
    # staging folder and sent SIGTERM (a `kill`), which must unwind like Ctrl-C.
    script = (
        "import runpy, sys, time\n"
        "import repvgg_seg.deploy.pipeline as pipeline\n"
        "def held():\n"
        "    print('staging', flush=True)\n"
        "    time.sleep(120)\n"
        "pipeline.new_deploy_id = held\n"
        f"sys.argv = ['tools/deploy.py', {str(tiny.config)!r}, {str(tiny.checkpoint)!r}, "
        f"{str(out)!r}, '--skip-real-image', '--no-winograd']\n"
        "runpy.run_path('tools/deploy.py', run_name='__main__')\n"
    )
    tool = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert tool.stdout.readline() == "staging\n"
        assert [p for p in out.iterdir() if p.name.endswith(".staging")]
        tool.send_signal(signal.SIGTERM)
        _, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == 143, err
    assert err.strip().splitlines() == ["tools/deploy.py: error: terminated (SIGTERM)"]
    assert list(out.iterdir()) == []  # no staging folder, no lock file


def test_deploy_refuses_unusable_output_folders_in_one_line(tiny, tmp_path, capsys):
    args = [str(tiny.config), str(tiny.checkpoint)]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    status, err = tool_exit("deploy", [*args, str(a_file)], capsys)
    assert status == 2 and "is a file, not a folder" in one_error_line(err, "deploy")

    clash = tmp_path / "clash"
    (clash / "tiny_deploy.pth").mkdir(parents=True)
    status, err = tool_exit("deploy", [*args, str(clash)], capsys)
    message = one_error_line(err, "deploy")
    assert status == 2 and "is a folder, but tools/deploy.py writes a file" in message

    if os.geteuid() != 0:  # root writes into read-only folders
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        status, err = tool_exit("deploy", [*args, str(read_only)], capsys)
        assert status == 2 and "is not writable" in one_error_line(err, "deploy")
