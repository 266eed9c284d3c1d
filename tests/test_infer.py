"""tools/infer.py: segmenting a user's own images, folders and videos, for every checkpoint form."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

import repvgg_seg  # noqa: F401  (registers the RepVGG backbone)
from repvgg_seg.deploy import DeployOptions, deploy_checkpoint
from repvgg_seg.inference import (
    Palette,
    draw_overlay,
    find_sources,
    legend_entries,
    load_inference_model,
    read_image,
)
from repvgg_seg.inference.run import INFER_LOCK, Progress
from repvgg_seg.loader import build_segmentor
from repvgg_seg.models import RepVGGBlock
from repvgg_seg.output_dir import RECORD_NAME
from repvgg_seg.reparam import reparameterize_model
from repvgg_seg.work_dir import WorkDirLock

from helpers import load_tool, one_error_line, randomize_bn, tiny_config, tool_exit

# (name, height, width, Pillow mode): several sizes and aspect ratios, grayscale and RGBA.
IMAGES = [
    ("street.png", 37, 53, "RGB"),
    ("wide.jpg", 20, 90, "RGB"),
    ("gray.png", 40, 30, "L"),
    ("rgba.png", 33, 33, "RGBA"),
    ("nested/street.png", 48, 64, "RGB"),  # same file name as the first, in a subfolder
]


def blobs(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random RGB image (large regions, so that predictions vary across it)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def write_image(path: Path, height: int, width: int, mode: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(blobs(height, width, seed))
    if mode == "RGBA":
        image.putalpha(128)
    image.convert(mode).save(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The small synthetic config (test images resized to 96x48) and its three checkpoint forms.

    Random weights with random BN statistics stand in for training: fusion and deployment are
    exact for any weights, and default BN statistics would hide fusion bugs.
    """
    root = tmp_path_factory.mktemp("infer_model")
    pipeline = [
        {"type": "LoadImageFromFile"},
        {"type": "Resize", "scale": (96, 48), "keep_ratio": True},
        {"type": "PackSegInputs"},
    ]
    config = tiny_config(
        root / "pspnet_tiny.py", test_dataloader={"dataset": {"pipeline": pipeline}}
    )
    model = randomize_bn(build_segmentor(Config.fromfile(str(config))), seed=1)
    with torch.no_grad():  # larger class scores, so that the argmax varies over the image
        model.decode_head.conv_seg.weight.mul_(100)
    trained = root / "trained.pth"
    torch.save({"meta": {}, "state_dict": model.state_dict()}, trained)
    fused = root / "fused.pth"
    fused_model = reparameterize_model(copy.deepcopy(model))
    torch.save({"meta": {}, "state_dict": fused_model.state_dict()}, fused)
    # A low channel threshold so that most of this small model's convs run by Winograd.
    report = deploy_checkpoint(
        config,
        trained,
        root / "deploy",
        DeployOptions(
            random_size=(48, 96),
            check_real_image=False,
            winograd="on",
            winograd_min_channels=16,
        ),
    )
    assert report.checkpoint.is_file() and report.winograd_convs >= 20
    return {
        "training-time": (config, trained, []),
        "training-time --fuse": (config, trained, ["--fuse"]),
        "fused": (config, fused, []),
        "deployed": (report.config, report.checkpoint, []),
    }


@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "photos"
    for seed, (name, height, width, mode) in enumerate(IMAGES):
        write_image(folder / name, height, width, mode, seed)
    return folder


def labels_of(out_dir: Path) -> dict[str, np.ndarray]:
    return {
        str(path.relative_to(out_dir / "labels")): np.asarray(Image.open(path))
        for path in sorted((out_dir / "labels").rglob("*.png"))
    }


