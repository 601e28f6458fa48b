"""``xlsteer data fetch`` against a hostile server on 127.0.0.1: it must not trust it.

The server sends an endless body, announces more bytes than the file has, drips a byte at a
time, sends the wrong bytes of the right length, or is merely slow; the fetch must cut off and
delete what passes the size in the hash list, stop a download slower than the minimum rate over
its window, stop at the total time limit, and refuse a ``--timeout`` or ``--mirror`` that means
nothing when the command line is parsed. Two fetches into one folder both end well: the second
waits for the first. The limits are injected small (FetchLimits), so every case takes ~1 s.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from test_fetch import LAYOUT, _expected_bytes, fixture_manifest
from xlsteer.cli import main
from xlsteer.data import fetch as fetch_mod
from xlsteer.data.fetch import FetchLimits, FetchOptions, plan_fetch, run_fetch
from xlsteer.errors import DataError, UsageError

FAST = FetchLimits(min_rate=2000.0, window=0.6, total_seconds=20.0, lock_wait=20.0)


class Hostile:
    """A raw-GitHub-layout server whose behaviour per path is set by the test (``modes``)."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.requests: list[str] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                data = server.body(self.path)
                mode = server.modes.get(self.path, "ok")
                self.send_response(200)
                if mode == "announce":
                    self.send_header("Content-Length", str(len(data) * 1000))
                elif mode != "endless":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    server.send(self.wfile, data, mode)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def path_of(self, rel: str) -> str:
        repo, commit, up, _, _ = LAYOUT[rel]
        return f"/{repo}/{commit}/{up}"

    def body(self, path: str) -> bytes:
        from test_fetch import UPSTREAM

        for (repo, commit, up), data in UPSTREAM.items():
            if path == f"/{repo}/{commit}/{up}":
                return data
        return b""

    def send(self, out, data: bytes, mode: str) -> None:
        if mode == "endless":  # never ends: as much as the client takes
            while not self.stop.is_set():
                out.write(b"x" * 65536)
        elif mode == "drip":  # a byte at a time, slower than any useful rate
            for b in data:
                if self.stop.is_set():
                    return
                out.write(bytes([b]))
                out.flush()
                time.sleep(0.05)
        elif mode == "wrong":
            out.write(bytes(len(data)))
        elif mode == "slow":  # steady but slow: the whole file only after the total limit
            for i in range(0, len(data), 4096):
                if self.stop.is_set():
                    return
                out.write(data[i:i + 4096])
                out.flush()
                time.sleep(0.2)
        else:
            out.write(data)

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Hostile()
    yield s
    s.close()


@pytest.fixture
def manifest(monkeypatch):
    m = fixture_manifest()
    monkeypatch.setattr(fetch_mod, "load_manifest", lambda: m)
    return m


def _fetch(dest: Path, server: Hostile, manifest, limits: FetchLimits = FAST):
    plan = plan_fetch(FetchOptions(dest=dest, mirror=server.url, only=("alpha",), limits=limits), manifest)
    return run_fetch(plan, timeout=5)


def test_an_endless_body_is_cut_at_the_expected_size_and_deleted(tmp_path, server, manifest):
    rel = "alpha/en.tsv"
    server.modes[server.path_of(rel)] = "endless"
    t0 = time.monotonic()
    report = _fetch(tmp_path / "d", server, manifest)
    assert time.monotonic() - t0 < 10
    assert "sent more than the" in report.refused[rel] and "deleted" in report.refused[rel]
    assert not (tmp_path / "d" / rel).exists() and not list((tmp_path / "d").rglob("*.part"))
    assert report.bytes < 200_000, "nothing near an endless body was kept"
    assert (tmp_path / "d" / "alpha/de.tsv").read_bytes() == _expected_bytes("alpha/de.tsv")


def test_an_announced_size_past_the_expected_one_is_refused_before_reading(tmp_path, server, manifest):
    rel = "alpha/de.tsv"
    server.modes[server.path_of(rel)] = "announce"
    report = _fetch(tmp_path / "d", server, manifest)
    assert "announces" in report.refused[rel] and not (tmp_path / "d" / rel).exists()
    assert report.bytes < len(_expected_bytes(rel))


