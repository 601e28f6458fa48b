"""Download the evaluation and parallel data from their upstream repositories, verified by SHA256.

The list of files ships inside the package (``sources.json``): for every file of the data dir
layout, the upstream repository, pinned commit and path, and the SHA256 and size the file must
have. A file is downloaded to ``<name>.part`` beside its final place, resumed there with an HTTP
Range request after an interruption, verified, and only then renamed into place; a file whose
hash does not match is deleted and reported, never kept. Files already present with the right
hash are left alone, so a re-run fetches only what is missing or bad.

``mgsm/mgsm_exemplars.json`` has no upstream file of its own: upstream ships the exemplars as
Python (``mgsm/exemplars.py``). That file is downloaded and its assignments are parsed with
``ast.literal_eval`` (no code is run), then written as JSON exactly as the shared copy was made;
the result is verified against the shipped hash like every other file.

The base URL defaults to raw.githubusercontent.com; ``XLSTEER_DATA_MIRROR`` (or ``mirror=``)
points at any server with the same ``<owner>/<repo>/<commit>/<path>`` layout.

The server is not trusted (:class:`FetchLimits`): a file is cut off and deleted as soon as more
bytes arrive than the hash list says it has; a download slower than ``min_rate`` bytes per second
over a ``window`` of seconds is stopped (a mirror that sends a byte a second would never end);
the whole fetch stops after ``total_seconds``. Two fetches into one folder take turns (a lock
file in the folder): the second waits, then finds the first one's files and keeps them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import time
import urllib.error
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import DataError, UsageError
from ..io import atomic_write_bytes, atomic_write_text, check_writable, sha256_file
from .download import MIRROR_ENV, Budget, FetchLimits, TooLarge, Unreachable, check_base_url, check_timeout
from .download import download as _download
from .download import download_cap
from .paths import ENV_VAR, SUMS_FILE, user_data_dir

MANIFEST = "sources.json"
NC_FLAG = "--accept-nc"


@dataclass(frozen=True)
class SourceFile:
    """One file of the data dir layout and where it comes from upstream."""

    path: str            # relative to the data dir, e.g. "mgsm/mgsm_de.tsv"
    dataset: str         # top-level folder: mgsm, xcopa, xquad, ntrex128, xnli, lcb
    repo: str            # "owner/name" on GitHub
    commit: str
    upstream: str        # path inside the repository
    sha256: str          # of the file as it must end up on disk
    size: int
    convert: str | None = None

    def url(self, base: str) -> str:
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.upstream}"


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    license: str
    terms: str
    non_commercial: bool


@dataclass(frozen=True)
class Manifest:
    base_url: str
    datasets: dict[str, Dataset]
    files: tuple[SourceFile, ...]

    def sums_text(self) -> str:
        """SHA256SUMS in ``sha256sum`` format, byte-identical to the shared data's own list."""
        return "".join(f"{f.sha256}  ./{f.path}\n" for f in self.files)


def load_manifest() -> Manifest:
    doc = json.loads(resources.files(__package__).joinpath(MANIFEST).read_text(encoding="utf-8"))
    datasets = {k: Dataset(name=k, **v) for k, v in doc["datasets"].items()}
    return Manifest(doc["base_url"], datasets, tuple(SourceFile(**f) for f in doc["files"]))


@dataclass(frozen=True)
class FetchOptions:
    """What ``xlsteer data fetch`` was asked for."""

    dest: str | os.PathLike | None = None    # default: $XLSTEER_DATA_DIR, else the per-user data dir
    only: tuple[str, ...] | None = None       # dataset names; None = all
    accept_nc: bool = False                   # required for the non-commercial sets (XNLI, LCB)
    mirror: str | None = None                 # default: $XLSTEER_DATA_MIRROR, else upstream
    timeout: float = 30.0
    limits: FetchLimits = field(default_factory=FetchLimits)


@dataclass
class FetchPlan:
    dest: Path
    base_url: str
    datasets: list[Dataset]
    skipped: list[Dataset]                    # left out for want of --accept-nc
    files: list[SourceFile]
    manifest: Manifest
    limits: FetchLimits = field(default_factory=FetchLimits)