def test_every_checkpoint_form_gives_the_same_labels_at_input_size(
    checkpoints, image_folder, tmp_path, capsys
):
    tool = load_tool("infer")
    results = {}
    for form, (config, checkpoint, flags) in checkpoints.items():
        out = tmp_path / form.replace(" ", "_")
        # Batches of 2 for one form: batching must not change a prediction either.
        batch = ["--batch-size", "2"] if form == "fused" else []
        argv = [str(config), str(checkpoint), str(image_folder), "--out-dir", str(out)]
        assert tool.main([*argv, "--save-labels", *flags, *batch]) == 0, form
        assert "segmented 5 images in" in capsys.readouterr().out
        results[form] = labels_of(out)
        for name, height, width, _ in IMAGES:
            overlay = Image.open(out / "overlays" / name.replace(".jpg", ".png"))
            assert (overlay.height, overlay.width, overlay.mode) == (height, width, "RGB")
    expected = results.pop("training-time")
    assert sorted(expected) == sorted(name.replace(".jpg", ".png") for name, *_ in IMAGES)
    for name, height, width, _ in IMAGES:
        labels = expected[name.replace(".jpg", ".png")]
        assert labels.shape == (height, width) and labels.dtype == np.uint8
    assert max(len(np.unique(labels)) for labels in expected.values()) > 1, "trivial labels"
    for form, labels in results.items():
        for name in expected:
            np.testing.assert_array_equal(labels[name], expected[name], err_msg=f"{form}: {name}")


def test_each_form_loads_as_what_it_is(checkpoints):
    def summary(form: str, **kwargs) -> tuple[int, int, int]:
        config, checkpoint, _ = checkpoints[form]
        model = load_inference_model(config, checkpoint, **kwargs)
        blocks = [m for m in model.modules() if isinstance(m, RepVGGBlock)]
        fused = sum(block.deploy for block in blocks)
        return len(blocks), fused, len(getattr(model, "winograd_convs", []))

    blocks, fused, winograd = summary("training-time")
    assert blocks == 22 and fused == 0 and winograd == 0  # RepVGG-A0: 1 + 2 + 4 + 14 + 1
    assert summary("training-time", fuse=True) == (22, 22, 0)
    assert summary("fused") == (22, 22, 0)
    blocks, fused, winograd = summary("deployed")
    assert (blocks, fused) == (22, 22) and winograd >= 20


def test_unreadable_files_are_reported_and_skipped(checkpoints, image_folder, tmp_path, capsys):
    (image_folder / "broken.png").write_bytes(b"this is not a PNG file")
    buffer = io.BytesIO()
    Image.fromarray(blobs(64, 64, 9)).save(buffer, format="JPEG")
    (image_folder / "nested" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    (image_folder / "notes.txt").write_text("not an image, not looked at")
    write_image(image_folder / ".hidden" / "skip.png", 16, 16, "RGB", 0)
    write_image(image_folder / "street.jpg", 24, 24, "RGB", 5)  # same stem as street.png
    config, checkpoint, _ = checkpoints["fused"]
    out = tmp_path / "out"
    argv = [str(config), str(checkpoint), str(image_folder), "--out-dir", str(out)]

    assert load_tool("infer").main(argv) == 1
    captured = capsys.readouterr()
    assert str(image_folder / "broken.png") in captured.err
    assert str(image_folder / "nested" / "truncated.jpg") in captured.err
    assert "segmented 6 images in" in captured.out and "2 failed" in captured.out
    written = sorted(str(p.relative_to(out / "overlays")) for p in out.rglob("*.png"))
    assert written == [
        "gray.png",
        "nested/street.png",
        "rgba.png",
        "street.jpg.png",
        "street.png.png",
        "wide.png",
    ]


def test_nothing_is_overwritten_without_the_flag(checkpoints, image_folder, tmp_path, capsys):
    config, checkpoint, _ = checkpoints["deployed"]
    out = tmp_path / "out"
    image = image_folder / "street.png"
    argv = [str(config), str(checkpoint), str(image), "--out-dir", str(out), "--save-labels"]
    tool = load_tool("infer")
    assert tool.main(argv) == 0
    overlay = out / "overlays" / "street.png"
    before = overlay.stat().st_mtime_ns
    status, err = tool_exit("infer", argv, capsys)
    assert status == 2 and "--overwrite" in one_error_line(err, "infer")
    assert overlay.stat().st_mtime_ns == before
    assert tool.main([*argv, "--overwrite"]) == 0
    results = [p.name for p in out.rglob("*") if p.is_file() and p.name != RECORD_NAME]
    assert sorted(results) == ["street.png", "street.png"]


def test_video_in_annotated_video_out(checkpoints, tmp_path, capsys):
    frames = [blobs(40, 56, seed) for seed in range(5)]
    video = tmp_path / "clips" / "drive.avi"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (56, 40))
    for frame in frames:
        writer.write(frame)
    writer.release()
    config, checkpoint, _ = checkpoints["deployed"]
    out = tmp_path / "out"
    argv = [str(config), str(checkpoint), str(video), "--out-dir", str(out), "--save-labels"]
    assert load_tool("infer").main([*argv, "--batch-size", "2"]) == 0
    assert "0 images and 5 frames of 1 videos" in capsys.readouterr().out

    capture = cv2.VideoCapture(str(out / "overlays" / "drive.mp4"))
    decoded = []
    while (frame := capture.read())[0]:
        decoded.append(frame[1])
    capture.release()
    assert [frame.shape for frame in decoded] == [(40, 56, 3)] * 5
    assert not hidden_files(out)  # the video's scratch folder is gone
    labels = sorted((out / "labels" / "drive").iterdir())
    assert [p.name for p in labels] == [f"{i:06d}.png" for i in range(5)]
    assert all(np.asarray(Image.open(p)).shape == (40, 56) for p in labels)