def test_a_server_sending_a_byte_at_a_time_is_stopped_by_the_rate_limit(tmp_path, server, manifest):
    rel = "alpha/de.tsv"
    server.modes[server.path_of(rel)] = "drip"
    t0 = time.monotonic()
    with pytest.raises(DataError, match="stalled") as e:
        _fetch(tmp_path / "d", server, manifest)
    assert time.monotonic() - t0 < 10 and "\n" not in str(e.value) and "run the command again" in str(e.value)


def test_the_whole_fetch_stops_at_its_total_time_limit(tmp_path, server, manifest):
    server.modes[server.path_of("alpha/de.tsv")] = "slow"  # 60 kB in 15 chunks, 0.2 s apart: 3 s
    limits = FetchLimits(min_rate=100.0, window=0.5, total_seconds=1.0, lock_wait=5.0)
    t0 = time.monotonic()
    with pytest.raises(DataError, match="took longer than 1 s"):
        _fetch(tmp_path / "d", server, manifest, limits)
    assert time.monotonic() - t0 < 5


def test_wrong_bytes_of_the_right_length_are_refused(tmp_path, server, manifest):
    rel = "alpha/en.tsv"
    server.modes[server.path_of(rel)] = "wrong"
    report = _fetch(tmp_path / "d", server, manifest)
    assert "does not match" in report.refused[rel] and not (tmp_path / "d" / rel).exists()


def test_two_fetches_into_one_folder_both_end_well(tmp_path, server, manifest):
    server.modes[server.path_of("alpha/de.tsv")] = "slow"  # the first holds the folder ~3 s
    dest, reports, errors = tmp_path / "d", [], []
    limits = FetchLimits(min_rate=100.0, window=2.0, total_seconds=30.0, lock_wait=30.0)

    def one() -> None:
        try:
            reports.append(_fetch(dest, server, manifest, limits))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    with pytest.warns(Warning, match="waiting for it"):
        threads[0].start()
        time.sleep(0.3)
        threads[1].start()
        for t in threads:
            t.join(60)
    assert not errors and len(reports) == 2 and all(r.ok for r in reports)
    first, second = sorted(reports, key=lambda r: len(r.kept))
    assert sorted(first.fetched) == sorted(r for r in LAYOUT if r.startswith("alpha/"))
    assert second.fetched == [] and sorted(second.kept) == sorted(first.fetched), "the second waited, then kept"
    for rel in first.fetched:
        assert (dest / rel).read_bytes() == _expected_bytes(rel)


@pytest.mark.parametrize("args, message", [
    (["--timeout", "nan"], "--timeout"), (["--timeout", "-1"], "--timeout"), (["--timeout", "inf"], "--timeout"),
    (["--mirror", "not a url"], "not an http(s) URL"), (["--mirror", "ftp://host/x"], "not an http(s) URL"),
    (["--mirror", "http://:80/x"], "not an http(s) URL"), (["--mirror", "http://host:port/x"], "not an http(s) URL"),
])
def test_timeout_and_mirror_are_checked_when_parsed(tmp_path, args, message, capsys):
    code = main(["data", "fetch", "--dest", str(tmp_path / "d"), *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "d").exists()


def test_the_library_checks_them_too(tmp_path, manifest, monkeypatch):
    with pytest.raises(UsageError, match="not an http"):
        plan_fetch(FetchOptions(dest=tmp_path / "d", mirror="file:///etc"), manifest)
    monkeypatch.setenv("XLSTEER_DATA_MIRROR", "not a url")
    with pytest.raises(UsageError, match="XLSTEER_DATA_MIRROR"):
        plan_fetch(FetchOptions(dest=tmp_path / "d"), manifest)
    monkeypatch.delenv("XLSTEER_DATA_MIRROR")
    with pytest.raises(UsageError, match="timeout"):
        plan_fetch(FetchOptions(dest=tmp_path / "d", mirror="http://127.0.0.1:9", timeout=float("nan")), manifest)
