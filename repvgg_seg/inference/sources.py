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

from ..errors import UsageError
from ..output_dir import check_out_dir

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
# The widest (or tallest) shape segmented. mmseg's keep-ratio Resize to a scale whose long
# side is L turns the short side of an image longer than 2L:1 into 0 pixels, and OpenCV
# aborts (measured with the synthetic config, L = 256: 512x1 runs, 513x1 fails); 100:1
# passes every photo and panorama, and the configs here have L >= 256.
MAX_ASPECT_RATIO = 100


class UnreadableInputError(UsageError):
    """An image or video could not be decoded, or is of a size or kind that is not
    segmented; the message names the file."""


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
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    save_labels: bool,
    broken_links: list[Path] | None = None,
) -> list[Source]:
    """Lists the images and videos of ``inputs`` with their output paths.

    A file named directly is used whatever its extension (a video if it has a video
    extension, else an image); folders contribute their image and video files, recursively,
    skipping hidden files and folders and the result folders of ``out_dir``. A file reached
    twice is used once. Symbolic links with an image or video name inside the folders that
    lead nowhere (a missing target, a loop) are skipped and appended to ``broken_links``
    (for the caller to say so); one named directly is refused.

    Raises:
        FileNotFoundError: An input does not exist, or is a link that leads nowhere.
        NotADirectoryError: ``out_dir``, or a folder a result goes into, is a file.
        IsADirectoryError: A result file's path is a folder.
        UsageError: Nothing to segment was found; ``out_dir`` is an input folder; two inputs
            would write the same result; a result would replace an input.
    """
    out_dir = Path(os.path.abspath(out_dir))
    _check_inputs_exist(inputs)
    result_roots = _check_out_dir_and_inputs(out_dir, inputs)
    found: dict[Path, tuple[Path, Path]] = {}  # resolved file -> (file, the folder it is under)
    for raw in inputs:
        path = Path(os.path.abspath(raw))
        if path.is_dir():
            files = [(file, path) for file in _media_files(path, result_roots, broken_links)]
        elif path.is_file():
            files = [(path, path.parent)]
        else:
            raise UsageError(
                f"Input {str(raw)!r} is neither a file nor a folder (a device, pipe or "
                "socket); pass image or video files, or folders of them."
            )
        for file, anchor in files:
            found.setdefault(file.resolve(), (file, anchor))
    if not found:
        raise UsageError(
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


def _check_inputs_exist(inputs: Sequence[str | os.PathLike]) -> None:
    """Refuses inputs that do not exist, naming a link that leads nowhere as such (resolving
    a link loop raises RuntimeError: it is found here first)."""
    for raw in inputs:
        if os.path.exists(raw):  # follows links; False for a loop or a missing target
            continue
        if os.path.islink(raw):
            raise FileNotFoundError(
                f"Input {str(raw)!r} is a symbolic link that leads nowhere (its target "
                f"{os.readlink(raw)!r} is missing, or the links form a loop); pass the file "
                "itself."
            )
        raise FileNotFoundError(f"Input {str(raw)!r} does not exist (no such file or folder).")


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
            raise UsageError(
                f"--out-dir {str(out_dir)!r} is the input folder {str(raw)!r}: its results "
                "would be mixed with the inputs. Pass another --out-dir (a new folder inside "
                "the input folder is fine: results are never taken as inputs)."
            )
        if any(folder == root or root in folder.parents for root in roots):
            raise UsageError(
                f"Input folder {str(raw)!r} is inside the results of --out-dir "
                f"{str(out_dir)!r}; results are not segmented again. Pass the images "
                "themselves, or another --out-dir."
            )
    return roots


def _media_files(
    folder: Path, result_roots: tuple[Path, ...], broken_links: list[Path] | None
) -> list[Path]:
    files = []
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if file.suffix.lower() not in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS:
            continue
        if file.is_symlink() and not file.exists():  # exists() follows the link
            if broken_links is not None:
                broken_links.append(file)
            continue
        if file.is_file():
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
                raise UsageError(
                    f"Input {str(source.path)!r} would be replaced by the result "
                    f"{str(by_real_path[place])!r}; results never replace inputs. Pass "
                    "another --out-dir."
                )
    for result, (_, is_folder) in owners.items():
        _check_place(result, is_folder, out_dir)


def _collision(first: Source, second: Source, result: Path) -> UsageError:
    return UsageError(
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
    """Refuses an image (or video frame) of more than ``max_pixels`` pixels, or more than
    :data:`MAX_ASPECT_RATIO` times as wide as high (or high as wide).

    Raises:
        UnreadableInputError: It is larger (the message names the file, its size and the
            ``--max-pixels`` that would admit it), or of such a shape.
    """
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise UnreadableInputError(
            f"{os.fspath(path)}: {width}x{height} pixels is more than {MAX_ASPECT_RATIO} "
            "times as long as it is wide: the test pipeline's resize would leave its short "
            "side 0 pixels; crop it into parts of a usual shape."
        )
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
    segmented as stored). Only the first frame of a multi-frame file is read. A
    floating-point image (a 32-bit float TIFF) is refused: its file does not say which values
    are black and white (0-1? 0-255?), and Pillow's conversion would clip it to near black.

    Args:
        path: The image file.
        max_pixels: Refuse, from the size in its header and before decoding it, an image of
            more pixels (None: no limit but Pillow's own, about 179 million).

    Raises:
        UnreadableInputError: The file is not an image Pillow can decode, is truncated, is
            floating-point, or has more than ``max_pixels`` pixels or an extreme shape.
    """
    try:
        with Image.open(path) as image:
            check_pixels(path, image.width, image.height, max_pixels)
            if image.mode == "F":
                raise UnreadableInputError(
                    f"{os.fspath(path)}: a 32-bit floating-point image, whose value range "
                    "(0-1, 0-255, ...) the file does not say; convert it to 8-bit RGB first."
                )
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
