"""Segmenting images and videos: batching, writing the results, progress and a summary.

:func:`claim_out_dir` holds the output folder for one run (a second run into it is refused)
through :class:`repvgg_seg.output_dir.OutputDir`, which removes what a killed run marked as
its temporaries; :func:`segment_sources` then writes every result atomically, so an
interrupted run leaves complete results or none.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
from mmseg.models.segmentors import EncoderDecoder
from PIL import Image

from ..atomic_io import guard_of, temporary_prefix, write_atomically
from ..dir_lock import LockRole
from ..errors import UsageError
from ..output_dir import OutputDir
from .model import predict_labels
from .overlay import Palette, draw_overlay
from .sources import Source, UnreadableInputError, check_pixels, read_image

VIDEO_CODEC = "mp4v"  # MPEG-4 Part 2: encodable by every opencv-python build, played widely
# The hidden folder a video is encoded in, beside its overlay: ".<overlay name>.<the run's
# marker>.<8 random [a-z0-9_] of mkdtemp>.scratch" (a killed run's is removed by the next
# one, by its marker: repvgg_seg.output_dir.remove_marked).
VIDEO_SCRATCH_SUFFIX = ".scratch"


@dataclass
class RunSummary:
    """What :func:`segment_sources` did.

    Attributes:
        images: Images segmented.
        videos: Videos segmented.
        frames: Video frames segmented (all videos).
        seconds: Wall time, reading and writing included.
        failed: ``(file, reason)`` of every input that could not be read (a video cut
            short is listed with the frames it gave).
        interrupted: Ctrl-C stopped the run; the counts say what was finished.
    """

    images: int = 0
    videos: int = 0
    frames: int = 0
    seconds: float = 0.0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def images_per_second(self) -> float:
        return (self.images + self.frames) / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """One status line (done/total, images/s, ETA), redrawn at most 5 times a second.

    Inputs that failed count as done but not in the rate: images/s is of segmented ones.
    """

    def __init__(self, total: int | None, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.segmented = 0
        self.stream = stream if stream is not None else sys.stderr
        self.start = self.last_draw = time.perf_counter()

    def update(self, count: int = 1, segmented: bool = True) -> None:
        self.done += count
        self.segmented += count if segmented else 0
        now = time.perf_counter()
        if now - self.last_draw >= 0.2 or self.done == self.total:
            self.last_draw = now
            self._draw(now)

    def close(self) -> None:
        self._draw(time.perf_counter())
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        rate = self.segmented / elapsed if elapsed > 0 else 0.0
        if self.total:
            filled = min(20, 20 * self.done // self.total)
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            eta_text = f"ETA {eta:.0f}s" if math.isfinite(eta) else "ETA ?"
            line = f"{self.done}/{self.total} [{'#' * filled}{'.' * (20 - filled)}]"
        else:
            line, eta_text = f"{self.done} images", ""
        self.stream.write(f"\r{line} {rate:.2f} images/s, {elapsed:.0f}s elapsed {eta_text}  ")
        self.stream.flush()


INFER_LOCK = LockRole(".infer.lock", "--out-dir", "another tools/infer.py run", "--out-dir")
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


@contextlib.contextmanager
def claim_out_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[list[Path]]:
    """Holds ``out_dir`` for one run (created if missing); yields the temporary files and
    video scratch folders of a killed run that it removed (those carrying the marker that
    run recorded in its lock). Results replace only files a tool wrote, or any with
    ``overwrite``.

    Raises:
        WorkDirBusyError: Another live run writes into ``out_dir``.
        UsageError: ``out_dir`` cannot be created or written to.
    """
    claim = OutputDir(out_dir, INFER_LOCK, overwrite=overwrite)
    removed: list[Path] = []
    try:
        removed = claim.acquire()
    except OSError as error:
        if error.errno not in _NO_FLOCK:
            raise UsageError(
                f"Cannot write into --out-dir {os.fspath(out_dir)!r} "
                f"({error.strerror or error}); pass a folder you can write to."
            ) from error
        # A file system without flock: runs into one out dir are not kept apart.
    try:
        yield removed
    finally:
        claim.release()


def segment_sources(
    model: EncoderDecoder,
    sources: list[Source],
    palette: Palette,
    opacity: float = 0.5,
    batch_size: int = 1,
    progress_stream: TextIO | None = None,
    max_pixels: int | None = None,
) -> RunSummary:
    """Segments every source and writes its overlay (and labels, where the source asks).

    Consecutive images of one size share a batch of up to ``batch_size``; video frames are
    batched likewise. An input that cannot be decoded, or has more than ``max_pixels``
    pixels, is recorded in the summary and skipped; Ctrl-C ends the run with the summary of
    what was finished (``interrupted``); other errors stop the run.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}.")
    images = [source for source in sources if not source.is_video]
    videos = [source for source in sources if source.is_video]
    frame_counts = [_frame_count(video.path) for video in videos]
    total = len(images) + sum(frame_counts) if all(frame_counts) else None
    progress = Progress(total, progress_stream)
    summary = RunSummary()
    start = time.perf_counter()
    render = _Renderer(model, palette, opacity, max_pixels)
    try:
        _segment_images(render, images, batch_size, progress, summary)
        for video, declared in zip(videos, frame_counts):
            _segment_video(render, video, declared, batch_size, progress, summary)
    except KeyboardInterrupt:
        summary.interrupted = True
    progress.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _segment_images(
    render: _Renderer,
    images: list[Source],
    batch_size: int,
    progress: Progress,
    summary: RunSummary,
) -> None:
    batch: list[tuple[Source, np.ndarray]] = []
    for source in images:
        try:
            image = read_image(source.path, render.max_pixels)
        except UnreadableInputError as error:
            summary.failed.append((source.path, str(error)))
            progress.update(segmented=False)
            continue
        if batch and (len(batch) == batch_size or image.shape != batch[0][1].shape):
            summary.images += render.images(batch, progress)
            batch = []
        batch.append((source, image))
    if batch:
        summary.images += render.images(batch, progress)


