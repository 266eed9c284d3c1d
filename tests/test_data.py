"""Synthetic Cityscapes, label conversion and the errors users get for bad data."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

from repvgg_seg.datasets import (
    CityscapesDataError,
    label_ids_to_train_ids,
    make_synthetic_cityscapes,
)
from repvgg_seg.datasets.labels import convert_label_ids_file, find_label_id_files

from helpers import load_tool, one_error_line, tool_exit

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^(leftImg8bit|gtFine)/(train|val)/([a-z]+)/\3_\d{6}_\d{6}_(\w+)\.png$")


def make(root: Path, seed: int = 0) -> Path:
    return make_synthetic_cityscapes(root, num_train=4, num_val=2, image_size=(128, 64), seed=seed)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def build_dataset(root: Path, split: str = "train", test_mode: bool = False):
    init_default_scope("mmseg")
    return DATASETS.build(
        dict(
            type="CheckedCityscapesDataset",
            data_root=str(root),
            data_prefix=dict(img_path=f"leftImg8bit/{split}", seg_map_path=f"gtFine/{split}"),
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")],
            test_mode=test_mode,
        )
    )


@pytest.fixture
def synthetic(tmp_path) -> Path:
    return make(tmp_path / "cityscapes")


def test_synthetic_layout_and_names_are_cityscapes(synthetic):
    files = [str(p.relative_to(synthetic)) for p in synthetic.rglob("*.png")]
    assert len(files) == 6 * 3
    suffixes = set()
    for name in files:
        match = NAME.match(name)
        assert match, name
        suffixes.add(match.group(4))
    assert suffixes == {"leftImg8bit", "gtFine_labelIds", "gtFine_labelTrainIds"}
    assert len(build_dataset(synthetic, "train")) == 4
    assert len(build_dataset(synthetic, "val")) == 2


def test_synthetic_is_deterministic_per_seed(tmp_path, synthetic):
    again = digests(make(tmp_path / "again"))
    assert again == digests(synthetic)
    other = digests(make(tmp_path / "other", seed=1))
    assert other.keys() == again.keys() and other != again


def test_synthetic_labels_cover_the_scene_classes(synthetic):
    train_ids, label_ids = [], []
    for path in synthetic.rglob("*_labelTrainIds.png"):
        train_ids.append(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        label_ids.append(cv2.imread(str(path).replace("TrainIds", "Ids"), cv2.IMREAD_UNCHANGED))
    train_ids, label_ids = np.stack(train_ids), np.stack(label_ids)
    np.testing.assert_array_equal(train_ids, label_ids_to_train_ids(label_ids))
    # road, sidewalk, building, vegetation, terrain, sky always appear in 6 scenes.
    assert {0, 1, 2, 8, 9, 10} <= set(np.unique(train_ids).tolist())
    assert set(np.unique(train_ids).tolist()) <= set(range(19)) | {255}


def test_label_table_comes_from_cityscapesscripts():
    ids = np.arange(34, dtype=np.uint8)
    converted = label_ids_to_train_ids(ids)
    for label in cityscapes_labels:
        if 0 <= label.id < 34:
            expected = label.trainId if 0 <= label.trainId < 255 else 255
            assert converted[label.id] == expected, label.name
    assert sorted(set(converted.tolist()) - {255}) == list(range(19))


def test_prepare_cityscapes_recreates_train_ids(synthetic):
    originals = {p: p.read_bytes() for p in synthetic.rglob("*_labelTrainIds.png")}
    for path in originals:
        path.unlink()
    sources = find_label_id_files(str(synthetic / "gtFine"))
    assert len(sources) == 6
    for source in sources:
        convert_label_ids_file(source)
    for path, data in originals.items():
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), decoded)


def test_generator_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "leftImg8bit").mkdir()
    with pytest.raises(FileExistsError, match="not made by make_synthetic_cityscapes"):
        make(tmp_path / "real")


def test_missing_data_root(tmp_path):
    with pytest.raises(CityscapesDataError, match=r"data root '.*nowhere' does not exist") as e:
        build_dataset(tmp_path / "nowhere")
    assert "data/README.md" in str(e.value)


def test_split_without_images(synthetic):
    for image in (synthetic / "leftImg8bit" / "val").rglob("*.png"):
        image.unlink()
    with pytest.raises(CityscapesDataError, match=r"No '\*_leftImg8bit.png' images .*val"):
        build_dataset(synthetic, "val")


def test_image_without_label(synthetic):
    label = next((synthetic / "gtFine" / "train").rglob("*_labelTrainIds.png"))
    label.unlink()
    image = (
        str(label).replace("_gtFine_labelTrainIds", "_leftImg8bit").replace("gtFine", "leftImg8bit")
    )
    with pytest.raises(CityscapesDataError, match="1 of 4 images .* have no") as e:
        build_dataset(synthetic, "train")
    assert image in str(e.value) and "tools/prepare_cityscapes.py" in str(e.value)


def test_label_without_image(synthetic):
    image = next((synthetic / "leftImg8bit" / "train").rglob("*.png"))
    image.unlink()
    with pytest.raises(CityscapesDataError, match="1 labels .* have no") as e:
        build_dataset(synthetic, "train")
    assert Path(image).name.replace("_leftImg8bit", "_gtFine_labelTrainIds") in str(e.value)


@pytest.mark.parametrize("test_mode", [False, True])
def test_unreadable_image(synthetic, test_mode):
    dataset = build_dataset(synthetic, "val", test_mode=test_mode)
    path = Path(dataset.get_data_info(1)["img_path"])
    path.write_bytes(path.read_bytes()[:100])  # a truncated download
    assert dataset[0]["img"].shape == (64, 128, 3)
    with pytest.raises(CityscapesDataError, match="Cannot read img_path") as e:
        dataset[1]
    assert str(path) in str(e.value) and "data/README.md" in str(e.value)


def test_missing_label_folder(synthetic):
    shutil.rmtree(synthetic / "gtFine" / "val")
    with pytest.raises(CityscapesDataError, match="label folder .* does not exist"):
        build_dataset(synthetic, "val")


# --- the tools' refusals (issue 20 item 16): one line, exit 2, nothing written ---------------


@pytest.mark.parametrize(
    "case, expected",
    [
        ("root is a file", "is a file; pass a folder"),
        ("foreign folder", "is not empty and was not made by make_synthetic_cityscapes"),
        ("tiny images", "image_size must be at least (32, 32) pixels"),
        ("no val images", "num_train and num_val must be at least 1"),
    ],
)
def test_make_synthetic_cityscapes_refusals_are_one_line(tmp_path, capsys, case, expected):
    root = tmp_path / "root"
    argv = [str(root), "--num-train", "2", "--num-val", "1", "--size", "64", "32"]
    if case == "root is a file":
        root.write_text("x")
    elif case == "foreign folder":
        root.mkdir()
        (root / "mine.txt").write_text("x")
    elif case == "tiny images":
        argv[-2:] = ["16", "16"]
    else:
        argv[4] = "0"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status, err = tool_exit("make_synthetic_cityscapes", argv, capsys)
    assert status == 2 and expected in one_error_line(err, "make_synthetic_cityscapes")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_prepare_cityscapes_names_a_corrupt_label_file(synthetic, capsys):
    sources = find_label_id_files(str(synthetic / "gtFine"))
    broken = sources[1]
    Path(broken).write_bytes(Path(broken).read_bytes()[:60])  # cut inside the image data
    for workers in ("1", "2"):
        status, err = tool_exit("prepare_cityscapes", [str(synthetic), "--nproc", workers], capsys)
        message = one_error_line(err, "prepare_cityscapes")
        assert status == 2
        assert message.startswith(f"'{broken}' cannot be decoded as an image (truncated")


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
    source = sorted((synthetic / "gtFine" / "val").rglob("*_labelIds.png"))[0]
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
