"""Downloads into the weights cache, against a real HTTP server on 127.0.0.1.

What may enter the cache (checked files only, one entry per URL), when a download is given
up (deadline, minimum rate), which file names are accepted, and that no temporary file
outlives its download (SIGTERM, killed processes). The published-name and hash-named cases
are in test_weights.py.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from repvgg_seg.checkpoint import CheckpointError, read_checkpoint
from repvgg_seg.weights.download import (
    DEADLINE_ENV,
    MIN_RATE_ENV,
    OFFLINE_ENV,
    DownloadLimits,
    cache_dir,
    cache_path,
    cached_download,
)
from repvgg_seg.weights.table import WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
NO_RATE_CHECK = DownloadLimits(min_rate=0)


def checkpoint_bytes(value: float = 1.0, legacy: bool = False, obj=None) -> bytes:
    """A small checkpoint (zip, or torch's legacy pickle format) as bytes."""
    buffer = io.BytesIO()
    if obj is None:
        obj = {"state_dict": {"weight": torch.full((64, 64), value)}}
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers each path with its route: ``route(handler)`` writes the whole response."""

    routes: dict[str, Callable]
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        # The client giving up mid-response is what several tests intend.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route(self)

    def log_message(self, *args):
        pass


def body(data: bytes, content_type: str = "application/octet-stream", length: bool = True):
    """A route sending ``data`` (without Content-Length: the connection's end ends it)."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        if length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return route


def trickle(data: bytes, interval: float, release: threading.Event, stop: threading.Event):
    """A route sending ``data`` one byte per ``interval`` s; the rest at once on ``release``."""

    def route(handler):
        handler.send_response(200)
        handler.end_headers()
        for sent in range(len(data)):
            if release.is_set():
                handler.wfile.write(data[sent:])
                return
            handler.wfile.write(data[sent : sent + 1])
            handler.wfile.flush()
            if stop.wait(interval):
                return

    return route


@dataclass
class Server:
    base: str  # http://127.0.0.1:PORT
    routes: dict[str, Callable] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)  # ends trickles

    def trickle(self, data: bytes, release: threading.Event | None = None):
        return trickle(data, 0.05, release or threading.Event(), self.stop)


@pytest.fixture
def server():
    """A server on 127.0.0.1 answering ``server.routes``."""
    state = Server("")
    handler = type("Handler", (_Handler,), {"routes": state.routes, "requests": state.requests})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    state.stop.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's checkpoint cache under tmp_path, online, default limits."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in (OFFLINE_ENV, DEADLINE_ENV, MIN_RATE_ENV):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def cache_files(hub: Path) -> list[str]:
    """Everything in the cache, hidden temporary files included."""
    return sorted(path.name for path in hub.iterdir()) if hub.exists() else []


def weight(path: Path) -> float:
    return read_checkpoint(path)["state_dict"]["weight"][0, 0].item()


# ---------------------------------------------------------------- what enters the cache


def test_unverified_url_is_cached_per_url_not_per_file_name(server, hub):
    base, routes, requests = server.base, server.routes, server.requests
    routes["/good/page.pth"] = body(checkpoint_bytes(1.0))
    routes["/other/page.pth"] = body(checkpoint_bytes(2.0))

    good = cached_download(base + "/good/page.pth", progress=False)
    other = cached_download(base + "/other/page.pth", progress=False)
    assert good != other
    assert (weight(good), weight(other)) == (1.0, 2.0)
    assert re.fullmatch(r"page\.url-[0-9a-f]{16}\.pth", good.name) and good.parent == hub

    assert cached_download(base + "/good/page.pth", progress=False) == good
    assert requests == ["/good/page.pth", "/other/page.pth"]
    assert cache_files(hub) == sorted([good.name, other.name])


HTML = b"<!DOCTYPE html>\n<html><body><h1>Sign in to continue</h1></body></html>\n"


NOT_LOADABLE = "downloaded from {url} is not a loadable checkpoint and was not cached"


@pytest.mark.parametrize(
    "route, message",
    [
        (body(HTML, "text/html; charset=utf-8"), "HTML page, not a checkpoint: {url}"),
        (body(b"\n  <html><p>Not found</p></html>"), "HTML page, not a checkpoint: {url}"),
        (body(b"Internal error\n", "text/plain"), "not a PyTorch checkpoint: {url}"),
        (body(checkpoint_bytes()[:3000], length=False), NOT_LOADABLE),
        (body(checkpoint_bytes(legacy=True)[:3000], length=False), NOT_LOADABLE),
        (
            body(checkpoint_bytes(obj=argparse.Namespace(weight=1))),
            "{url} holds Python objects that are not loaded for safety (weights_only=True): "
            "argparse.Namespace",
        ),
    ],
    ids=["html", "html-sniffed", "text", "cut-short-zip", "cut-short-legacy", "pickled-object"],
)
def test_unverified_bad_body_is_named_and_never_cached(server, hub, route, message):
    base, routes, requests = server.base, server.routes, server.requests
    routes["/wrong/page.pth"] = route
    url = base + "/wrong/page.pth"
    for attempt in (1, 2):
        with pytest.raises(CheckpointError, match=re.escape(message.format(url=url))) as error:
            cached_download(url, progress=False)
        if "HTML" in message:
            assert "Python objects" not in str(error.value)
        assert cache_files(hub) == []
        assert len(requests) == attempt  # asked again: nothing was cached


def test_legacy_checkpoint_without_length_is_cached(server, hub):
    base, routes = server.base, server.routes
    routes["/legacy.pth"] = body(checkpoint_bytes(3.0, legacy=True), length=False)
    assert weight(cached_download(base + "/legacy.pth", progress=False)) == 3.0


def test_wrong_file_under_a_hash_name_is_rejected_by_its_hash(server, hub):
    base, routes = server.base, server.routes
    data = checkpoint_bytes(4.0)
    name = f"weights-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    routes["/good/" + name] = body(data)
    routes["/wrong/" + name] = body(HTML, "text/html")

    with pytest.raises(CheckpointError, match="HTML page, not a checkpoint"):
        cached_download(base + "/wrong/" + name, sha256_prefix=name[8:16], progress=False)
    assert cache_files(hub) == []
    path = cached_download(base + "/good/" + name, sha256_prefix=name[8:16], progress=False)
    assert path == hub / name and weight(path) == 4.0


# ---------------------------------------------------------------- file names


@pytest.mark.parametrize("tail", ["/good/.", "/good/..", "/good/", "/good/%2e%2e", "/good/%20"])
def test_url_without_a_usable_file_name_is_refused(server, hub, tail):
    base, routes, requests = server.base, server.routes, server.requests
    routes[tail] = body(checkpoint_bytes())
    hub.mkdir(parents=True)
    with pytest.raises(ValueError, match="does not end in a usable file name"):
        cached_download(base + tail, progress=False)
    assert hub.is_dir() and cache_files(hub) == [] and requests == []


def test_file_name_cannot_leave_or_hide_in_the_cache(server, hub, tmp_path):
    base, routes = server.base, server.routes
    tail = "/x/..%2F..%2F.evil.pth"
    routes[tail] = body(checkpoint_bytes())
    path = cached_download(base + tail, progress=False)
    assert path.parent == hub and not path.name.startswith(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torch"]
    assert cache_files(hub) == [path.name]


def test_cache_path_keeps_hash_names_and_keys_the_rest_by_url():
    name = "repvgg_a0-1a2b3c4d5e.pth"
    assert cache_path(f"http://a/{name}", "1a2b3c4d5e").name == name
    assert cache_path(f"http://a/{name}", "1a2b3c4d").name != name  # not what it names
    assert cache_path(f"http://a/{name}", None).name != name
    assert cache_path("http://a/x.pth").name != cache_path("http://b/x.pth").name
    a0 = WEIGHTS["A0"]
    assert cache_path(a0.url, a0.sha256_prefix) == cache_dir() / a0.filename


# ---------------------------------------------------------------- slow servers


def test_trickling_server_is_given_up_at_the_deadline(server, hub, monkeypatch):
    base, routes = server.base, server.routes
    routes["/slow.pth"] = server.trickle(bytes(10_000))
    monkeypatch.setenv(DEADLINE_ENV, "0.5")
    monkeypatch.setenv(MIN_RATE_ENV, "0")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape(f"{base}/slow.pth did not finish")):
        cached_download(base + "/slow.pth", progress=False)
    assert time.monotonic() - start < 5
    assert cache_files(hub) == []


def trickle_headers(interval: float, stop: threading.Event):
    """A route sending its status line and headers one byte per ``interval`` s."""

    def route(handler):
        for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n":
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            if stop.wait(interval):
                return

    return route


def test_deadline_covers_the_response_headers(server, hub, monkeypatch):
    # Each byte arrives well within the read timeout: only the deadline can end this.
    base, routes = server.base, server.routes
    routes["/slow-headers.pth"] = trickle_headers(0.2, server.stop)
    monkeypatch.setenv(DEADLINE_ENV, "1")
    monkeypatch.setenv(MIN_RATE_ENV, "0")
    start = time.monotonic()
    with pytest.raises(ConnectionError) as error:
        cached_download(base + "/slow-headers.pth", progress=False)
    assert time.monotonic() - start < 4
    message = str(error.value)
    assert message.startswith(f"Download of {base}/slow-headers.pth did not finish within its ")
    assert "deadline of 1 s (0 bytes received)" in message
    assert cache_files(hub) == []


def test_failures_name_the_url_once(server, hub):
    base, routes = server.base, server.routes
    with pytest.raises(ConnectionError, match="HTTP Error 404") as error:
        cached_download(base + "/missing.pth", progress=False)
    assert str(error.value).count(base) == 1
    routes["/cut.pth"] = lambda handler: (
        handler.send_response(200),
        handler.send_header("Content-Length", "100000"),
        handler.end_headers(),
        handler.wfile.write(checkpoint_bytes()[:1000]),
    )
    with pytest.raises(ConnectionError, match=r"stopped after 1000 of 100000 bytes") as error:
        cached_download(base + "/cut.pth", progress=False)
    assert str(error.value).count(base) == 1
    routes["/slow.pth"] = server.trickle(bytes(10_000))
    limits = DownloadLimits(deadline_s=0.5, min_rate=0)
    with pytest.raises(ConnectionError, match="did not finish") as error:
        cached_download(base + "/slow.pth", progress=False, limits=limits)
    assert str(error.value).count(base) == 1 and "failed after" not in str(error.value)
    assert cache_files(hub) == []


def test_server_below_the_minimum_rate_is_given_up(server, hub):
    base, routes = server.base, server.routes
    routes["/slow.pth"] = server.trickle(bytes(10_000))
    limits = DownloadLimits(deadline_s=60, min_rate=1000, rate_window_s=0.4)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape(f"{base}/slow.pth is too slow")):
        cached_download(base + "/slow.pth", progress=False, limits=limits)
    assert time.monotonic() - start < 5
    assert cache_files(hub) == []