def test_bad_arguments_run_nothing(checkpoints, image_folder, tmp_path, capsys):
    config, checkpoint, _ = checkpoints["training-time"]
    missing = tmp_path / "no_such_photo.jpg"
    out = str(tmp_path / "out")
    status, err = tool_exit(
        "infer", [str(config), str(checkpoint), str(missing), "--out-dir", out], capsys
    )
    assert status == 2 and str(missing) in one_error_line(err, "infer")
    # A tools/deploy.py checkpoint with the training config: named, and the fix said.
    _, deployed, _ = checkpoints["deployed"]
    argv = [str(config), str(deployed), str(image_folder), "--out-dir", out]
    status, err = tool_exit("infer", argv, capsys)
    assert status == 2 and "_deploy.py config" in one_error_line(err, "infer")
    assert not (tmp_path / "out").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_same_labels_for_every_form(checkpoints, image_folder, tmp_path):
    tool = load_tool("infer")
    labels = {}
    for form in ("training-time", "deployed"):
        config, checkpoint, flags = checkpoints[form]
        for device in ("cpu", "cuda"):
            out = tmp_path / f"{form}_{device}".replace("-", "_")
            argv = [str(config), str(checkpoint), str(image_folder), "--out-dir", str(out)]
            argv += ["--device", device, "--save-labels", "--strict-float32", *flags]
            assert tool.main(argv) == 0, (form, device)
            labels[form, device] = labels_of(out)
    expected = labels["training-time", "cuda"]
    assert sorted(expected) == sorted(labels["training-time", "cpu"])
    for name, reference in expected.items():
        assert reference.shape == labels["training-time", "cpu"][name].shape
        np.testing.assert_array_equal(labels["deployed", "cuda"][name], reference, err_msg=name)
        # GPU and CPU sum in other orders: only near-ties may differ.
        assert (labels["training-time", "cpu"][name] != reference).mean() < 0.01, name


# ------------------------------------------------- issue 20: results never cost an input


def infer_argv(checkpoints, *inputs, out: Path, form: str = "fused") -> list[str]:
    config, checkpoint, flags = checkpoints[form]
    return [str(config), str(checkpoint), *map(str, inputs), "--out-dir", str(out), *flags]


