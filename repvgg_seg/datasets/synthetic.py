"""A synthetic Cityscapes: street scenes drawn from a seed, in the real layout and file names.

Used by the demo and the tests, never in place of real data: it is written to its own root
(``data/synthetic_cityscapes`` in ``configs/pspnet_repvgg_a0_synthetic.py``), and that root is
marked with ``synthetic_cityscapes.json`` so that it can never be mistaken for, or written over,
a real Cityscapes copy.

Every scene is a street seen from a car: sky above a horizon, buildings (window grids) and
trees (leafy noise) along it, a road (fine grain, dashed lane marks) narrowing towards the
horizon, sidewalks (tiles) and terrain (grass) beside it, cars on the road, people on the
sidewalks and, in some images, the ego vehicle's bonnet (label id 1, ignored like in
Cityscapes). Position, colour and texture are tied to the class, with per-instance colour
jitter, lighting changes and pixel noise, so the classes are learnable but not trivial: a few
minutes of CPU training reach an mIoU far above an untrained model's.

Layout written (the real Cityscapes one)::

    root/
      leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png
      gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelIds.png
      gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelTrainIds.png
      synthetic_cityscapes.json
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from ..errors import UsageError
from .labels import label_id, label_ids_to_train_ids

logger = logging.getLogger(__name__)

MARKER = "synthetic_cityscapes.json"
CITIES = {"train": ("aachen", "bochum", "bremen"), "val": ("frankfurt", "lindau")}
# Base colours (RGB) near Cityscapes' own palette, so predictions look familiar.
COLOURS = {
    "sky": (110, 160, 210),
    "building": (95, 90, 85),
    "vegetation": (80, 130, 40),
    "terrain": (150, 200, 110),
    "road": (110, 80, 115),
    "sidewalk": (200, 120, 190),
    "car": (30, 40, 130),
    "person": (200, 40, 60),
    "ego vehicle": (25, 25, 25),
}


def make_synthetic_cityscapes(
    root: str | Path,
    num_train: int = 60,
    num_val: int = 12,
    image_size: tuple[int, int] = (256, 128),
    seed: int = 0,
) -> Path:
    """Writes a synthetic Cityscapes under ``root`` (deterministic from ``seed``).

    Calling it again with the same arguments is a no-op; with other arguments it rewrites
    the data. It refuses to write into a non-empty directory that it did not create.

    Args:
        root: Output directory (e.g. ``data/synthetic_cityscapes``).
        num_train: Images in ``train``.
        num_val: Images in ``val``.
        image_size: ``(width, height)`` of every image (Cityscapes: 2048 x 1024).
        seed: Random seed; the same seed gives byte-identical files.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: Images smaller than 32 x 32 pixels, or no image in a split.
        NotADirectoryError: ``root`` is a file.
        FileExistsError: ``root`` is a non-empty folder that this function did not write.
    """
    width, height = (int(v) for v in image_size)
    if width < 32 or height < 32:
        raise UsageError(f"image_size must be at least (32, 32) pixels, got {image_size}.")
    if num_train < 1 or num_val < 1:
        raise UsageError(
            f"num_train and num_val must be at least 1, got {num_train} and {num_val}."
        )
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root} is a file; pass a folder for the synthetic data.")
    params = {"num_train": num_train, "num_val": num_val, "image_size": [width, height]}
    params["seed"] = seed
    marker = root / MARKER
    if marker.is_file():
        if _recorded(marker) == params:
            logger.info("Synthetic Cityscapes in %s is already up to date.", root)
            return root
        for sub in ("leftImg8bit", "gtFine"):
            shutil.rmtree(root / sub, ignore_errors=True)
        marker.unlink()
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} is not empty and was not made by make_synthetic_cityscapes (no {MARKER}); "
            "refusing to write synthetic images into it. Choose an empty or new folder."
        )

    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        cities = CITIES[split]
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            image, label_ids = draw_scene(rng, width, height)
            city = cities[index % len(cities)]
            stem = f"{city}_{index:06d}_000019"
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            _write_png(image_dir / f"{stem}_leftImg8bit.png", image[..., ::-1])
            _write_png(label_dir / f"{stem}_gtFine_labelIds.png", label_ids)
            _write_png(
                label_dir / f"{stem}_gtFine_labelTrainIds.png", label_ids_to_train_ids(label_ids)
            )
    # Written last: a root with the marker is complete.
    marker.write_text(json.dumps(params))
    logger.info(
        "Wrote synthetic Cityscapes (%d train, %d val, %dx%d) to %s.",
        num_train,
        num_val,
        width,
        height,
        root,
    )
    return root


def _recorded(marker: Path) -> dict | None:
    """The parameters a marker records (None when it cannot be read: the data is rewritten)."""
    try:
        return json.loads(marker.read_text())
    except ValueError:
        return None


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
        raise OSError(f"Could not write {path}.")


class _Canvas:
    """An RGB image and its label-id map, painted together region by region."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.rng = rng
        self.width, self.height = width, height
        self.image = np.zeros((height, width, 3), np.float32)
        self.label_ids = np.zeros((height, width), np.uint8)
        self.ys, self.xs = np.mgrid[0:height, 0:width].astype(np.float32)

    def paint(self, mask: np.ndarray, name: str, texture: np.ndarray | float = 1.0) -> None:
        """Paints ``mask`` with the class colour (jittered per call) times ``texture``."""
        colour = np.asarray(COLOURS[name], np.float32) * self.rng.uniform(0.8, 1.2, 3)
        shade = texture[mask] if isinstance(texture, np.ndarray) else texture
        self.image[mask] = colour * np.reshape(shade, (-1, 1))
        self.label_ids[mask] = label_id(name)

    def smooth_noise(self, cells: int, amplitude: float) -> np.ndarray:
        """Low-frequency noise around 1: a coarse random grid, upsampled."""
        grid = self.rng.normal(0, amplitude, (cells, cells * 2)).astype(np.float32)
        return 1 + cv2.resize(grid, (self.width, self.height), interpolation=cv2.INTER_CUBIC)

    def grain(self, amplitude: float) -> np.ndarray:
        """Pixel-level noise around 1."""
        return 1 + self.rng.normal(0, amplitude, (self.height, self.width)).astype(np.float32)

    def mask_of(self, draw: Callable[[np.ndarray], None]) -> np.ndarray:
        """The boolean mask of a shape drawn by ``draw(uint8_image)`` with cv2."""
        target = np.zeros((self.height, self.width), np.uint8)
        draw(target)
        return target.astype(bool)