@dataclass
class FetchReport:
    dest: Path
    fetched: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)       # already present with the right hash
    refused: dict[str, str] = field(default_factory=dict)  # path -> why it was not kept
    failed: dict[str, str] = field(default_factory=dict)   # path -> HTTP error
    bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.refused and not self.failed


def default_dest() -> Path:
    env = os.environ.get(ENV_VAR, "")
    return Path(env).expanduser() if env else user_data_dir()


def parse_only(text: str | None, manifest: Manifest) -> tuple[str, ...] | None:
    """``mgsm,xcopa`` -> dataset names; ``ntrex`` is accepted for ``ntrex128``."""
    if not text:
        return None
    names = []
    for raw in text.split(","):
        name = raw.strip().lower()
        name = "ntrex128" if name == "ntrex" else name
        if not name:
            continue
        if name not in manifest.datasets:
            raise UsageError(f"--only: unknown dataset {raw.strip()!r}; choose from {', '.join(manifest.datasets)}")
        names.append(name)
    return tuple(dict.fromkeys(names)) or None


def plan_fetch(options: FetchOptions, manifest: Manifest | None = None) -> FetchPlan:
    """Choose the datasets and check the destination before anything is downloaded."""
    manifest = manifest or load_manifest()
    names = list(options.only or manifest.datasets)
    unknown = [n for n in names if n not in manifest.datasets]
    if unknown:
        raise UsageError(f"unknown dataset {unknown[0]!r}; choose from {', '.join(manifest.datasets)}")
    chosen, skipped = [], []
    for name in names:
        ds = manifest.datasets[name]
        if ds.non_commercial and not options.accept_nc:
            if options.only:
                raise UsageError(f"{name} is {ds.license} (non-commercial use only); add {NC_FLAG} to fetch it")
            skipped.append(ds)
        else:
            chosen.append(ds)
    dest = Path(options.dest).expanduser() if options.dest else default_dest()
    check_writable(dest / SUMS_FILE)
    sums = dest / SUMS_FILE
    if sums.is_file() and not _older_list(sums.read_text(encoding="utf-8", errors="replace"), manifest):
        raise UsageError(f"{dest} holds a {SUMS_FILE} that differs from this xlsteer's data list; "
                         "fetch into an empty folder with --dest DIR")
    base = check_base_url(options.mirror or os.environ.get(MIRROR_ENV, "") or manifest.base_url)
    check_timeout(options.timeout)
    keep = {d.name for d in chosen}
    files = [f for f in manifest.files if f.dataset in keep]
    return FetchPlan(dest, base, chosen, skipped, files, manifest, options.limits)


def _older_list(text: str, manifest: Manifest) -> bool:
    """This xlsteer's list, or one an earlier xlsteer wrote (every line of it is still one of ours:
    the data list only grew, e.g. by LCB), which a fetch then completes and replaces."""
    ours = manifest.sums_text()
    return text == ours or set(text.splitlines()) <= set(ours.splitlines())


def license_lines(plan: FetchPlan) -> list[str]:
    """One line per dataset: its license, what it asks of users, and its source."""
    lines = []
    for ds in plan.datasets + plan.skipped:
        repos = sorted({f"{f.repo}@{f.commit[:7]}" for f in plan.manifest.files if f.dataset == ds.name})
        state = "" if ds in plan.datasets else f" [skipped: add {NC_FLAG}]"
        lines.append(f"{ds.name}: {ds.title}, {ds.license} - {ds.terms}; from {', '.join(repos)}{state}")
    return lines


# ---------------------------------------------------------------------------------------------
# download


def python_literals_to_json(source: bytes) -> bytes:
    """Top-level ``NAME = <literal>`` assignments of a Python file as JSON (parsed, never run)."""
    tree = ast.parse(source.decode("utf-8"))
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return json.dumps(out, indent=1, ensure_ascii=False).encode("utf-8")


CONVERTERS = {"python-literals-to-json": python_literals_to_json}


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _verify(f: SourceFile, part: Path) -> tuple[bytes | None, str | None]:
    """(converted bytes, or None when the part is the file itself; why it is refused, or None)."""
    data = None
    if f.convert:
        try:
            data = CONVERTERS[f.convert](part.read_bytes())
        except (SyntaxError, ValueError, UnicodeDecodeError) as e:
            return None, f"{f.upstream} is not plain Python literals ({type(e).__name__})"
        got = _sha256_bytes(data)
    else:
        got = sha256_file(part)
    if got != f.sha256:
        return None, f"sha256 {got[:12]}... does not match the expected {f.sha256[:12]}..."
    return data, None


