"""Where a checkpoint comes from: a published name, a URL, or a local path.

Downloads land in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``). A file enters the
cache only after it passed its check, so a later run can trust whatever it finds there:

- A file whose name carries the publisher's sha256 prefix (the published table's names,
  torch.hub's ``name-<hex>.pth``) is cached under that name and must match the hash.
- Any other URL is cached under its file name plus a hash of the whole URL (two URLs
  ending in the same file name never share a cached file), and the body must be a
  checkpoint that loads with ``weights_only=True``; an HTML page is named as such.

The transfer itself (limits, SIGTERM, temporary files, the checks) is :mod:`.fetch`. With
``REPVGG_SEG_OFFLINE=1`` nothing is downloaded: a cached file or a local path is used, and
a missing one is reported with the exact path to put it at.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import urllib.parse
from pathlib import Path

import torch

from ..errors import UsageError
from .fetch import (
    DEADLINE_ENV,
    MIN_RATE_ENV,
    RATE_WINDOW_ENV,
    ChecksumError,
    DownloadLimits,
    download_checked,
    remove_stale_partials,
)
from .table import NAME_SCHEME, WEIGHTS, find_by_filename, published_weights

__all__ = [
    "DEADLINE_ENV",
    "MIN_RATE_ENV",
    "OFFLINE_ENV",
    "RATE_WINDOW_ENV",
    "ChecksumError",
    "DownloadLimits",
    "cache_dir",
    "cache_path",
    "cached_download",
    "expected_sha256_prefix",
    "offline_mode",
    "resolve_checkpoint",
    "url_filename",
]

logger = logging.getLogger(__name__)

OFFLINE_ENV = "REPVGG_SEG_OFFLINE"

# torch.hub's convention: 'name-<first hex digits of sha256>.ext'.
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[^.]+$")
# What a cached file name may hold; anything else becomes '_'.
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_NAME_CHARS = 150


def cache_dir() -> Path:
    """torch.hub's checkpoint cache: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_mode() -> bool:
    """Whether ``$REPVGG_SEG_OFFLINE`` forbids downloads (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def url_filename(url: str) -> str:
    """The last path component of ``url``, made safe to use as a file name in the cache.

    Percent-escapes are decoded, characters other than letters, digits and ``._+-``
    become ``_``, leading dots are dropped (no hidden files, no ``.`` or ``..``), and long
    names are shortened.

    Raises:
        ValueError: The URL has no usable file name.
    """
    raw = urllib.parse.unquote(posixpath.basename(urllib.parse.urlparse(url).path))
    name = _UNSAFE_CHARS.sub("_", raw).lstrip(".")
    if len(name) > _MAX_NAME_CHARS:
        stem, suffix = os.path.splitext(name)
        name = stem[: _MAX_NAME_CHARS - len(suffix[:16])] + suffix[:16]
    if not re.search(r"[A-Za-z0-9]", name):
        raise UsageError(
            f"URL {url!r} does not end in a usable file name ({raw!r}); point it at the "
            ".pth file itself, e.g. https://host/path/weights.pth."
        )
    return name


def expected_sha256_prefix(url: str) -> str | None:
    """The sha256 prefix a URL's file must have: from the weights table when the file is
    one of the published ones, else from a torch.hub-style ``-<hex>.pth`` suffix, else None."""
    return _name_hash(url_filename(url))


def cache_path(url: str, sha256_prefix: str | None = None) -> Path:
    """Where ``url`` is cached.

    Under its file name when the name stands for ``sha256_prefix`` (it carries it, or the
    published table gives the name that hash): the hash check then decides whether a file
    is the one named. Otherwise under the file name with a hash of the URL added
    (``page.pth`` -> ``page.url-<16 hex>.pth``), so that another URL with the same file
    name never returns this one's file.
    """
    name = url_filename(url)
    if sha256_prefix is None or _name_hash(name) != sha256_prefix.lower():
        url_hash = hashlib.sha256(url.encode()).hexdigest()[:16]
        stem, suffix = os.path.splitext(name)
        name = f"{stem}.url-{url_hash}{suffix}"
    cache = cache_dir()
    target = cache / name
    # url_filename leaves no separator or leading dot; this keeps it that way.
    if target.parent != cache or target.name != name:
        raise UsageError(f"URL {url!r} gives the cache file name {name!r}, outside {cache}.")
    return target


def _name_hash(name: str) -> str | None:
    """The sha256 prefix a file name stands for: the table's, else a hub-style suffix."""
    entry = find_by_filename(name)
    if entry is not None:
        return entry.sha256_prefix.lower()
    match = _HUB_HASH.search(name)
    return match.group(1) if match else None


def resolve_checkpoint(checkpoint: str | os.PathLike, progress: bool = True) -> Path:
    """The local file of a checkpoint spec, downloading it into the cache if needed.

    Args:
        checkpoint: ``'repvgg:B2'`` (a published variant, see
            :data:`repvgg_seg.weights.table.WEIGHTS`), an ``http(s)://`` URL, or a path.
        progress: Show download progress.

    Raises:
        ValueError: Unknown variant name, unsupported URL scheme, or a URL without a file
            name.
        FileNotFoundError: A local path that does not exist, or (offline) an uncached file.
        ConnectionError: The download failed, was cut short, or was too slow.
        ChecksumError: The downloaded file does not match its sha256 prefix.
        CheckpointError: An unverified download is not a loadable checkpoint.
    """
    spec = os.fspath(checkpoint)
    if spec.startswith(NAME_SCHEME):
        entry = published_weights(spec)
        return cached_download(entry.url, entry.sha256_prefix, progress=progress)
    if "://" in spec:
        scheme = urllib.parse.urlparse(spec).scheme
        if scheme not in ("http", "https"):
            raise UsageError(
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
    limits: DownloadLimits | None = None,
) -> Path:
    """Returns the cached copy of ``url``, downloading and checking it first if absent
    (:func:`.fetch.download_checked`).

    A cached file is trusted without checking it again: only files that passed their
    check (the sha256 prefix, or else a ``weights_only`` load) are renamed into the cache.

    Args:
        url: http(s) URL of the file.
        sha256_prefix: Leading hex digits of the file's sha256; None checks instead that
            the file is a loadable checkpoint.
        progress: Show download progress.
        offline: Forbid downloading; None reads ``$REPVGG_SEG_OFFLINE``.
        limits: When to give up a slow download; None reads them from the environment
            (:meth:`.fetch.DownloadLimits.from_env`).
    """
    target = cache_path(url, sha256_prefix)
    if target.is_file():
        logger.info("Using cached checkpoint %s", target)
        return target
    if offline if offline is not None else offline_mode():
        raise FileNotFoundError(
            f"Offline mode ({OFFLINE_ENV}=1) and {target.name} is not in the cache. On a "
            f"machine with internet access, download {url} and copy it to {target} (the "
            "cache is torch.hub's, set by $TORCH_HOME), or set checkpoint= to a local path."
        )
    if target.parent.exists() and not target.parent.is_dir():
        raise NotADirectoryError(
            f"The checkpoint cache {target.parent} is a file, not a folder; remove it (an "
            "older version could leave one there) and run again."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    if sha256_prefix is None:
        logger.warning(
            "No sha256 known for %s; the download is checked only for being a loadable "
            "checkpoint.",
            url,
        )
    download_checked(url, target, sha256_prefix, progress, limits or DownloadLimits.from_env())
    return target
