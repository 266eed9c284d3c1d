"""The output rule (issue 25, cases 1b, 5, 6): a tool replaces or removes only what it wrote.

:class:`repvgg_seg.output_dir.OutputDir` is the one claim of an output folder; these tests
drive it, :func:`repvgg_seg.atomic_io.write_atomically` inside it, and deploy's
:class:`~repvgg_seg.deploy.publish.OutputFolder` built on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_test import CONFIG

from repvgg_seg.atomic_io import write_atomically
from repvgg_seg.datasets import make_synthetic_cityscapes
from repvgg_seg.deploy.publish import OutputFolder
from repvgg_seg.dir_lock import TRAINING, LockRole
from repvgg_seg.errors import UsageError
from repvgg_seg.output_dir import (
    RECORD_NAME,
    NotWrittenByToolError,
    OutputDir,
    WrittenRecord,
    refuse_input_as_output,
)

from helpers import one_error_line, tool_exit

ROLE = LockRole(".test.lock", "Output folder", "another test run", "--out")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def leave_dead_lock(folder: Path, role: LockRole, marker: str) -> None:
    """The lock file a run killed with -9 leaves: its owner record, no flock held."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": dead_pid(), "host": "h", "started": "t", "marker": marker}
    (folder / role.file_name).write_text(json.dumps(record))


def put(path: Path, data: bytes) -> Path:
    return write_atomically(path, lambda file: file.write(data))


def test_a_claimed_folder_never_replaces_a_file_the_tool_did_not_write(tmp_path):
    users = tmp_path / "notes.txt"
    users.write_text("mine")
    with OutputDir(tmp_path, ROLE) as claim:
        with pytest.raises(NotWrittenByToolError, match=r"notes.txt.*not written by a repvgg"):
            put(users, b"tool")
        assert users.read_text() == "mine"
        ours = put(tmp_path / "sub" / "result.png", b"1")
        put(ours, b"2")  # the tool's own file: replaced
        assert claim.is_ours(ours) and not claim.is_ours(users)
    assert ours.read_bytes() == b"2"
    # The record outlives the run: a later run knows the file as the tool's ...
    with OutputDir(tmp_path, ROLE) as later:
        assert later.is_ours(ours)
    # ... until someone else puts another file under that name.
    ours.unlink()
    ours.write_bytes(b"2")
    with OutputDir(tmp_path, ROLE) as later:
        assert not later.is_ours(ours)
        with pytest.raises(NotWrittenByToolError):
            later.remove([ours])
    assert ours.exists() and not (tmp_path / ROLE.file_name).exists()


def test_overwrite_replaces_a_users_file_but_never_deletes_it(tmp_path):
    users = tmp_path / "a.png"
    users.write_text("mine")
    with OutputDir(tmp_path, ROLE, overwrite=True):
        put(users, b"tool")
    assert users.read_bytes() == b"tool"


def test_leftovers_are_recognised_by_the_dead_runs_marker_not_by_name(tmp_path):
    # Case 1b: a user's hidden file shaped like the atomic writer's temporaries survives.
    users = [tmp_path / ".name.x1y2z3w4.part", tmp_path / ".iter_2.pth.ab12cd34.k1ll3d_x.part"]
    users_staging = tmp_path / ".model_int8.ab12cd34.k1ll3d_x.staging"
    marker = "0badc0de"
    dead = [
        tmp_path / f".iter_2.pth.{marker}.k1ll3d_x.part",
        tmp_path / "overlays" / "clip" / f".f.png.{marker}.abcdefgh.part",
    ]
    dead_folder = tmp_path / f".model_int8.{marker}.qwertyui.staging"
    for path in users + dead:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    for folder in (users_staging, dead_folder):
        folder.mkdir()
        (folder / "float.onnx").write_bytes(b"x")
    leave_dead_lock(tmp_path, TRAINING, marker)
    with OutputDir(tmp_path, TRAINING) as claim:
        removed = claim.removed_leftovers
    assert sorted(removed) == sorted([*dead, dead_folder])
    assert all(path.exists() for path in [*users, users_staging])
    assert not any(path.exists() for path in [*dead, dead_folder])


