"""``xlsteer data fetch`` against a mirror served on 127.0.0.1, and where data is looked up."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from xlsteer.cli import main
from xlsteer.data import fetch as fetch_mod
from xlsteer.data import paths
from xlsteer.data.fetch import (
    Dataset,
    FetchOptions,
    Manifest,
    SourceFile,
    load_manifest,
    plan_fetch,
    python_literals_to_json,
    run_fetch,
)
from xlsteer.data.check import check_data
from xlsteer.data.paths import data_dir_origin
from xlsteer.errors import DataError, UsageError

REPO, COMMIT = "someone/alpha-data", "a" * 40
NC_REPO, NC_COMMIT = "other/nc-data", "b" * 40
EXEMPLARS_PY = '''"""Prompts."""
# pylint: disable=line-too-long

ANSWERS = [11, 29]

EXEMPLARS = {
    "de": {"1": {"q": "Frage: Roger hat 5 Tennisb\\u00e4lle.",
                 "a": "Schritt-f\\u00fcr-Schritt: "
                      "5 + 6 = 11."}},
}
'''
UPSTREAM = {  # (repo, commit, upstream path) -> bytes served
    (REPO, COMMIT, "LICENSE"): b"Attribution 4.0 International\n",
    (REPO, COMMIT, "data/de.tsv"): b"Wie viel?\t3\r\n" * 4000,  # 60 kB: room to cut a download in half
    (REPO, COMMIT, "data/en.tsv"): b"How many?\t3\r\n",
    (REPO, COMMIT, "src/exemplars.py"): EXEMPLARS_PY.encode(),
    (NC_REPO, NC_COMMIT, "dev-en.tsv"): b"premise\thypothesis\tneutral\r\n",
}
LAYOUT = {  # data dir path -> (repo, commit, upstream path, dataset, convert)
    "alpha/LICENSE": (REPO, COMMIT, "LICENSE", "alpha", None),
    "alpha/de.tsv": (REPO, COMMIT, "data/de.tsv", "alpha", None),
    "alpha/en.tsv": (REPO, COMMIT, "data/en.tsv", "alpha", None),
    "alpha/exemplars.json": (REPO, COMMIT, "src/exemplars.py", "alpha", "python-literals-to-json"),
    "ncset/dev-en.tsv": (NC_REPO, NC_COMMIT, "dev-en.tsv", "ncset", None),
}


def _expected_bytes(rel: str) -> bytes:
    repo, commit, up, _, convert = LAYOUT[rel]
    raw = UPSTREAM[(repo, commit, up)]
    return python_literals_to_json(raw) if convert else raw


def fixture_manifest() -> Manifest:
    files = []
    for rel, (repo, commit, up, ds, convert) in LAYOUT.items():
        data = _expected_bytes(rel)
        files.append(SourceFile(rel, ds, repo, commit, up, hashlib.sha256(data).hexdigest(), len(data), convert))
    datasets = {
        "alpha": Dataset("alpha", "Alpha", "CC BY 4.0", "credit the source", False),
        "ncset": Dataset("ncset", "NC set", "CC BY-NC 4.0", "NON-COMMERCIAL use only", True),
    }
    return Manifest("https://unused.invalid", datasets, tuple(files))


class Mirror:
    """A loopback HTTP server over an in-memory mirror tree; logs requests, can cut one download short."""

    def __init__(self, ranges: bool = True):
        self.files = {f"/{repo}/{commit}/{up}": data for (repo, commit, up), data in UPSTREAM.items()}
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, int] = {}  # URL path -> bytes sent before the connection drops
        self.stall: dict[str, int] = {}  # URL path -> bytes sent before the server hangs until released
        self.release = threading.Event()
        self.ranges = ranges
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                rng = self.headers.get("Range")
                mirror.requests.append((self.path, rng))
                if self.path not in mirror.files:
                    self.send_error(404)
                    return
                data, start = mirror.files[self.path], 0
                if rng and mirror.ranges:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, stall = mirror.cut.pop(self.path, None), mirror.stall.pop(self.path, None)
                if stall is not None:
                    self.wfile.write(body[:stall])
                    self.wfile.flush()
                    mirror.release.wait(20)
                    return
                self.wfile.write(body if cut is None else body[:cut])

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def path_of(self, rel: str) -> str:
        repo, commit, up, _, _ = LAYOUT[rel]
        return f"/{repo}/{commit}/{up}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror():
    m = Mirror()
    yield m
    m.close()


@pytest.fixture
def manifest(monkeypatch) -> Manifest:
    m = fixture_manifest()
    monkeypatch.setattr(fetch_mod, "load_manifest", lambda: m)
    return m


def _fetch(dest: Path, mirror: Mirror, manifest: Manifest, **kw):
    plan = plan_fetch(FetchOptions(dest=dest, mirror=mirror.url, **kw), manifest)
    return run_fetch(plan, timeout=10)


def _parts(dest: Path) -> list[Path]:
    return sorted(dest.rglob("*.part"))


# ---------------------------------------------------------------------------------------------
# fetch


def test_fetch_verifies_every_file_and_writes_the_hash_list(tmp_path, mirror, manifest):
    dest = tmp_path / "data"
    report = _fetch(dest, mirror, manifest, accept_nc=True)
    assert report.ok and sorted(report.fetched) == sorted(LAYOUT) and not report.kept
    for rel in LAYOUT:
        assert (dest / rel).read_bytes() == _expected_bytes(rel)
    assert (dest / "SHA256SUMS").read_text() == manifest.sums_text()
    assert report.bytes == sum(len(b) for b in UPSTREAM.values())
    assert not _parts(dest)
    checked = check_data(dest, datasets=["alpha", "ncset"])
    assert checked["n_ok"] == len(LAYOUT) and not checked["missing"] and not checked["mismatch"]


def test_python_exemplars_are_parsed_not_run_and_written_as_json(tmp_path, mirror, manifest):
    dest = tmp_path / "data"
    _fetch(dest, mirror, manifest, only=("alpha",))
    doc = json.loads((dest / "alpha/exemplars.json").read_text(encoding="utf-8"))
    assert list(doc) == ["ANSWERS", "EXEMPLARS"] and doc["ANSWERS"] == [11, 29]
    assert doc["EXEMPLARS"]["de"]["1"] == {"q": "Frage: Roger hat 5 Tennisbälle.", "a": "Schritt-für-Schritt: 5 + 6 = 11."}
    assert "Tennisbälle" in (dest / "alpha/exemplars.json").read_text(encoding="utf-8")  # not \\u-escaped
    with pytest.raises(ValueError):
        python_literals_to_json(b"import os\nX = os.system('echo hacked')\n")


def test_a_corrupted_file_is_refused_reported_and_not_kept(tmp_path, mirror, manifest, capsys):
    mirror.files[mirror.path_of("alpha/en.tsv")] = b"How many?\t4\r\n"  # upstream changed or tampered with
    mirror.files[mirror.path_of("alpha/exemplars.json")] = b"EXEMPLARS = {'de': 1}\n"
    dest = tmp_path / "data"
    assert main(["data", "fetch", "--dest", str(dest), "--mirror", mirror.url, "--only", "alpha"]) == 1
    err = capsys.readouterr().err
    assert "refused alpha/en.tsv: sha256" in err and "not kept" in err
    assert "refused alpha/exemplars.json" in err
    assert err.strip().splitlines()[-1].startswith("error: 2 file(s) not fetched (alpha/en.tsv, alpha/exemplars.json)")
    assert not (dest / "alpha/en.tsv").exists() and not (dest / "alpha/exemplars.json").exists()
    assert (dest / "alpha/de.tsv").read_bytes() == _expected_bytes("alpha/de.tsv")  # the good ones are kept
    assert not _parts(dest)


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, mirror, manifest):
    dest, rel = tmp_path / "data", "alpha/de.tsv"
    size = len(_expected_bytes(rel))
    mirror.cut[mirror.path_of(rel)] = size // 2  # the connection drops half-way (as when killed)
    with pytest.raises(DataError) as e:
        _fetch(dest, mirror, manifest, only=("alpha",))
    assert "run the command again to resume" in str(e.value) and "\n" not in str(e.value)
    part = dest / "alpha/de.tsv.part"
    kept_bytes = part.stat().st_size
    assert kept_bytes == size // 2 and not (dest / rel).exists()
    assert not (dest / "SHA256SUMS").exists()
    done_before = {p for p, _ in mirror.requests}
    mirror.requests.clear()
    report = _fetch(dest, mirror, manifest, only=("alpha",))
    assert report.ok and (dest / rel).read_bytes() == _expected_bytes(rel) and not _parts(dest)
    ranges = dict(mirror.requests)
    assert ranges[mirror.path_of(rel)] == f"bytes={kept_bytes}-"
    assert "alpha/LICENSE" in report.kept  # fetched before the drop: not downloaded again
    assert mirror.path_of("alpha/LICENSE") in done_before and mirror.path_of("alpha/LICENSE") not in ranges


def test_a_killed_fetch_resumes_on_the_next_run(tmp_path, mirror, manifest):
    """SIGKILL in the middle of a file: nothing half-written in place, the next run continues the part."""
    dest, rel = tmp_path / "data", "alpha/de.tsv"
    size = len(_expected_bytes(rel))
    mirror.stall[mirror.path_of(rel)] = size // 3
    plan = plan_fetch(FetchOptions(dest=dest, mirror=mirror.url, only=("alpha",)), manifest)
    pid = os.fork()
    if pid == 0:  # the fetching process, killed below
        try:
            run_fetch(plan, timeout=30)
        finally:
            os._exit(0)
    part = dest / "alpha/de.tsv.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size >= size // 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    mirror.release.set()
    assert part.stat().st_size == size // 3 and not (dest / rel).exists() and not (dest / "SHA256SUMS").exists()
    mirror.requests.clear()
    report = run_fetch(plan, timeout=10)
    assert report.ok and (dest / rel).read_bytes() == _expected_bytes(rel) and not _parts(dest)
    assert dict(mirror.requests)[mirror.path_of(rel)] == f"bytes={size // 3}-"


def test_a_resume_the_server_ignores_starts_over(tmp_path, manifest):
    m = Mirror(ranges=False)
    try:
        dest, rel = tmp_path / "data", "alpha/de.tsv"
        (dest / "alpha").mkdir(parents=True)
        (dest / "alpha/de.tsv.part").write_bytes(b"garbage from an earlier run")
        report = _fetch(dest, m, manifest, only=("alpha",))
        assert report.ok and (dest / rel).read_bytes() == _expected_bytes(rel)
    finally:
        m.close()


def test_a_rerun_fetches_only_what_is_missing_or_bad(tmp_path, mirror, manifest):
    dest = tmp_path / "data"
    _fetch(dest, mirror, manifest, accept_nc=True)
    (dest / "alpha/en.tsv").unlink()
    (dest / "alpha/de.tsv").write_bytes(b"edited by hand")
    mirror.requests.clear()
    report = _fetch(dest, mirror, manifest, accept_nc=True)
    assert sorted(report.fetched) == ["alpha/de.tsv", "alpha/en.tsv"] and len(report.kept) == len(LAYOUT) - 2
    assert sorted(p for p, _ in mirror.requests) == sorted(mirror.path_of(r) for r in ("alpha/de.tsv", "alpha/en.tsv"))
    assert (dest / "alpha/de.tsv").read_bytes() == _expected_bytes("alpha/de.tsv")


def test_without_network_one_line_error_naming_the_offline_route(tmp_path, manifest, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["data", "fetch", "--dest", str(tmp_path / "d"), "--mirror", f"http://127.0.0.1:{port}", "--timeout", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: cannot download http://127.0.0.1")
    assert "--data-dir" in err[0] and "XLSTEER_DATA_DIR" in err[0] and "Traceback" not in err[0]


def test_licenses_are_stated_and_the_non_commercial_set_needs_accept_nc(tmp_path, mirror, manifest, capsys):
    dest = tmp_path / "data"
    assert main(["data", "fetch", "--dest", str(dest), "--mirror", mirror.url]) == 0
    out = capsys.readouterr().out
    assert "alpha: Alpha, CC BY 4.0 - credit the source; from someone/alpha-data@aaaaaaa" in out
    assert "ncset: NC set, CC BY-NC 4.0" in out and "[skipped: add --accept-nc]" in out
    assert not (dest / "ncset").exists() and "fetched 4, already present 0" in out
    assert main(["data", "fetch", "--dest", str(dest), "--mirror", mirror.url, "--only", "ncset"]) == 2
    assert "add --accept-nc" in capsys.readouterr().err
    assert main(["data", "fetch", "--dest", str(dest), "--mirror", mirror.url, "--only", "ncset", "--accept-nc"]) == 0
    assert (dest / "ncset/dev-en.tsv").is_file()


def test_usage_errors_exit_2(tmp_path, mirror, manifest, capsys):
    assert main(["data", "fetch", "--dest", str(tmp_path / "d"), "--only", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "SHA256SUMS").write_text("0" * 64 + "  ./x.txt\n")
    assert main(["data", "fetch", "--dest", str(other), "--mirror", mirror.url]) == 2
    assert "differs from this xlsteer's data list" in capsys.readouterr().err
    assert (other / "SHA256SUMS").read_text() == "0" * 64 + "  ./x.txt\n"  # never overwritten


def test_a_file_missing_on_the_mirror_is_reported_exit_1(tmp_path, mirror, manifest, capsys):
    del mirror.files[mirror.path_of("alpha/en.tsv")]
    assert main(["data", "fetch", "--dest", str(tmp_path / "d"), "--mirror", mirror.url]) == 1
    err = capsys.readouterr().err
    assert "failed alpha/en.tsv: HTTP 404" in err


def test_the_mirror_comes_from_the_environment(tmp_path, mirror, manifest, monkeypatch):
    monkeypatch.setenv("XLSTEER_DATA_MIRROR", mirror.url)
    plan = plan_fetch(FetchOptions(dest=tmp_path / "d"), manifest)
    assert plan.base_url == mirror.url
    assert plan_fetch(FetchOptions(dest=tmp_path / "d"), manifest).files[0].url(plan.base_url).startswith(mirror.url)
    assert run_fetch(plan).ok


# ---------------------------------------------------------------------------------------------
# lookup order and the shipped data list


def _isolate(tmp_path: Path, monkeypatch) -> Path:
    """No ../shared/data above, no XLSTEER_DATA_DIR, the per-user dir inside tmp_path."""
    monkeypatch.delenv(paths.ENV_VAR, raising=False)
    (tmp_path / "code").mkdir()
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "code" / "paths.py"))
    monkeypatch.chdir(tmp_path / "code")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if any((p / "shared" / "data" / "SHA256SUMS").is_file() for p in [tmp_path, *tmp_path.parents]):
        pytest.skip("a shared/data exists above the temporary directory")
    return tmp_path / "xdg" / "xlsteer"


def test_lookup_order_ends_in_the_per_user_dir_which_is_fetchs_default(tmp_path, monkeypatch, mirror, manifest):
    user = _isolate(tmp_path, monkeypatch)
    with pytest.raises(DataError, match="run `xlsteer data fetch`"):
        data_dir_origin()
    assert plan_fetch(FetchOptions(mirror=mirror.url), manifest).dest == user
    assert main(["data", "fetch", "--mirror", mirror.url, "--only", "alpha"]) == 0
    assert data_dir_origin() == (user.resolve(), "per-user data dir")
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    monkeypatch.setenv(paths.ENV_VAR, str(env_dir))
    assert data_dir_origin() == (env_dir.resolve(), paths.ENV_VAR)
    assert plan_fetch(FetchOptions(mirror=mirror.url), manifest).dest == env_dir  # fetch fills the dir in use
    assert data_dir_origin(str(tmp_path)) == (tmp_path.resolve(), "--data-dir")


def test_data_check_reports_the_dir_in_use_and_what_is_missing(tmp_path, monkeypatch, mirror, manifest, capsys):
    user = _isolate(tmp_path, monkeypatch)
    main(["data", "fetch", "--mirror", mirror.url, "--only", "alpha"])
    capsys.readouterr()
    assert main(["data", "check", "--only", "alpha"]) == 0
    assert f"data dir: {user.resolve()} (per-user data dir)" in capsys.readouterr().out
    (user / "alpha/en.tsv").write_bytes(b"changed")
    assert main(["data", "check", "--only", "alpha,ncset"]) == 1
    err = capsys.readouterr().err
    assert "2 data file(s) missing or failing the checksum (alpha/en.tsv, ncset/dev-en.tsv)" in err
    assert "xlsteer data fetch --dest" in err


def test_the_shipped_list_is_the_shared_datas_sha256sums():
    """The packaged list is the union of the shared data's two lists: its SHA256SUMS (114 files,
    byte for byte) and lcb/SHA256SUMS, whose unpacked test_sets/ are the members of the one
    archive xlsteer reads (test_sets.zip), byte for byte."""
    import zipfile

    manifest = load_manifest()
    assert {d.name for d in manifest.datasets.values() if d.non_commercial} == {"xnli", "lcb"}
    assert all(f.url(manifest.base_url).startswith(f"https://raw.githubusercontent.com/{f.repo}/{f.commit}/")
               for f in manifest.files)
    try:
        root = paths.data_dir()
    except DataError:
        pytest.skip("shared data not available")
    top = "".join(f"{f.sha256}  ./{f.path}\n" for f in manifest.files if f.dataset != "lcb")
    assert (root / "SHA256SUMS").read_text(encoding="utf-8") == top
    union = paths.read_sums(root)
    assert {f.path: f.sha256 for f in manifest.files}.items() <= union.items()
    assert all((root / f.path).stat().st_size == f.size for f in manifest.files)
    unpacked = sorted(set(union) - {f.path for f in manifest.files})
    assert len(unpacked) == 66 and all(p.startswith("lcb/test_sets/") for p in unpacked)
    with zipfile.ZipFile(root / "lcb/test_sets.zip") as z:
        for rel in unpacked:
            member = z.read(rel.removeprefix("lcb/"))
            assert hashlib.sha256(member).hexdigest() == union[rel] == hashlib.sha256((root / rel).read_bytes()).hexdigest()
    assert len(manifest.files) == 114 + 8


@pytest.mark.parametrize("path", ["mgsm/mgsm_exemplars.json", "lcb/few_shot_examples.json"])
def test_the_exemplar_conversion_reproduces_the_shared_json(path):
    """Upstream keeps the MGSM exemplars and LCB's few-shot turns as Python literals; their JSON
    form must hash as shipped."""
    try:
        root = paths.data_dir()
    except DataError:
        pytest.skip("shared data not available")
    entry = next(f for f in load_manifest().files if f.path == path)
    assert entry.convert == "python-literals-to-json"
    doc = json.loads((root / entry.path).read_text(encoding="utf-8"))
    source = '"""Prompts."""\n' + "".join(f"\n{k} = {v!r}\n" for k, v in doc.items()) + "\ndef f():\n    return 1\n"
    assert hashlib.sha256(python_literals_to_json(source.encode())).hexdigest() == entry.sha256


def test_plan_refuses_an_unwritable_destination(tmp_path, manifest):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError):
        plan_fetch(FetchOptions(dest=blocker / "sub", mirror="http://127.0.0.1:9"), manifest)
