"""What to segment: the images and videos named by the user, where each result goes, and
reading an image as a viewer shows it.

Inputs are files or folders (searched recursively for :data:`IMAGE_EXTENSIONS` and
:data:`VIDEO_EXTENSIONS`). Results mirror the inputs' folders below the deepest folder they
share, so two inputs with the same file name in different folders never collide::

    OUT/overlays/<relative folder>/<stem>.png   (a video: <stem>.mp4)
    OUT/labels/<relative folder>/<stem>.png     (a video: <stem>/000000.png, one per frame)

Two inputs in one folder with the same stem (``a.jpg``, ``a.png``) keep their whole file
name instead (``a.jpg.png``, ``a.png.png``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
OVERLAY_DIR = "overlays"
LABEL_DIR = "labels"
VIDEO_SUFFIX = ".mp4"


class UnreadableInputError(ValueError):
    """An image or video could not be decoded; the message names the file."""


@dataclass(frozen=True)
class Source:
    """One input file and the paths of its results.

    Attributes:
        path: The image or video.
        is_video: Decoded frame by frame with OpenCV (by its extension).
        overlay: The overlay image, or the annotated video.
        labels: The train-id label PNG (for a video: the folder of per-frame PNGs), or None
            when labels are not saved.
    """

    path: Path
    is_video: bool
    overlay: Path
    labels: Path | None


def find_sources(
    inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, save_labels: bool
) -> list[Source]:
    """Lists the images and videos of ``inputs`` with their output paths.

    A file named directly is used whatever its extension (a video if it has a video
    extension, else an image); folders contribute their image and video files, recursively,
    skipping hidden files and folders and anything inside ``out_dir``. A file reached twice
    is used once.

    Raises:
        FileNotFoundError: An input does not exist.
        ValueError: Nothing to segment was found, or two inputs would write the same file.
    """
    out_dir = Path(os.path.abspath(out_dir))
    found: dict[Path, tuple[Path, Path]] = {}  # resolved file -> (file, the folder it is under)
    for raw in inputs:
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            files = [(file, path) for file in _media_files(path, out_dir)]
        elif path.is_file():
            files = [(path, path.parent)]
        else:
            raise FileNotFoundError(f"Input {str(raw)!r} does not exist (no such file or folder).")
        for file, anchor in files:
            found.setdefault(file.resolve(), (file, anchor))
    if not found:
        raise ValueError(
            f"No images or videos found in {', '.join(map(repr, map(str, inputs)))} (looked "
            f"for {', '.join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))})."
        )
    root = Path(os.path.commonpath([anchor for _, anchor in found.values()]))
    relative = [file.relative_to(root) for file, _ in found.values()]
    stems = Counter((rel.parent, rel.stem) for rel in relative)
    sources = []
    for (file, _), rel in zip(found.values(), relative):
        name = rel.stem if stems[rel.parent, rel.stem] == 1 else rel.name
        is_video = file.suffix.lower() in VIDEO_EXTENSIONS
        overlay = (
            out_dir / OVERLAY_DIR / rel.parent / (name + (VIDEO_SUFFIX if is_video else ".png"))
        )
        labels = None
        if save_labels:
            labels = out_dir / LABEL_DIR / rel.parent / (name if is_video else name + ".png")
        sources.append(Source(file, is_video, overlay, labels))
    _check_unique(sources)
    return sources


def _media_files(folder: Path, out_dir: Path) -> list[Path]:
    files = []
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or out_dir in file.parents:
            continue
        if file.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS and file.is_file():
            files.append(file)
    return files


def _check_unique(sources: Iterable[Source]) -> None:
    owners: dict[Path, Path] = {}
    for source in sources:
        for output in (source.overlay, source.labels):
            if output is None:
                continue
            other = owners.setdefault(output, source.path)
            if other != source.path:
                raise ValueError(
                    f"Inputs {str(other)!r} and {str(source.path)!r} would both write "
                    f"{str(output)!r}; rename one of them or segment them in two runs."
                )


def existing_outputs(sources: Iterable[Source]) -> list[Path]:
    """The output files (and non-empty per-frame label folders) that exist already."""
    existing = []
    for source in sources:
        if source.overlay.exists():
            existing.append(source.overlay)
        labels = source.labels
        if labels is not None and (labels.is_file() or (labels.is_dir() and any(labels.iterdir()))):
            existing.append(labels)
    return existing


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image as a viewer shows it: an ``H x W x 3`` uint8 RGB array.

    The EXIF orientation is applied (a portrait photo stored sideways comes out upright);
    grayscale becomes three equal channels (16-bit grayscale is scaled to 8 bits); palette,
    CMYK and other modes are converted to RGB; an alpha channel is dropped (the colours are
    segmented as stored). Only the first frame of a multi-frame file is read.

    Raises:
        UnreadableInputError: The file is not an image Pillow can decode, or is truncated.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                gray = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
                gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # Pillow reports unknown formats as OSError, truncated data as OSError or
        # SyntaxError ("broken PNG file") and huge images as DecompressionBombError.
        raise UnreadableInputError(f"{os.fspath(path)}: not a readable image ({error}).") from None