def test_input_inside_the_results_is_never_replaced(checkpoints, tmp_path, capsys):
    out = tmp_path / "d"
    image = out / "overlays" / "a.png"
    write_image(image, 20, 30, "RGB", 0)
    before = image.read_bytes()
    for flags in ([], ["--overwrite"]):
        argv = infer_argv(checkpoints, image, out=out) + flags
        status, err = tool_exit("infer", argv, capsys)
        message = one_error_line(err, "infer")
        assert status == 2 and f"Input '{image}' would be replaced by the result" in message
        assert "exist already" not in message  # an input is no result
    assert image.read_bytes() == before


def test_results_of_all_inputs_are_distinct_before_anything_runs(checkpoints, tmp_path, capsys):
    folder = tmp_path / "in"
    write_image(folder / "clip" / "000000.png", 16, 16, "RGB", 0)
    (folder / "clip.mp4").write_bytes(b"")  # never opened: the clash is found first
    out = tmp_path / "out"
    status, err = tool_exit(
        "infer", infer_argv(checkpoints, folder, out=out) + ["--save-labels"], capsys
    )
    message = one_error_line(err, "infer")
    assert status == 2 and "would both write" in message
    assert str(out / "labels" / "clip") in message and not out.exists()


def test_results_inside_an_input_folder_are_not_inputs(checkpoints, image_folder, capsys):
    out = image_folder / "res"
    for flags in ([], ["--overwrite"]):  # the second run sees the first one's results
        assert load_tool("infer").main(infer_argv(checkpoints, image_folder, out=out) + flags) == 0
        assert "segmented 5 images" in capsys.readouterr().out
    assert len(list((out / "overlays").rglob("*.png"))) == 5
    status, err = tool_exit(
        "infer", infer_argv(checkpoints, image_folder, out=image_folder), capsys
    )
    message = one_error_line(err, "infer")
    assert status == 2 and f"--out-dir '{image_folder}' is the input folder" in message


@pytest.mark.parametrize("case", ["out-dir is a file", "read-only", "folder at a result"])
def test_unusable_out_dir_is_one_line(checkpoints, image_folder, tmp_path, capsys, case):
    image = image_folder / "street.png"
    out = tmp_path / "out"
    if case == "out-dir is a file":
        out.write_text("a file")
        expected = f"--out-dir '{out}': '{out}' is a file, not a folder"
    elif case == "read-only":
        out = Path("/sys/repvgg_seg_out")  # refused even to root
        expected = f"Cannot write into --out-dir '{out}'"
    else:
        (out / "overlays" / "street.png").mkdir(parents=True)
        expected = f"Result '{out / 'overlays' / 'street.png'}' is an existing folder"
    status, err = tool_exit("infer", infer_argv(checkpoints, image, out=out), capsys)
    assert status == 2 and one_error_line(err, "infer").startswith(expected)


def test_image_above_max_pixels_is_skipped_before_decoding(
    checkpoints, image_folder, tmp_path, capsys, monkeypatch
):
    decoded = []
    real_convert = Image.Image.convert
    monkeypatch.setattr(
        Image.Image,
        "convert",
        lambda im, *a, **k: decoded.append(im.size) or real_convert(im, *a, **k),
    )
    argv = infer_argv(checkpoints, image_folder, out=tmp_path / "out") + ["--max-pixels", "1500"]
    assert load_tool("infer").main(argv) == 1
    captured = capsys.readouterr()
    assert "segmented 2 images" in captured.out and "3 failed" in captured.out
    assert (
        f"{image_folder / 'wide.jpg'}: 90x20 pixels (0.0 MP) is above --max-pixels 1500"
        in captured.err
    )
    assert all(width * height <= 1500 for width, height in decoded)


def write_video(path: Path, frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (56, 40))
    for seed in range(frames):
        writer.write(blobs(40, 56, seed))
    writer.release()


