"""Downloads that do not trust the server: bounded in size, rate and time (used by :mod:`.fetch`).

Why a module of its own: ``xlsteer data fetch`` downloads from GitHub or any mirror, and a
mirror may send an endless body (one filled 11.9 GB in 40 s), a byte a second, or the wrong
bytes. Here a download stops (and its part is deleted) as soon as it passes the size the hash
list gives the file; it stops when it is slower than ``min_rate`` bytes per second over a
``window``, or when the whole fetch passes ``total_seconds``; and the base URL and the timeout
are checked before anything is requested.
"""

from __future__ import annotations

import http.client
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

MIRROR_ENV = "XLSTEER_DATA_MIRROR"
CHUNK = 1 << 16


@dataclass(frozen=True)
class FetchLimits:
    """How much a server may send and how slowly (the tests inject small values)."""

    min_rate: float = 1024.0       # bytes per second, averaged over ``window``
    window: float = 60.0           # seconds
    total_seconds: float = 3600.0  # the whole fetch
    lock_wait: float = 3600.0      # how long a second fetch into the same folder waits for the first


def check_base_url(url: str) -> str:
    """A mirror must be an http(s) URL with a host (anything else fails at the first download)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in url.strip()):
        raise UsageError(f"mirror {url[:80]!r} is not an http(s) URL; give e.g. https://mirror.example.org/gh "
                         f"(--mirror or {MIRROR_ENV})")
    return url.strip()


def check_timeout(seconds: float) -> float:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or not 0 < seconds <= 86400:
        raise UsageError(f"timeout {seconds!r} must be a number of seconds in (0, 86400]; e.g. 30")
    return float(seconds)


class Unreachable(Exception):
    """The server could not be reached (or the connection broke): stop, keep what is done."""


class TooLarge(Exception):
    """The server sent more than the file has: the part is deleted and the file refused."""


def download_cap(size: int, converted: bool = False) -> int:
    """The most bytes a download may bring: the file's size in the hash list (for a file made by
    conversion, whose source is not listed, a generous bound on that source)."""
    return size if not converted else 4 * size + (64 << 10)


@dataclass
class Budget:
    """The limits of one fetch run: the stall rule, the deadline, the socket timeout, the progress bar."""

    limits: FetchLimits
    timeout: float
    deadline: float
    bar: Any

    def pace(self, url: str, samples: Any, received: int) -> None:
        """Stop a download past the deadline, or slower than ``min_rate`` over the last ``window`` s."""
        now = time.monotonic()
        if now > self.deadline:
            raise Unreachable(f"the fetch took longer than {self.limits.total_seconds:g} s (at {url})")
        samples.append((now, received))
        while len(samples) > 1 and samples[1][0] <= now - self.limits.window:
            samples.popleft()
        t0, r0 = samples[0]
        if now - t0 >= self.limits.window and (received - r0) / (now - t0) < self.limits.min_rate:
            raise Unreachable(f"download of {url} stalled: {(received - r0) / (now - t0):,.0f} bytes/s over the last "
                               f"{now - t0:.0f} s, below the {self.limits.min_rate:,.0f} bytes/s a download must keep")


def open_url(url: str, offset: int, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": "xlsteer-data-fetch"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) URLs from the manifest
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise Unreachable(f"cannot download {url} ({reason})") from None


def download(url: str, part: Path, cap: int, budget: Budget) -> int:
    """Fetch ``url`` into ``part``, continuing a partial file; returns the bytes received.

    Never more than ``cap`` bytes in all (:class:`TooLarge`), never slower than the budget's
    rate, never past its deadline (:class:`Unreachable`, the part kept for a resume).
    """
    from collections import deque

    offset = part.stat().st_size if part.exists() else 0
    if offset > cap:
        part.unlink()
        offset = 0
    try:
        resp = open_url(url, offset, min(budget.timeout, budget.limits.window))
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the part already holds the whole file
            return 0
        raise
    received = 0
    resuming = resp.status == 206
    start = offset if resuming else 0
    announced = resp.headers.get("Content-Length")
    if announced is not None and announced.isdigit() and start + int(announced) > cap:
        resp.close()
        raise TooLarge(f"the server announces {start + int(announced):,} bytes, the file has {cap:,}")
    if resuming:
        budget.bar.update(offset)
    samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
    with resp, open(part, "ab" if resuming else "wb") as out:
        try:
            while chunk := resp.read1(CHUNK):  # what has arrived, so that a kill loses nothing received
                if start + received + len(chunk) > cap:
                    raise TooLarge(f"the server sent more than the {cap:,} bytes the file has")
                out.write(chunk)
                out.flush()
                received += len(chunk)
                budget.bar.update(len(chunk))
                budget.pace(url, samples, received)
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"download of {url} broke off ({e})") from None
    expected = resp.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and received < int(expected):
        raise Unreachable(f"download of {url} broke off after {received:,} of {int(expected):,} bytes")
    return received