def test_a_temporary_file_carries_the_marker_of_its_run(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(source, target):
        seen.append(Path(source).name)
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", spy)
    with OutputDir(tmp_path, ROLE) as claim:
        put(tmp_path / "x.png", b"1")
        lock_record = json.loads((tmp_path / ROLE.file_name).read_text())
    assert lock_record["marker"] == claim.marker
    assert seen[0].startswith(f".x.png.{claim.marker}.") and seen[0].endswith(".part")


@pytest.mark.parametrize("output", ["data", "data/val", "."])
def test_an_output_that_is_in_or_holds_an_input_is_refused(tmp_path, output):
    (tmp_path / "data" / "val").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"--out .* would write into the run's input"):
        refuse_input_as_output(tmp_path / output, [tmp_path / "data"], "--out")
    refuse_input_as_output(tmp_path / "results", [tmp_path / "data"], "--out")


# --- deploy's and quantize's output folder (cases 5 and 6) ----------------------------------


def publish(folder: Path, stem: str, files: dict[str, bytes], **kwargs) -> OutputFolder:
    with OutputFolder(folder, stem, **kwargs) as out:
        staged = []
        for name, data in files.items():
            staged.append(put(out.staging / name, data))
        out.publish(staged)
    return out


def test_quantize_refuses_a_users_file_of_its_name_before_any_work(tmp_path):
    users = tmp_path / "model_int8.json"
    users.write_text('{"mine": 1}')
    before = sorted(p.name for p in tmp_path.iterdir())
    out = OutputFolder(tmp_path, "model", "int8", (".onnx", ".json"), "tools/quantize.py")
    with pytest.raises(NotWrittenByToolError, match=r"model_int8.json.*Move it out"):
        out.check()
    with pytest.raises(NotWrittenByToolError):
        out.__enter__()
    assert (
        users.read_text() == '{"mine": 1}' and sorted(p.name for p in tmp_path.iterdir()) == before
    )


def test_a_users_hidden_folder_named_like_staging_survives_a_deploy(tmp_path):
    users = tmp_path / ".model_int8.mine.staging"
    users.mkdir()
    (users / "keep.txt").write_text("x")
    out = publish(
        tmp_path,
        "model",
        {"model_int8.onnx": b"o", "model_int8.json": b"{}"},
        kind="int8",
        suffixes=(".onnx", ".json"),
    )
    assert (users / "keep.txt").exists() and out.removed_leftovers == []
    assert (tmp_path / "model_int8.onnx").read_bytes() == b"o"


def test_a_deploy_says_which_earlier_files_it_removed(tmp_path):
    first = publish(
        tmp_path, "m", {"m_deploy.pth": b"1", "m_deploy.onnx": b"1", "m_deploy.py": b"1"}
    )
    assert first.removed_earlier == []
    second = publish(tmp_path, "m", {"m_deploy.pth": b"2", "m_deploy.py": b"2"})
    assert second.removed_earlier == [tmp_path / "m_deploy.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "m_deploy.pth",
        "m_deploy.py",
    ]
    assert (tmp_path / RECORD_NAME).is_file()


def test_a_deploy_never_removes_a_users_file_of_its_names(tmp_path):
    publish(tmp_path, "m", {"m_deploy.pth": b"1", "m_deploy.py": b"1"})
    (tmp_path / "m_deploy.onnx").write_bytes(b"the user's own export")
    with pytest.raises(NotWrittenByToolError, match="m_deploy.onnx"):
        publish(tmp_path, "m", {"m_deploy.pth": b"2", "m_deploy.py": b"2"})
    assert (tmp_path / "m_deploy.onnx").read_bytes() == b"the user's own export"
    assert (tmp_path / "m_deploy.pth").read_bytes() == b"1"


# --- the tools (cases 2, 3, 4, 18) ----------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_synthetic_cityscapes(tmp_path_factory.mktemp("data"), 2, 2, (64, 32), 0)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_test_refuses_an_out_inside_the_dataset(dataset, tmp_path, capsys):
    images = next((dataset / "leftImg8bit" / "val").iterdir())  # a city's image folder
    before = snapshot(dataset)
    options = ["--cfg-options", f"test_dataloader.dataset.data_root={dataset}"]
    for flag in ("--out", "--show-dir"):
        argv = [CONFIG, str(tmp_path / "never_read.pth"), flag, str(images), *options]
        status, err = tool_exit("test", argv, capsys)
        message = one_error_line(err, "test")
        assert status == 2 and f"{flag} '{images}' would write into the run's input" in message
    assert snapshot(dataset) == before