def test_truncated_video_is_reported(checkpoints, tmp_path, capsys):
    video = tmp_path / "clips" / "drive.avi"
    write_video(video, 8)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # the header still declares 8 frames
    assert load_tool("infer").main(infer_argv(checkpoints, video, out=tmp_path / "out")) == 1
    captured = capsys.readouterr()
    decoded = int(re.search(r"and (\d+) frames of 1 videos", captured.out).group(1))
    assert 0 < decoded < 8
    assert f"{video}: decoded {decoded} of the 8 frames its container declares" in captured.err


def test_ctrl_c_says_what_was_finished(checkpoints, image_folder, tmp_path, capsys, monkeypatch):
    import repvgg_seg.inference.run as run

    calls = []
    real = run.predict_labels

    def interrupted_on_third(model, images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, images)

    monkeypatch.setattr(run, "predict_labels", interrupted_on_third)
    out = tmp_path / "out"
    status, err = tool_exit("infer", infer_argv(checkpoints, image_folder, out=out), capsys)
    assert status == 130 and err.strip().endswith("tools/infer.py: error: interrupted (Ctrl-C)")
    assert "Traceback" not in err
    assert len(list(out.rglob("*.png"))) == 2 and not hidden_files(out)


def hidden_files(out: Path) -> list[Path]:
    """Hidden files and folders under ``out`` but the folder's record of written files."""
    return [path for path in out.rglob(".*") if path.name != RECORD_NAME]


def test_killed_runs_leftovers_are_removed_and_a_live_run_is_not_disturbed(
    checkpoints, image_folder, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = infer_argv(checkpoints, image_folder, out=out)
    with WorkDirLock(out, INFER_LOCK):
        status, err = tool_exit("infer", argv, capsys)
        assert status == 2 and "is in use by another tools/infer.py run" in one_error_line(
            err, "infer"
        )
    # A run killed with -9: its lock names its marker, which its temporaries carry.
    marker = "0badc0de"
    record = {"pid": 2**22 + 1, "host": "h", "started": "t", "marker": marker}
    (out / INFER_LOCK.file_name).write_text(json.dumps(record))
    leftover = out / "overlays" / "nested" / f".street.png.{marker}.k2j4_x9a.part"
    scratch = out / "overlays" / f".clip.mp4.{marker}.q7_3kz0e.scratch"  # a video being encoded
    users = out / "overlays" / ".notes.k2j4_x9a.part"  # shaped like one, but no marker: kept
    for path in (leftover, scratch / "video.mp4", users):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 100)
    assert load_tool("infer").main(argv + ["--overwrite"]) == 0
    err = capsys.readouterr().err
    assert f"removed {leftover}" in err and not leftover.exists()
    assert f"removed {scratch}" in err and not scratch.exists()
    assert users.exists()


def test_images_per_second_counts_only_segmented_images():
    stream = io.StringIO()
    progress = Progress(total=4, stream=stream)
    progress.start -= 2.0  # two seconds in
    progress.update(3, segmented=False)
    progress.update(1)
    progress.close()
    assert "4/4" in stream.getvalue() and " 0.50 images/s" in stream.getvalue()


# --------------------------------------------------------------------------- units


