"""What to segment: the images and videos named by the user, where each result goes, and
reading an image as a viewer shows it.

Inputs are files or folders (searched recursively for :data:`IMAGE_EXTENSIONS` and
:data:`VIDEO_EXTENSIONS`). Results mirror the inputs' folders below the deepest folder they
share, so two inputs with the same file name in different folders never collide::

    OUT/overlays/<relative folder>/<stem>.png   (a video: <stem>.mp4)
    OUT/labels/<relative folder>/<stem>.png     (a video: <stem>/000000.png, one per frame)

Two inputs in one folder with the same stem (``a.jpg``, ``a.png``) keep their whole file
name instead (``a.jpg.png``, ``a.png.png``). Before anything runs, :func:`find_sources`
checks that the results of all inputs are distinct paths (a video's label folder included),
that no result is an input, and that the result folders can hold them; the result folders
of ``OUT`` are never searched for inputs.

An image is decoded only when its header's size is within a pixel budget
(:func:`read_image`'s ``max_pixels``), which bounds the memory that one image takes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..dir_lock import check_out_dir

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
OVERLAY_DIR = "overlays"
LABEL_DIR = "labels"
VIDEO_SUFFIX = ".mp4"
# The default pixel budget of one image (6000 x 6000, a 36 MP photo): with the logits of 19
# classes resized to the image's size, about 4 GB (docs/guarantees.md has the measurement).
DEFAULT_MAX_PIXELS = 36_000_000


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

    def results(self) -> list[tuple[Path, bool]]:
        """``(path, is_folder)`` of every result: a video's labels are a folder of frames."""
        results = [(self.overlay, False)]
        if self.labels is not None:
            results.append((self.labels, self.is_video))
        return results


def find_sources(
    inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, save_labels: bool
) -> list[Source]:
    """Lists the images and videos of ``inputs`` with their output paths.

    A file named directly is used whatever its extension (a video if it has a video
    extension, else an image); folders contribute their image and video files, recursively,
    skipping hidden files and folders and the result folders of ``out_dir``. A file reached
    twice is used once.

    Raises:
        FileNotFoundError: An input does not exist.
        NotADirectoryError: ``out_dir``, or a folder a result goes into, is a file.
        IsADirectoryError: A result file's path is a folder.
        ValueError: Nothing to segment was found; ``out_dir`` is an input folder; two inputs
            would write the same result; a result would replace an input.
    """
    out_dir = Path(os.path.abspath(out_dir))
    result_roots = _check_out_dir_and_inputs(out_dir, inputs)
    found: dict[Path, tuple[Path, Path]] = {}  # resolved file -> (file, the folder it is under)
    for raw in inputs:
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            files = [(file, path) for file in _media_files(path, result_roots)]
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
    _check_results(sources, out_dir)
    return sources


def _check_out_dir_and_inputs(
    out_dir: Path, inputs: Sequence[str | os.PathLike]
) -> tuple[Path, ...]:
    """Refuses an ``out_dir`` that cannot hold results or is an input folder; returns its
    result folders (resolved)."""
    check_out_dir(out_dir, "--out-dir")
    roots = tuple(out_dir.resolve() / name for name in (OVERLAY_DIR, LABEL_DIR))
    for raw in inputs:
        folder = Path(raw).resolve()
        if not folder.is_dir():
            continue
        if folder == out_dir.resolve():
            raise ValueError(
                f"--out-dir {str(out_dir)!r} is the input folder {str(raw)!r}: its results "
                "would be mixed with the inputs. Pass another --out-dir (a new folder inside "
                "the input folder is fine: results are never taken as inputs)."
            )
        if any(folder == root or root in folder.parents for root in roots):
            raise ValueError(
                f"Input folder {str(raw)!r} is inside the results of --out-dir "
                f"{str(out_dir)!r}; results are not segmented again. Pass the images "
                "themselves, or another --out-dir."
            )
    return roots


def _media_files(folder: Path, result_roots: tuple[Path, ...]) -> list[Path]:
    files = []
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if file.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS and file.is_file():
            resolved = file.resolve()
            if not any(root in resolved.parents for root in result_roots):
                files.append(file)
    return files


