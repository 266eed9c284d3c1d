"""Streaming one URL into a file of the cache, checked, within limits, leaving nothing behind.

:func:`download_checked` is the transfer that :func:`repvgg_seg.weights.download.cached_download`
runs once it has decided where a URL is cached: it streams into a temporary file beside the
target (:func:`repvgg_seg.atomic_io.write_atomically`), checks the body (the sha256 prefix,
or else an HTML sniff, the zip or pickle header and a ``weights_only`` load) and renames it
into place only then. It gives up past a deadline or below a minimum rate
(:class:`~.limits.DownloadLimits`, which cover connecting, the headers and the body), turns
SIGTERM into a clean stop, and :func:`remove_stale_partials` clears the temporary files of
killed downloads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..atomic_io import write_atomically
from ..checkpoint import CheckpointError, read_checkpoint
from ..errors import CheckFailedError
from .limits import (
    DEADLINE_ENV,
    MIN_RATE_ENV,
    RATE_WINDOW_ENV,
    Clock,
    DownloadLimits,
    Watchdog,
    opener,
)

__all__ = [
    "DEADLINE_ENV",
    "MIN_RATE_ENV",
    "RATE_WINDOW_ENV",
    "ChecksumError",
    "DownloadLimits",
    "download_checked",
    "remove_stale_partials",
]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
# A temporary file younger than this is left alone even when unlocked: its writer may be
# between creating it and locking it.
_STALE_AFTER_S = 10

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy format is a pickle: PROTO opcode, then protocol 2 to 5.
_PICKLE_MAGICS = tuple(b"\x80" + bytes([protocol]) for protocol in range(2, 6))


class ChecksumError(CheckFailedError):
    """A downloaded file's sha256 does not start with the expected prefix."""


def remove_stale_partials(folder: Path) -> list[Path]:
    """Removes the temporary files of downloads into ``folder`` whose process is gone.

    A live download holds an exclusive lock on its temporary file (released by the kernel
    when its process dies, however it dies); files nobody holds and that were not written
    in the last few seconds are left over from killed downloads.

    Returns:
        The files removed.
    """
    removed = []
    for partial in folder.glob(".*.part"):
        try:
            if time.time() - partial.stat().st_mtime < _STALE_AFTER_S:
                continue
            with open(partial, "rb") as file:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                partial.unlink()
        except (BlockingIOError, FileNotFoundError):
            continue  # a live download's, or removed meanwhile by another process
        except OSError as error:
            logger.warning("Could not remove the stale temporary file %s: %s", partial, error)
            continue
        removed.append(partial)
        logger.info("Removed %s, left by a download that was killed.", partial)
    return removed


def download_checked(
    url: str, target: Path, sha256_prefix: str | None, progress: bool, limits: DownloadLimits
) -> None:
    """Streams ``url`` into ``target`` and checks it; a failed or rejected download, or one
    stopped by Ctrl-C or SIGTERM, leaves nothing.

    Args:
        url: http(s) URL of the file.
        target: Where the file goes once it passed its check.
        sha256_prefix: Leading hex digits of the file's sha256; None checks instead that
            the file is a loadable checkpoint (``weights_only``, the project's reader).
        progress: Show download progress.
        limits: When to give up.

    Raises:
        ConnectionError: The download failed, was cut short, or broke ``limits``.
        ChecksumError: The file does not match ``sha256_prefix``.
        CheckpointError: An HTML page, or (unverified) not a loadable checkpoint.
    """

    received = _Received()

    def stream(file: BinaryIO) -> None:
        # Tells remove_stale_partials in other processes that this file is in use; the lock
        # lasts until write_atomically closes the file, after the check.
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        logger.info("Downloading %s to %s", url, target)
        clock = Clock(url, target, limits)
        with Watchdog(limits.deadline_s) as watchdog:
            try:
                _transfer(url, file, clock, watchdog, received, progress)
            except (OSError, http.client.HTTPException):
                if watchdog.expired.is_set():  # the watchdog ended the wait
                    raise clock.deadline_error(received.written) from None
                raise
            if watchdog.expired.is_set():  # the body "ended" because the watchdog shut it
                raise clock.deadline_error(received.written)
        if received.total is not None and received.written != received.total:
            raise ConnectionError(
                f"Download of {url} stopped after {received.written} of {received.total} "
                "bytes; run again to retry."
            )
        if sha256_prefix is not None:
            _check_sha256(
                received.digest.hexdigest(), sha256_prefix, url, received.head, received.type
            )

    def check(partial: Path) -> None:
        if sha256_prefix is None:
            _check_loadable(partial, url, received.head, received.type)
        # A long check leaves an old mtime; the file must not look stale while it is
        # unlocked between its close and its rename.
        os.utime(partial)

    with _sigterm_raises():
        write_atomically(target, stream, check)


