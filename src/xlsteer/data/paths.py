"""Where the shared data lives, and cheap fingerprints of what was read from it.

The data is read in place (never copied into the project), so every artifact records a
*data hash* computed from the SHA256SUMS lines of the files it used: cheap, and it changes
whenever any of those files would.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable

from ..errors import DataError
from ..io import sha256_file

ENV_VAR = "XLSTEER_DATA_DIR"
SUMS_FILE = "SHA256SUMS"

def _has_sums(p: Path) -> bool:
    return (p / SUMS_FILE).is_file()


def _discover(start: Path) -> Path | None:
    """Walk up from ``start`` looking for ``shared/data`` (with SHA256SUMS) beside or inside a checkout."""
    for anc in [start, *start.parents]:
        cand = anc / "shared" / "data"
        if _has_sums(cand):
            return cand.resolve()
    return None


def user_data_dir() -> Path:
    """The per-user data folder (e.g. ~/.local/share/xlsteer): last in the lookup, and where fetch writes."""
    import platformdirs

    return Path(platformdirs.user_data_dir("xlsteer", appauthor=False))


def data_dir_origin(explicit: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The data dir in use and where it came from, in lookup order.

    1. ``--data-dir`` (explicit), 2. $XLSTEER_DATA_DIR, 3. ``../shared/data`` beside the checkout
    (walking up from this file and from the working directory, so both a checkout beside
    ``shared/`` and an editable install find it), 4. the per-user data dir, when
    ``xlsteer data fetch`` has put a SHA256SUMS there.
    """
    if explicit is not None and str(explicit) != "":
        p = Path(explicit).expanduser()
        if not p.is_dir():
            raise DataError(f"--data-dir {p} is not a directory; give the folder that holds SHA256SUMS (e.g. ../shared/data)")
        return p.resolve(), "--data-dir"
    env = os.environ.get(ENV_VAR, "")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise DataError(f"{ENV_VAR}={env} is not a directory; point it at the folder that holds SHA256SUMS, or unset it")
        return p.resolve(), ENV_VAR
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        found = _discover(start)
        if found is not None:
            return found, "../shared/data"
    user = user_data_dir()
    if _has_sums(user):
        return user.resolve(), "per-user data dir"
    raise DataError(
        f"no data directory found: run `xlsteer data fetch` (downloads to {user}), pass --data-dir DIR, "
        f"set {ENV_VAR}=DIR, or put the data at ../shared/data beside the checkout (a folder holding SHA256SUMS)"
    )


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data dir: --data-dir, $XLSTEER_DATA_DIR, ../shared/data, then the per-user data dir."""
    return data_dir_origin(explicit)[0]


_resolve_data_dir = data_dir  # for functions whose parameter is named ``data_dir``


def _norm_rel(path: str) -> str:
    p = path.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def read_sums(data_dir: str | os.PathLike) -> dict[str, str]:
    """Relative path -> sha256 of every file the data dir lists: its SHA256SUMS and, merged in,
    the SHA256SUMS of a dataset folder that keeps its own list (the shared data's ``lcb/``, whose
    paths are relative to that folder). A path listed twice with two hashes is an error."""
    root = Path(data_dir)
    out = _read_sums_file(root / SUMS_FILE)
    for nested in sorted(root.glob(f"*/{SUMS_FILE}")):
        folder = nested.parent.name
        for rel, sha in _read_sums_file(nested).items():
            key = f"{folder}/{rel}"
            if out.setdefault(key, sha) != sha:
                raise DataError(f"{key} has one hash in {root / SUMS_FILE} and another in {nested}; "
                                "restore the data folder")
    return out


def _read_sums_file(sums: Path) -> dict[str, str]:
    """Relative path -> sha256 from one SHA256SUMS file (``sha256sum`` format)."""
    if not sums.is_file():
        raise DataError(f"{sums} does not exist; the data dir must hold SHA256SUMS (see shared/data/README.md)")
    out: dict[str, str] = {}
    try:
        text = sums.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{sums} is not UTF-8 text; restore it from the shared data") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{sums} line {n} is malformed (expected '<sha256>  <path>'); restore it from the shared data")
        out[_norm_rel(parts[1].lstrip("*"))] = parts[0].lower()
    return out


def hash_lines(entries: Iterable[tuple[str, str]]) -> str:
    """The data hash of (relative path, sha256) pairs: sha256 over sorted ``<sha>  ./<path>`` lines."""
    lines = sorted(f"{sha}  ./{_norm_rel(rel)}" for rel, sha in entries)
    return hashlib.sha256(("\n".join(lines) + "\n").encode("utf-8")).hexdigest()


def data_hash(data_dir: str | os.PathLike, files: list[str] | None = None) -> str:
    """Hash of the SHA256SUMS lines of ``files`` (relative paths), or of all of SHA256SUMS.

    Cheap (reads only SHA256SUMS); equals :func:`files_hash` of the same files when they are intact.
    """
    if files is None:
        return hash_lines(read_sums(data_dir).items())
    return hash_lines(sums_entries(data_dir, files))


def sums_entries(data_dir: str | os.PathLike, files: Iterable[str]) -> list[tuple[str, str]]:
    """(relative path, sha256) of ``files`` as SHA256SUMS lists them (DataError for one it lacks)."""
    sums = read_sums(data_dir)
    entries = []
    for f in files:
        rel = _norm_rel(str(f))
        if rel not in sums:
            raise DataError(f"{rel} is not listed in {Path(data_dir) / SUMS_FILE}; use a file of the shared data")
        entries.append((rel, sums[rel]))
    return entries


@functools.lru_cache(maxsize=512)
def _sha_cached(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(path)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, cached on (path, mtime, size) so repeated loads stay cheap."""
    st = os.stat(path)
    return _sha_cached(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def files_hash(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None) -> str:
    """Data hash of files actually read: hashes their bytes, names them relative to ``root`` (else by file name)."""
    entries = []
    base = Path(root).resolve() if root is not None else None
    for p in paths:
        rp = Path(p).resolve()
        rel = rp.name
        if base is not None:
            try:
                rel = rp.relative_to(base).as_posix()
            except ValueError:
                rel = rp.name
        entries.append((rel, file_sha256(rp)))
    return hash_lines(entries)


def file_status(root: Path, sums: dict[str, str], verify_hashes: bool) -> dict[str, str]:
    """``ok`` / ``missing`` / ``mismatch`` per listed file (hashes compared only when asked)."""
    files: dict[str, str] = {}
    for rel, sha in sorted(sums.items()):
        p = root / rel
        if not p.is_file():
            files[rel] = "missing"
        else:
            files[rel] = "mismatch" if verify_hashes and sha256_file(p) != sha else "ok"
    return files