def _fetch_one(f: SourceFile, plan: FetchPlan, report: FetchReport, budget: Budget) -> None:
    final = plan.dest / f.path
    part = final.with_name(final.name + (".source.part" if f.convert else ".part"))
    part.parent.mkdir(parents=True, exist_ok=True)
    resumed = part.exists() and part.stat().st_size > 0
    try:
        report.bytes += _download(f.url(plan.base_url), part, download_cap(f.size, bool(f.convert)), budget)
    except urllib.error.HTTPError as e:
        report.failed[f.path] = f"HTTP {e.code} from {f.url(plan.base_url)}"
        return
    except TooLarge as e:
        part.unlink(missing_ok=True)
        report.refused[f.path] = f"{e}; deleted"
        return
    data, refused = _verify(f, part)
    if refused:
        part.unlink(missing_ok=True)
        if resumed:  # the bytes kept from an earlier run may be the bad ones: try once from scratch
            return _fetch_one(f, plan, report, budget)
        report.refused[f.path] = refused
        return
    if data is not None:
        atomic_write_bytes(final, data)
        part.unlink()
    else:
        os.replace(part, final)
    report.fetched.append(f.path)


LOCK_FILE = ".xlsteer-fetch.lock"


def run_fetch(plan: FetchPlan, timeout: float = 30.0) -> FetchReport:
    """Download every planned file that is missing or bad; write SHA256SUMS when done.

    One fetch at a time per folder: a second one waits for the lock (up to ``lock_wait``), then
    finds the files the first fetched, verifies and keeps them.
    """
    import warnings

    from filelock import FileLock, Timeout

    from ..errors import XlsteerWarning

    check_timeout(timeout)
    plan.dest.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(plan.dest / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        warnings.warn(XlsteerWarning(f"another xlsteer data fetch is writing into {plan.dest}; waiting for it"))
        try:
            lock.acquire(timeout=plan.limits.lock_wait)
        except Timeout:
            raise DataError(f"another xlsteer data fetch into {plan.dest} still runs after {plan.limits.lock_wait:g} "
                            "s; wait for it to end, or fetch into another folder with --dest") from None
    try:
        return _run_locked(plan, timeout)
    finally:
        lock.release()


def _run_locked(plan: FetchPlan, timeout: float) -> FetchReport:
    from tqdm.auto import tqdm

    from ..progress import enabled as progress_enabled

    t0 = time.perf_counter()
    report = FetchReport(plan.dest)
    todo = []
    for f in plan.files:
        p = plan.dest / f.path
        if p.is_file() and p.stat().st_size == f.size and sha256_file(p) == f.sha256:
            report.kept.append(f.path)
        else:
            todo.append(f)
    bar = tqdm(total=sum(f.size for f in todo), desc="fetch", unit="B", unit_scale=True, unit_divisor=1024,
               dynamic_ncols=True, leave=False, disable=not progress_enabled())
    budget = Budget(plan.limits, timeout, time.monotonic() + plan.limits.total_seconds, bar)
    try:
        for f in todo:
            bar.set_postfix_str(f.path, refresh=False)
            _fetch_one(f, plan, report, budget)
    except Unreachable as e:
        raise DataError(
            f"{e}; run the command again to resume, set {MIRROR_ENV} to a reachable mirror, or, without network, "
            f"use data already on disk with --data-dir DIR or {ENV_VAR}=DIR"
        ) from None
    finally:
        bar.close()
    sums = plan.dest / SUMS_FILE  # plan_fetch checked that one already there is this list or an older one
    if not sums.is_file() or sums.read_text(encoding="utf-8", errors="replace") != plan.manifest.sums_text():
        atomic_write_text(sums, plan.manifest.sums_text())
    report.seconds = time.perf_counter() - t0
    return report


def fetch(options: FetchOptions) -> FetchReport:
    """Plan and run a fetch (the library entry point; the CLI prints the licenses in between)."""
    return run_fetch(plan_fetch(options), timeout=options.timeout)