def test_limits_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(DEADLINE_ENV, "30")
    monkeypatch.setenv(MIN_RATE_ENV, "0")
    assert DownloadLimits.from_env() == DownloadLimits(deadline_s=30, min_rate=0)
    monkeypatch.setenv(DEADLINE_ENV, "soon")
    with pytest.raises(ValueError, match=re.escape(f"${DEADLINE_ENV}='soon'")):
        DownloadLimits.from_env()


# ---------------------------------------------------------------- temporary files

_CHILD = (
    "import sys\n"
    "from repvgg_seg.weights.download import DownloadLimits, cached_download\n"
    "cached_download(sys.argv[1], progress=False, limits=DownloadLimits(min_rate=0))\n"
)


def start_child_download(url: str, hub: Path) -> subprocess.Popen:
    """A process downloading ``url`` into ``hub``, returned once its temporary file exists."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, url], env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not list(hub.glob(".*.part")):
        assert child.poll() is None, "the download process ended early"
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.05)
    return child


def test_sigterm_during_download_removes_the_temporary_file(server, hub):
    base, routes = server.base, server.routes
    routes["/slow.pth"] = server.trickle(bytes(100_000))
    child = start_child_download(base + "/slow.pth", hub)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == -signal.SIGTERM
    assert cache_files(hub) == []


def test_next_download_removes_dead_downloads_temp_files_but_not_live_ones(server, hub):
    base, routes = server.base, server.routes
    routes["/killed.pth"] = server.trickle(bytes(100_000))
    child = start_child_download(base + "/killed.pth", hub)
    child.kill()
    child.wait(timeout=30)
    [dead] = hub.glob(".*.part")

    release = threading.Event()
    routes["/live.pth"] = server.trickle(checkpoint_bytes(5.0), release)
    live_result: list[Path] = []
    live = threading.Thread(
        target=lambda: live_result.append(
            cached_download(base + "/live.pth", progress=False, limits=NO_RATE_CHECK)
        )
    )
    live.start()
    deadline = time.monotonic() + 30
    while len(list(hub.glob(".*.part"))) < 2:
        assert live.is_alive() and time.monotonic() < deadline, "the live download never started"
        time.sleep(0.05)
    [live_partial] = set(hub.glob(".*.part")) - {dead}
    for partial in (dead, live_partial):  # both look old: only the lock tells them apart
        os.utime(partial, (time.time() - 3600,) * 2)

    routes["/next.pth"] = body(checkpoint_bytes(6.0))
    assert weight(cached_download(base + "/next.pth", progress=False)) == 6.0
    assert not dead.exists() and live_partial.exists()

    release.set()
    live.join(timeout=30)
    assert weight(live_result[0]) == 5.0
    assert list(hub.glob(".*.part")) == []