def test_test_refuses_an_out_holding_files_no_tool_wrote(dataset, tmp_path, capsys):
    out = tmp_path / "vis"
    out.mkdir()
    (out / "holiday.png").write_bytes(b"a user's picture")
    options = ["--cfg-options", f"test_dataloader.dataset.data_root={dataset}"]
    argv = [CONFIG, str(tmp_path / "never_read.pth"), "--show-dir", str(out), *options]
    status, err = tool_exit("test", argv, capsys)
    assert status == 2 and "holiday.png' was not written by a repvgg_seg tool" in err
    assert sorted(p.name for p in out.iterdir()) == ["holiday.png"]


def write_scalars(run: Path) -> Path:
    scalars = run / "20261203_000000" / "vis_data" / "scalars.json"
    scalars.parent.mkdir(parents=True)
    lines = [{"loss": 1.0 / step, "lr": 0.01, "iter": step, "step": step} for step in (1, 2)]
    scalars.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return scalars


def test_plot_logs_never_replaces_its_input_or_a_users_file(tmp_path, capsys):
    scalars = write_scalars(tmp_path / "run")
    log = scalars.read_bytes()
    photo = tmp_path / "photos" / "holiday.png"
    photo.parent.mkdir()
    photo.write_bytes(b"a user's picture")
    cases = {
        str(scalars): "would write into the run's input",
        str(tmp_path / "photos" / "holiday.jpg"): "writes a PNG image; pass a file name ending",
        str(photo): "exists; pass --overwrite to replace it",
    }
    for out, expected in cases.items():
        for flags in ([], ["--overwrite"]) if out == str(scalars) else ([],):
            argv = [str(tmp_path / "run"), "--out", out, *flags]
            status, err = tool_exit("plot_logs", argv, capsys)
            assert status == 2 and expected in one_error_line(err, "plot_logs")
    assert scalars.read_bytes() == log and photo.read_bytes() == b"a user's picture"
    assert not (tmp_path / "photos" / "holiday.jpg").exists()
    assert (
        tool_exit("plot_logs", [str(tmp_path / "run"), "--out", str(photo), "--overwrite"], capsys)[
            0
        ]
        == 0
    )
    assert photo.read_bytes().startswith(b"\x89PNG")


def test_convert_never_replaces_an_unrelated_file_and_names_folders(tmp_path, capsys):
    source = tmp_path / "src.pth"
    torch.save({"state_dict": {"stage0.rbr_dense.conv.weight": torch.ones(1)}}, source)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    cases = {
        (str(source), str(notes)): "DST '" + str(notes) + "' exists; pass --overwrite",
        (str(source), str(tmp_path)): f"DST '{tmp_path}' is a folder; pass a file name",
        (str(tmp_path), str(tmp_path / "out.pth")): f"SRC '{tmp_path}' is a folder",
    }
    for (src, dst), expected in cases.items():
        status, err = tool_exit("convert_checkpoint", [src, dst], capsys)
        assert status == 2 and expected in one_error_line(err, "convert_checkpoint")
    assert notes.read_text() == "mine" and not (tmp_path / "out.pth").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_demo_refuses_another_runs_work_dir(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "iter_2.pth").write_bytes(b"a training's checkpoint")
    WrittenRecord(run).add(run / "iter_2.pth", "train", run / "iter_2.pth")
    (run / "curves.png").write_bytes(b"drawn by tools/plot_logs.py")  # a file no claim recorded
    before = snapshot(run)
    argv = ["--work-dir", str(run), "--data-root", str(tmp_path / "data"), "--iters", "1"]
    status, err = tool_exit("demo", argv, capsys)
    assert status == 2 and "holds curves.png, which no training wrote" in one_error_line(
        err, "demo"
    )
    (run / "curves.png").unlink()
    del before["curves.png"]
    status, err = tool_exit("demo", argv, capsys)
    message = one_error_line(err, "demo")
    assert status == 2 and "holds checkpoints of an earlier run" in message
    assert "--overwrite-work-dir" in message
    assert snapshot(run) == {**before, RECORD_NAME: (run / RECORD_NAME).read_bytes()}


def test_quantize_tool_refuses_a_users_report_file_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    users = out / f"{Path(CONFIG).stem}_int8.json"
    users.write_text('{"my notes": 1}')
    argv = [CONFIG, str(tmp_path / "never_read.pth"), str(out)]
    status, err = tool_exit("quantize", argv, capsys)
    assert status == 2 and f"{users.name}' was not written by a repvgg_seg tool" in err
    assert users.read_text() == '{"my notes": 1}' and sorted(out.iterdir()) == [users]


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