def draw_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Draws one street scene.

    Returns:
        ``(image, label_ids)``: an RGB uint8 image and its Cityscapes label ids (uint8).
    """
    canvas = _Canvas(rng, width, height)
    ys, xs = canvas.ys, canvas.xs
    horizon = rng.uniform(0.38, 0.5) * height
    vanish_x = rng.uniform(0.35, 0.65) * width

    sky = ys < horizon + 1
    canvas.paint(sky, "sky", (1.25 - 0.35 * ys / horizon) * canvas.smooth_noise(3, 0.05))

    _draw_skyline(canvas, horizon)

    ground = ys >= horizon
    canvas.paint(ground, "terrain", canvas.grain(0.18) * canvas.smooth_noise(6, 0.1))
    # Road and sidewalks are trapezoids meeting at the vanishing point on the horizon.
    depth = np.clip((ys - horizon) / (height - horizon), 0, 1)
    road_half = depth * rng.uniform(0.3, 0.45) * width
    walk_half = road_half * rng.uniform(1.35, 1.7)
    offset = np.abs(xs - vanish_x)
    sidewalk = ground & (offset < walk_half)
    tiles = ((xs // 6 + ys // 4) % 2) * 0.08 + 0.96
    canvas.paint(sidewalk, "sidewalk", tiles * canvas.grain(0.05))
    road = ground & (offset < road_half)
    canvas.paint(road, "road", canvas.grain(0.12))
    # Lane marks are part of the road class, as in Cityscapes.
    marks = road & (offset < 0.02 * width * depth + 0.5) & ((ys // 5) % 2 == 0)
    canvas.image[marks] = 225
    for _ in range(rng.integers(0, 4)):
        _draw_car(canvas, horizon, vanish_x, road_half)
    for _ in range(rng.integers(0, 4)):
        _draw_person(canvas, horizon, vanish_x, road_half, walk_half)
    if rng.random() < 0.5:
        bonnet = canvas.mask_of(
            lambda m: cv2.ellipse(
                m,
                (int(width / 2), int(height * 1.12)),
                (int(width * 0.6), int(height * 0.2)),
                0,
                0,
                360,
                1,
                -1,
            )
        )
        canvas.paint(bonnet, "ego vehicle", canvas.smooth_noise(2, 0.1))

    lighting = rng.uniform(0.75, 1.2)
    image = canvas.image * lighting + rng.normal(0, 6, canvas.image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), canvas.label_ids


def _draw_skyline(canvas: _Canvas, horizon: float) -> None:
    """Buildings with window grids and trees with leafy texture, side by side."""
    rng, width, height = canvas.rng, canvas.width, canvas.height
    x = -rng.uniform(0, 0.1) * width
    while x < width:
        span = rng.uniform(0.12, 0.3) * width
        x0, x1 = int(x), int(x + span)
        if rng.random() < 0.65:
            top = int(horizon - rng.uniform(0.15, 0.38) * height)
            box = canvas.mask_of(
                lambda m, x0=x0, x1=x1, top=top: cv2.rectangle(
                    m, (x0, top), (x1, int(horizon) + 1), 1, -1
                )
            )
            period = int(rng.integers(5, 9))
            windows = ((canvas.xs - x0) % period < period / 2) & (
                (canvas.ys - top) % period < period / 2
            )
            canvas.paint(box, "building", np.where(windows, 0.55, 1.0) * canvas.grain(0.04))
        else:
            centre = (int((x0 + x1) / 2), int(horizon - rng.uniform(0.05, 0.15) * height))
            axes = (max(2, int(span / 2)), max(2, int(rng.uniform(0.12, 0.25) * height)))
            crown = canvas.mask_of(
                lambda m, c=centre, a=axes: cv2.ellipse(m, c, a, 0, 0, 360, 1, -1)
            )
            canvas.paint(crown, "vegetation", canvas.grain(0.3) * canvas.smooth_noise(8, 0.15))
        x += span


def _draw_car(canvas: _Canvas, horizon: float, vanish_x: float, road_half: np.ndarray) -> None:
    rng, height = canvas.rng, canvas.height
    y = int(rng.uniform(horizon + 0.15 * (height - horizon), height * 0.95))
    half_road = float(road_half[y, 0])
    size = (y - horizon) / (height - horizon)
    car_w, car_h = 0.45 * half_road, 0.22 * half_road
    cx = vanish_x + rng.uniform(-0.6, 0.6) * half_road
    x0, x1 = int(cx - car_w / 2), int(cx + car_w / 2)
    body = canvas.mask_of(lambda m: cv2.rectangle(m, (x0, int(y - car_h)), (x1, y), 1, -1))
    windows = (canvas.ys < y - 0.6 * car_h) & (np.abs(canvas.xs - cx) < car_w * 0.35)
    canvas.paint(body, "car", np.where(windows, 0.45, 1.0) * canvas.grain(0.05 + 0.05 * size))


def _draw_person(
    canvas: _Canvas,
    horizon: float,
    vanish_x: float,
    road_half: np.ndarray,
    walk_half: np.ndarray,
) -> None:
    rng, height = canvas.rng, canvas.height
    y = int(rng.uniform(horizon + 0.2 * (height - horizon), height * 0.95))
    side = rng.choice((-1.0, 1.0))
    inner, outer = float(road_half[y, 0]), float(walk_half[y, 0])
    cx = int(vanish_x + side * rng.uniform(inner, max(inner + 1, outer)))
    tall = max(6, int(0.9 * (y - horizon)))
    body_w = max(2, tall // 6)
    body = canvas.mask_of(
        lambda m: cv2.ellipse(m, (cx, y - tall // 2), (body_w, tall // 2), 0, 0, 360, 1, -1)
    )
    head = canvas.mask_of(lambda m: cv2.circle(m, (cx, y - tall), max(1, body_w), 1, -1))
    canvas.paint(body | head, "person", canvas.grain(0.1))
