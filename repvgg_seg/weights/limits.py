"""When a download is given up: its deadline, its minimum rate, and a watchdog that makes the
deadline hold wherever the transfer waits.

A socket timeout bounds one wait, not a transfer: a server that sends its status line and
headers one byte every two seconds never trips a 60 s timeout. :class:`Watchdog` therefore
shuts the connection's socket down when the deadline passes, so the wait for the
connection, the headers or the body ends there (:func:`opener` makes urllib's connections
report their sockets to it). :class:`Clock` checks the deadline and the rate between chunks.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

DEADLINE_ENV = "REPVGG_SEG_DOWNLOAD_DEADLINE"
MIN_RATE_ENV = "REPVGG_SEG_DOWNLOAD_MIN_RATE"
RATE_WINDOW_ENV = "REPVGG_SEG_DOWNLOAD_RATE_WINDOW"

_READ_TIMEOUT_S = 60


@dataclass(frozen=True)
class DownloadLimits:
    """When a download is given up (each with an error naming the URL).

    The defaults suit the 100-500 MB checkpoints this project loads: a 500 MB file passes
    the rate check at 10 KB/s but would need 14 h at it; the deadline stops it at 2 h.

    Attributes:
        deadline_s: Overall time limit of one download: connecting, the response headers
            and the body.
        min_rate: Bytes per second that the last ``rate_window_s`` seconds must average;
            0 turns the check off.
        rate_window_s: The window the rate is averaged over.
        read_timeout_s: Longest wait for any single read from the server.
    """

    deadline_s: float = 2 * 3600.0
    min_rate: float = 10 * 1024.0
    rate_window_s: float = 60.0
    read_timeout_s: float = _READ_TIMEOUT_S

    @classmethod
    def from_env(cls) -> DownloadLimits:
        """The defaults, overridden by ``$REPVGG_SEG_DOWNLOAD_DEADLINE`` (seconds),
        ``$REPVGG_SEG_DOWNLOAD_MIN_RATE`` (bytes per second) and
        ``$REPVGG_SEG_DOWNLOAD_RATE_WINDOW`` (seconds)."""
        default = cls()
        return cls(
            deadline_s=_env_number(DEADLINE_ENV, default.deadline_s, positive=True),
            min_rate=_env_number(MIN_RATE_ENV, default.min_rate, positive=False),
            rate_window_s=_env_number(RATE_WINDOW_ENV, default.rate_window_s, positive=True),
        )


def _env_number(name: str, default: float, positive: bool) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 if positive else value >= 0):
        raise UsageError(
            f"${name}={text!r} is not a {'positive' if positive else 'non-negative'} number; "
            f"unset it for the default ({default:g})."
        )
    return value


class Clock:
    """Gives up a download past its deadline or below its minimum rate."""

    def __init__(self, url: str, target: Path, limits: DownloadLimits) -> None:
        self.url, self.target, self.limits = url, target, limits
        self.start = time.monotonic()
        # (time, bytes so far): the oldest entry is at or just before the window's start.
        self.samples = collections.deque([(self.start, 0)])

    def advice(self) -> str:
        return (
            f"Retry later, raise the limit (${DEADLINE_ENV} seconds, ${MIN_RATE_ENV} bytes "
            f"per second, 0 turns the rate check off), or download it elsewhere and copy it "
            f"to {self.target}."
        )

    def deadline_error(self, written: int) -> ConnectionError:
        return ConnectionError(
            f"Download of {self.url} did not finish within its deadline of "
            f"{self.limits.deadline_s:g} s ({written} bytes received) and was given up. "
            + self.advice()
        )

    def check(self, written: int) -> None:
        now = time.monotonic()
        limits = self.limits
        if now - self.start > limits.deadline_s:
            raise self.deadline_error(written)
        self.samples.append((now, written))
        while len(self.samples) > 1 and self.samples[1][0] <= now - limits.rate_window_s:
            self.samples.popleft()
        since, then = self.samples[0]
        if limits.min_rate > 0 and now - self.start >= limits.rate_window_s:
            rate = (written - then) / max(now - since, 1e-9)
            if rate < limits.min_rate:
                raise ConnectionError(
                    f"Download of {self.url} is too slow: {rate:.0f} bytes/s over the last "
                    f"{now - since:.0f} s, under the minimum of {limits.min_rate:g} bytes/s; "
                    f"given up after {written} bytes. " + self.advice()
                )


class Watchdog:
    """Shuts down the sockets it watches once ``seconds`` have passed (a context manager).

    A socket handed to :meth:`watch` after that is shut down at once. Whatever was waiting
    on one then returns or raises; :attr:`expired` tells why.
    """

    def __init__(self, seconds: float) -> None:
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
            if self.expired.is_set():
                _shut(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (yet, or any more)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def opener(watchdog: Watchdog) -> urllib.request.OpenerDirector:
    """urllib's opener whose HTTP(S) connections hand their sockets to ``watchdog``."""

    def watched(connection_class: type[http.client.HTTPConnection]):
        def build(*args, **kwargs) -> http.client.HTTPConnection:
            connection = connection_class(*args, **kwargs)
            create = connection._create_connection  # socket.create_connection
            connection._create_connection = lambda *a, **k: watchdog.watch(create(*a, **k))
            return connection

        return build

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(watched(http.client.HTTPConnection), req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(
                watched(http.client.HTTPSConnection),
                req,
                context=self._context,
                check_hostname=self._check_hostname,
            )

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)