def _segment_video(
    render: _Renderer,
    video: Source,
    declared: int,
    batch_size: int,
    progress: Progress,
    summary: RunSummary,
) -> None:
    try:
        frames = render.video(video, batch_size, progress)
    except UnreadableInputError as error:
        summary.failed.append((video.path, str(error)))
        return
    summary.frames += frames
    summary.videos += 1
    if declared and frames != declared:
        # OpenCV stops at the first frame it cannot decode, silently: a file cut short.
        summary.failed.append(
            (
                video.path,
                f"{video.path}: decoded {frames} of the {declared} frames its container "
                f"declares (truncated or damaged?); {video.overlay} holds those {frames}.",
            )
        )


@dataclass
class _Renderer:
    model: EncoderDecoder
    palette: Palette
    opacity: float
    max_pixels: int | None = None

    def images(self, batch: list[tuple[Source, np.ndarray]], progress: Progress) -> int:
        labels = predict_labels(self.model, [image for _, image in batch])
        for (source, image), label in zip(batch, labels):
            _write_png(source.overlay, draw_overlay(image, label, self.palette, self.opacity))
            if source.labels is not None:
                _write_png(source.labels, label)
        progress.update(len(batch))
        return len(batch)

    def video(self, source: Source, batch_size: int, progress: Progress) -> int:
        """Writes the annotated video (and per-frame labels); returns the frame count."""
        capture = cv2.VideoCapture(str(source.path))
        if not capture.isOpened():
            raise UnreadableInputError(f"{source.path}: not a video OpenCV can open.")
        try:
            width, height = (
                int(capture.get(p)) for p in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT)
            )
            check_pixels(source.path, width, height, self.max_pixels)
        except UnreadableInputError:
            capture.release()
            raise
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if math.isfinite(fps) and fps > 0 else 25.0
        frames = 0
        writer = None
        # Encoded beside the overlay (not in the system's temp folder, which a killed run
        # would leave it in): the file system of the result, cleaned by the next run.
        source.overlay.parent.mkdir(parents=True, exist_ok=True)
        guard = guard_of(source.overlay)
        with tempfile.TemporaryDirectory(
            suffix=VIDEO_SCRATCH_SUFFIX,
            prefix=temporary_prefix(source.overlay, guard.marker if guard else ""),
            dir=source.overlay.parent,
        ) as scratch:
            partial = Path(scratch) / f"video{source.overlay.suffix}"
            try:
                for batch in _frame_batches(capture, batch_size):
                    labels = predict_labels(self.model, batch)
                    for frame, label in zip(batch, labels):
                        if writer is None:
                            writer = _open_writer(partial, fps, frame.shape, source.path)
                        overlay = draw_overlay(frame, label, self.palette, self.opacity)
                        writer.write(np.ascontiguousarray(overlay[:, :, ::-1]))
                        if source.labels is not None:
                            _write_png(source.labels / f"{frames:06d}.png", label)
                        frames += 1
                    progress.update(len(batch))
            finally:
                capture.release()
                if writer is not None:
                    writer.release()
            if frames == 0:
                raise UnreadableInputError(f"{source.path}: no frame could be decoded.")
            with partial.open("rb") as encoded:
                write_atomically(source.overlay, lambda file: shutil.copyfileobj(encoded, file))
        return frames


def _frame_batches(capture: cv2.VideoCapture, batch_size: int) -> Iterator[list[np.ndarray]]:
    """Decoded frames as RGB arrays, in batches of one size (until the stream ends)."""
    batch: list[np.ndarray] = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frame = np.ascontiguousarray(frame[:, :, ::-1])
        if batch and (len(batch) == batch_size or frame.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(frame)
    if batch:
        yield batch


def _open_writer(path: Path, fps: float, shape: tuple, source: Path) -> cv2.VideoWriter:
    height, width = shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_CODEC), fps, (width, height))
    if not writer.isOpened():
        raise UsageError(
            f"OpenCV cannot write a {VIDEO_CODEC} video of {width}x{height} for {source}; "
            "install an opencv-python build with FFmpeg (the pinned one has it)."
        )
    return writer


def _frame_count(path: Path) -> int:
    """The frame count a video's header claims (0 if unknown or unreadable)."""
    capture = cv2.VideoCapture(str(path))
    try:
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT) if capture.isOpened() else 0
    finally:
        capture.release()
    return int(count) if math.isfinite(count) and count > 0 else 0


def _write_png(path: Path, array: np.ndarray) -> None:
    write_atomically(path, lambda file: Image.fromarray(array).save(file, format="PNG"))