def _check_results(sources: list[Source], out_dir: Path) -> None:
    """Refuses results that collide (with each other, with an input, with what exists)."""
    owners: dict[Path, tuple[Source, bool]] = {}
    for source in sources:
        for result, is_folder in source.results():
            other = owners.setdefault(result, (source, is_folder))[0]
            if other is not source:
                raise _collision(other, source, result)
    for result, (source, _) in owners.items():
        # A result inside another input's result folder (a video's labels/clip/).
        for folder in result.parents:
            if folder == out_dir:
                break
            owner = owners.get(folder)
            if owner is not None and owner[0] is not source:
                raise _collision(owner[0], source, result)
    by_real_path = {result.resolve(): result for result in owners}
    for source in sources:
        real = source.path.resolve()
        for place in (real, *real.parents):
            if place in by_real_path:
                raise ValueError(
                    f"Input {str(source.path)!r} would be replaced by the result "
                    f"{str(by_real_path[place])!r}; results never replace inputs. Pass "
                    "another --out-dir."
                )
    for result, (_, is_folder) in owners.items():
        _check_place(result, is_folder, out_dir)


def _collision(first: Source, second: Source, result: Path) -> ValueError:
    return ValueError(
        f"Inputs {str(first.path)!r} and {str(second.path)!r} would both write "
        f"{str(result)!r}; rename one of them or segment them in two runs."
    )


def _check_place(result: Path, is_folder: bool, out_dir: Path) -> None:
    """Refuses a result whose path is taken by a folder (file results) or a file."""
    if result.is_dir() and not is_folder:
        raise IsADirectoryError(
            f"Result {str(result)!r} is an existing folder; move it away or pass another "
            "--out-dir."
        )
    for place in (result, *result.parents) if is_folder else result.parents:
        if place == out_dir:
            break
        if place.exists() and not place.is_dir():
            raise NotADirectoryError(
                f"{str(place)!r} is a file, but results go into a folder of that name; move "
                "it away or pass another --out-dir."
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


def check_pixels(path: str | os.PathLike, width: int, height: int, max_pixels: int | None) -> None:
    """Refuses an image (or video frame) of more than ``max_pixels`` pixels.

    Raises:
        UnreadableInputError: It is larger (the message names the file, its size and the
            ``--max-pixels`` that would admit it).
    """
    if max_pixels is not None and width * height > max_pixels:
        raise UnreadableInputError(
            f"{os.fspath(path)}: {width}x{height} pixels ({width * height / 1e6:.1f} MP) is "
            f"above --max-pixels {max_pixels} ({max_pixels / 1e6:.1f} MP), the bound on one "
            "image's memory; downscale it, or pass a larger --max-pixels if the memory is "
            "there (see docs/guarantees.md)."
        )


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Reads an image as a viewer shows it: an ``H x W x 3`` uint8 RGB array.

    The EXIF orientation is applied (a portrait photo stored sideways comes out upright);
    grayscale becomes three equal channels (16-bit grayscale is scaled to 8 bits); palette,
    CMYK and other modes are converted to RGB; an alpha channel is dropped (the colours are
    segmented as stored). Only the first frame of a multi-frame file is read.

    Args:
        path: The image file.
        max_pixels: Refuse, from the size in its header and before decoding it, an image of
            more pixels (None: no limit but Pillow's own, about 179 million).

    Raises:
        UnreadableInputError: The file is not an image Pillow can decode, is truncated, or
            has more than ``max_pixels`` pixels.
    """
    try:
        with Image.open(path) as image:
            check_pixels(path, image.width, image.height, max_pixels)
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
                gray = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
                gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.asarray(image.convert("RGB"))
    except UnreadableInputError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # Pillow reports unknown formats as OSError, truncated data as OSError or
        # SyntaxError ("broken PNG file") and huge images as DecompressionBombError.
        raise UnreadableInputError(f"{os.fspath(path)}: not a readable image ({error}).") from None
