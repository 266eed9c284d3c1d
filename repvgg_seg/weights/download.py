"""Where a checkpoint comes from: a published name, a URL, or a local path.

Downloads land in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), are streamed to a
temporary file beside their target, checked against a sha256 prefix, and only then renamed
into place, so an interrupted or corrupted download never leaves a file that a later run
would trust. With ``REPVGG_SEG_OFFLINE=1`` nothing is downloaded: a cached file or a local
path is used, and a missing one is reported with the exact path to put it at.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from ..atomic_io import write_atomically
from .table import NAME_SCHEME, WEIGHTS, find_by_filename, published_weights

logger = logging.getLogger(__name__)

OFFLINE_ENV = "REPVGG_SEG_OFFLINE"

# torch.hub's convention: 'name-<first hex digits of sha256>.ext'.
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60


class ChecksumError(RuntimeError):
    """A downloaded file's sha256 does not start with the expected prefix."""


def cache_dir() -> Path:
    """torch.hub's checkpoint cache: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_mode() -> bool:
    """Whether ``$REPVGG_SEG_OFFLINE`` forbids downloads (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def url_filename(url: str) -> str:
    """The last path component of ``url``.

    Raises:
        ValueError: The URL has no file name to cache it under.
    """
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f"URL {url!r} does not end in a file name; point it at the .pth file.")
    return name


def expected_sha256_prefix(url: str) -> str | None:
    """The sha256 prefix a URL's file must have: from the weights table when the file is
    one of the published ones, else from a torch.hub-style ``-<hex>.pth`` suffix, else None."""
    filename = url_filename(url)
    entry = find_by_filename(filename)
    if entry is not None:
        return entry.sha256_prefix
    match = _HUB_HASH.search(filename)
    return match.group(1) if match else None


def resolve_checkpoint(checkpoint: str | os.PathLike, progress: bool = True) -> Path:
    """The local file of a checkpoint spec, downloading it into the cache if needed.

    Args:
        checkpoint: ``'repvgg:B2'`` (a published variant, see
            :data:`repvgg_seg.weights.table.WEIGHTS`), an ``http(s)://`` URL, or a path.
        progress: Show download progress.

    Raises:
        ValueError: Unknown variant name or unsupported URL scheme.
        FileNotFoundError: A local path that does not exist, or (offline) an uncached file.
        ConnectionError: The download failed or was cut short.
        ChecksumError: The downloaded file does not match its sha256 prefix.
    """
    spec = os.fspath(checkpoint)
    if spec.startswith(NAME_SCHEME):
        entry = published_weights(spec)
        return cached_download(entry.url, entry.sha256_prefix, progress=progress)
    if "://" in spec:
        scheme = urllib.parse.urlparse(spec).scheme
        if scheme not in ("http", "https"):
            raise ValueError(
                f"Unsupported URL scheme {scheme!r} in checkpoint {spec!r}; use http(s):// "
                "or a local path."
            )
        return cached_download(spec, expected_sha256_prefix(spec), progress=progress)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint file {str(path)!r} does not exist. Pass an existing file, an "
            f"http(s) URL, or a published name like 'repvgg:B2' ({', '.join(WEIGHTS)})."
        )
    return path


def cached_download(
    url: str,
    sha256_prefix: str | None = None,
    progress: bool = True,
    offline: bool | None = None,
) -> Path:
    """Returns the cached copy of ``url``, downloading and verifying it first if absent.

    A cached file is trusted without re-hashing: only verified downloads are ever renamed
    into the cache.

    Args:
        url: http(s) URL of the file.
        sha256_prefix: Leading hex digits of the file's sha256; None skips verification.
        progress: Show download progress.
        offline: Forbid downloading; None reads ``$REPVGG_SEG_OFFLINE``.
    """
    target = cache_dir() / url_filename(url)
    if target.is_file():
        logger.info("Using cached checkpoint %s", target)
        return target
    if offline if offline is not None else offline_mode():
        raise FileNotFoundError(
            f"Offline mode ({OFFLINE_ENV}=1) and {target.name} is not in the cache. On a "
            f"machine with internet access, download {url} and copy it to {target} (the "
            "cache is torch.hub's, set by $TORCH_HOME), or set checkpoint= to a local path."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if sha256_prefix is None:
        logger.warning("No sha256 known for %s; the download is not verified.", url)
    _download(url, target, sha256_prefix, progress)
    return target


def _download(url: str, target: Path, sha256_prefix: str | None, progress: bool) -> None:
    """Streams ``url`` into ``target``, verified; a failed or rejected download leaves nothing."""

    def stream(file: BinaryIO) -> None:
        digest = hashlib.sha256()
        written = 0
        logger.info("Downloading %s to %s", url, target)
        try:
            response = urllib.request.urlopen(url, timeout=_TIMEOUT_S)
        except (urllib.error.URLError, OSError) as error:
            raise ConnectionError(
                f"Could not download {url}: {error}. Check the network, or download it "
                f"elsewhere and copy it to {target} (then it is used from the cache)."
            ) from error
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            try:
                with _progress_bar(total, target.name, progress) as advance:
                    while chunk := response.read(_CHUNK_BYTES):
                        file.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        advance(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise ConnectionError(
                    f"Download of {url} failed after {written} bytes: {error!r}; run "
                    "again to retry."
                ) from error
        if total is not None and written != total:
            raise ConnectionError(
                f"Download of {url} stopped after {written} of {total} bytes; run again to retry."
            )
        actual = digest.hexdigest()
        if sha256_prefix is not None and not actual.startswith(sha256_prefix.lower()):
            raise ChecksumError(
                f"Downloaded {url} has sha256 {actual}, which does not start with the expected "
                f"{sha256_prefix}; the file is corrupt or not the published one and was "
                "discarded. Run again; if it persists, the server serves a different file."
            )

    write_atomically(target, stream)


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