def test_quantize_says_which_staging_folders_of_a_killed_run_it_removed(tmp_path, capsys):
    from types import SimpleNamespace

    from repvgg_seg.quantize import QuantizeReport

    from helpers import load_tool

    out = OutputFolder(tmp_path, "model", "int8", (".onnx", ".json"), "tools/quantize.py")
    leave_dead_lock(tmp_path, out.claim.role, "0badc0de")
    leftover = tmp_path / ".model_int8.0badc0de.ab12cd34.staging"
    leftover.mkdir()
    with out:
        assert out.removed_leftovers == [leftover] and not leftover.exists()
    report = QuantizeReport(tmp_path / "model_int8.onnx", tmp_path / "model_int8.json")
    report.removed_leftovers = out.removed_leftovers
    report.evaluation = SimpleNamespace(describe=lambda: "INT8 vs float: ...")
    load_tool("quantize").print_report(report)
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"removed 1 staging folder(s) of a killed run: {leftover}"


def test_pretraining_claims_its_output_dir_and_never_replaces_a_users_file(tmp_path):
    from test_pretrain import make_image_folder, tiny_config

    from repvgg_seg.pretrain import run_pretraining

    data = make_image_folder(tmp_path / "imagenet")
    out = tmp_path / "out"
    users = put(out / "notes" / "x", b"")  # the folder exists; then a user's files in it
    (out / "checkpoint.pth").write_bytes(b"the user's")
    unmarked = out / ".checkpoint.pth.k1ll3d_x.part"
    unmarked.write_bytes(b"the user's too")
    with pytest.raises(NotWrittenByToolError, match=r"checkpoint.pth' was not written"):
        run_pretraining(tiny_config(data, out, epochs=1))
    assert (out / "checkpoint.pth").read_bytes() == b"the user's"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".checkpoint.pth.k1ll3d_x.part", "checkpoint.pth", "notes"]
    )

    (out / "checkpoint.pth").unlink()
    run_pretraining(tiny_config(data, out, epochs=1))
    record = WrittenRecord(out)
    for name in ("checkpoint.pth", "model_best.pth", "model_deploy.pth", "metrics.jsonl"):
        assert record.writer_of(out / name) == "pretrain", name
    assert unmarked.read_bytes() == b"the user's too" and users.exists()
    assert not (out / ".pretrain.lock").exists()


def test_an_earlier_releases_deploy_or_quantize_set_is_adopted_and_anything_else_refused(tmp_path):
    import onnx

    def earlier_deploy(folder: Path, ids: tuple[str, str]) -> Path:
        folder.mkdir()
        torch.save({"meta": {"deploy_id": ids[0]}, "state_dict": {}}, folder / "m_deploy.pth")
        (folder / "m_deploy.py").write_text(f"model = dict()\ndeploy_id = '{ids[1]}'\n")
        return folder

    new_set = {"m_deploy.pth": b"new", "m_deploy.py": b"new"}
    adopted = publish(earlier_deploy(tmp_path / "one", ("x1", "x1")), "m", new_set)
    assert (adopted.path / "m_deploy.pth").read_bytes() == b"new"
    mixed = earlier_deploy(tmp_path / "two", ("x1", "y2"))
    with pytest.raises(NotWrittenByToolError, match="m_deploy.p"):
        publish(mixed, "m", new_set)
    assert not (mixed / RECORD_NAME).exists()

    int8 = {"m_int8.onnx": b"new", "m_int8.json": b"{}"}
    for report in ({"onnx": "m_int8.onnx"}, {"onnx": "other.onnx"}, None):
        folder = tmp_path / f"int8_{report is None}_{bool(report and 'm_' in report['onnx'])}"
        folder.mkdir()
        onnx.save(
            onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), folder / "m_int8.onnx"
        )
        if report is not None:
            (folder / "m_int8.json").write_text(json.dumps(report))
        args = ("m", int8)
        kwargs = dict(kind="int8", suffixes=(".onnx", ".json"))
        if report == {"onnx": "m_int8.onnx"}:
            assert (publish(folder, *args, **kwargs).path / "m_int8.onnx").read_bytes() == b"new"
        else:  # a report naming another model, or a model without its report
            with pytest.raises(NotWrittenByToolError):
                publish(folder, *args, **kwargs)