def test_read_image_respects_exif_and_converts_modes(tmp_path):
    rgb = blobs(24, 40, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored sideways, shown rotated 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    assert read_image(tmp_path / "sideways.jpg").shape == (40, 24, 3)

    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "gray.png")
    gray = read_image(tmp_path / "gray.png")
    assert gray.shape == (24, 40, 3) and (gray == rgb[:, :, :1]).all()

    deep = (rgb[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "gray16.png")
    assert (read_image(tmp_path / "gray16.png") == rgb[:, :, :1]).all()

    rgba = np.dstack([rgb, np.full((24, 40), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert (read_image(tmp_path / "rgba.png") == rgb).all()


def test_outputs_mirror_folders_and_never_collide(tmp_path):
    for name in ("a/x.png", "b/x.png", "a/deep/x.png", "a/y.jpg", "a/y.png", "clip.mp4"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"")
    out = tmp_path / "in" / "results"  # inside an input folder: its files are not inputs
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "old.png").write_bytes(b"")
    sources = find_sources(
        [tmp_path / "in" / "a", tmp_path / "in" / "b", tmp_path / "in"], out, True
    )
    mapping = {str(s.path.relative_to(tmp_path / "in")): s for s in sources}
    assert sorted(mapping) == [
        "a/deep/x.png",
        "a/x.png",
        "a/y.jpg",
        "a/y.png",
        "b/x.png",
        "clip.mp4",
    ]
    assert mapping["a/x.png"].overlay == out / "overlays" / "a" / "x.png"
    assert mapping["b/x.png"].labels == out / "labels" / "b" / "x.png"
    assert mapping["a/y.jpg"].overlay == out / "overlays" / "a" / "y.jpg.png"
    assert mapping["clip.mp4"].is_video and mapping["clip.mp4"].labels == out / "labels" / "clip"


def test_overlay_blends_colours_and_lists_present_classes():
    palette = Palette.from_dataset("cityscapes")
    image = np.full((200, 300, 3), 100, np.uint8)
    labels = np.zeros((200, 300), np.uint8)
    labels[:, 100:] = 13  # car: two thirds of the image
    assert [label for label, _ in legend_entries(labels, 19)] == [13, 0]
    opaque = draw_overlay(image, labels, palette, opacity=1.0)
    np.testing.assert_array_equal(
        opaque[150:, 250:], np.broadcast_to(palette.colors[13], (50, 50, 3))
    )
    np.testing.assert_array_equal(
        opaque[150:, :50], np.broadcast_to(palette.colors[0], (50, 50, 3))
    )
    clear = draw_overlay(image, labels, palette, opacity=0.0)
    np.testing.assert_array_equal(clear[100:], image[100:])
    assert (clear[:20, :20] != 100).any(), "no legend drawn in the top-left corner"


def test_odd_images_are_reported_and_the_rest_still_run(checkpoints, tmp_path, capsys):
    """A 5000x1 PNG aborted the run with a cv2 traceback (later images never ran, no
    summary); a 32-bit float TIFF was segmented as an all-black image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((1, 5000, 3), 99, np.uint8)).save(folder / "a_thin.png")
    Image.fromarray(np.full((3000, 1), 99, np.uint8)).save(folder / "b_tall.png")
    floats = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    Image.fromarray(floats, mode="F").save(folder / "c_float.tif")
    write_image(folder / "d_street.png", 30, 40, "RGB", 0)
    out = tmp_path / "out"
    status, err = tool_exit("infer", infer_argv(checkpoints, folder, out=out), capsys)
    assert status == 1
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 3, err
    assert f"{folder / 'a_thin.png'}: 5000x1 pixels is more than 100 times" in failed[0]
    assert f"{folder / 'b_tall.png'}: 1x3000 pixels" in failed[1]
    assert f"{folder / 'c_float.tif'}: a 32-bit floating-point image" in failed[2]
    assert [p.name for p in (out / "overlays").iterdir()] == ["d_street.png"]


def test_links_that_lead_nowhere(checkpoints, image_folder, tmp_path, capsys):
    """Skipped without a word inside a folder; a traceback (RuntimeError from resolving a
    loop) when named directly."""
    (image_folder / "gone.png").symlink_to(tmp_path / "deleted.png")
    (image_folder / "loop.png").symlink_to(image_folder / "loop.png")
    out = tmp_path / "out"
    assert load_tool("infer").main(infer_argv(checkpoints, image_folder, out=out)) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "symbolic link" in line]
    assert len(notes) == 1 and notes[0].startswith("skipped 2 symbolic link(s)")
    for link in ("loop.png", "gone.png"):
        argv = infer_argv(checkpoints, image_folder / link, out=tmp_path / "out2")
        status, err = tool_exit("infer", argv, capsys)
        assert status == 2 and "symbolic link that leads nowhere" in one_error_line(err, "infer")