@dataclass
class _Received:
    """What a transfer got so far."""

    type: str = ""
    total: int | None = None
    written: int = 0
    head: bytes = b""
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def add(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        if len(self.head) < 512:
            self.head += chunk[: 512 - len(self.head)]
        self.written += len(chunk)


def _transfer(
    url: str, file: BinaryIO, clock: Clock, watchdog: Watchdog, received: _Received, progress: bool
) -> None:
    """Requests ``url`` and streams its body into ``file``.

    Raises:
        ConnectionError: No response (naming the reason), a failed or too slow transfer.
    """
    limits = clock.limits
    try:
        response = opener(watchdog).open(url, timeout=min(limits.read_timeout_s, limits.deadline_s))
    except OSError as error:  # urllib.error.URLError and HTTPError included
        if watchdog.expired.is_set():
            raise
        raise ConnectionError(
            f"Could not download {url}: {error}. Check the URL and the network, or download "
            f"it elsewhere and copy it to {clock.target} (then it is used from the cache)."
        ) from error
    with response:
        received.type = response.headers.get("Content-Type", "")
        length = response.headers.get("Content-Length")
        received.total = int(length) if length and length.isdigit() else None
        with _progress_bar(received.total, clock.target.name, progress) as advance:
            while True:
                try:
                    chunk = response.read1(_CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    if watchdog.expired.is_set():
                        raise
                    raise ConnectionError(
                        f"Download of {url} failed after {received.written} bytes: "
                        f"{error!r}; run again to retry."
                    ) from error
                if not chunk:
                    return
                file.write(chunk)
                received.add(chunk)
                advance(len(chunk))
                clock.check(received.written)


def _is_checkpoint_header(head: bytes) -> bool:
    return head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGICS)


def _is_html(head: bytes, content_type: str) -> bool:
    if content_type.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
        return True
    start = head.lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def _html_error(url: str) -> CheckpointError:
    return CheckpointError(
        f"The server returned an HTML page, not a checkpoint: {url} (often a login, error or "
        "download-confirmation page). Nothing was cached; use the URL of the .pth file itself."
    )


def _check_sha256(actual: str, prefix: str, url: str, head: bytes, content_type: str) -> None:
    if actual.startswith(prefix.lower()):
        return
    if not _is_checkpoint_header(head) and _is_html(head, content_type):
        raise _html_error(url)
    raise ChecksumError(
        f"Downloaded {url} has sha256 {actual}, which does not start with the expected "
        f"{prefix}; the file is corrupt or not the published one and was discarded. Run "
        "again; if it persists, the server serves a different file."
    )


def _check_loadable(partial: Path, url: str, head: bytes, content_type: str) -> None:
    """Raises unless the downloaded temporary file ``partial`` loads with the project's
    ``weights_only`` reader."""
    if not _is_checkpoint_header(head):
        if _is_html(head, content_type):
            raise _html_error(url)
        raise CheckpointError(
            f"The server returned a file that is not a PyTorch checkpoint: {url} (it starts "
            f"with {head[:16]!r}, not a zip or pickle header). Nothing was cached; check "
            "the URL."
        )
    try:
        read_checkpoint(partial)
    except CheckpointError as error:
        # The reader's reason, naming the URL instead of the temporary file.
        reason = str(error).replace(repr(os.fspath(partial)), url)
        raise CheckpointError(
            f"The file downloaded from {url} is not a loadable checkpoint and was not "
            f"cached: {reason}"
        ) from error


class _Terminated(BaseException):
    """SIGTERM arrived during a download (raised so that the temporary file is removed)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turns SIGTERM into an exception for the duration, then re-delivers it.

    Python's default SIGTERM ends the process without unwinding, which would leave the
    temporary file behind. Only the main thread can install handlers; elsewhere, and when
    SIGTERM is ignored, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_IGN, None):
        yield
        return

    def raise_terminated(signum, frame):
        raise _Terminated

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signal.SIGTERM)  # ends the process, or runs the old handler
        raise ConnectionError("The download was stopped by SIGTERM.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _progress_bar(total: int | None, name: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(num_bytes)``: a tqdm bar when tqdm is installed, else log lines."""
    if not enabled:
        yield lambda num_bytes: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar:
            yield bar.update
        return
    done, next_report = 0, 0.1

    def advance(num_bytes: int) -> None:
        nonlocal done, next_report
        done += num_bytes
        if total and done / total >= next_report:
            logger.info("%s: %d%% of %.1f MB", name, 100 * done // total, total / 2**20)
            next_report += 0.1

    yield advance
