"""Crash-safe file output and safe tensor I/O (safetensors + JSON metadata only; never pickle)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    import torch

from .errors import ArtifactError, UsageError
from .validation import MAX_DEPTH, json_depth_exceeds, non_finite_field


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any work) when an output path cannot be written."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise UsageError(f"output path {p} is a directory; give a file name, e.g. {p}/out.json")
    if p.exists() and not p.is_file():  # a device, FIFO or socket: renaming over it would replace the node
        raise UsageError(f"output path {p} is not a regular file (a device, pipe or socket); give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot write {p}: {probe} is a file, not a directory; choose another output path")
    if not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write {p}: directory {probe} is not writable; choose another output path")
    # os.access says yes to root on read-only file systems (/proc, ro mounts): really try
    try:
        fd, name = tempfile.mkstemp(prefix=".xlsteer-probe.", suffix=".tmp", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UsageError(f"cannot write {p}: directory {probe} is not writable ({e.strerror}); "
                         "choose another output path") from None
    return p


def _identity(p: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing path (what a hard link shares), else None."""
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _resolved(p: Path) -> Path:
    try:
        return p.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return p.expanduser().absolute()


def _files_of(folder: Path, limit: int = 20000) -> set[tuple[int, int]]:
    """(device, inode) of the files under ``folder`` (bounded: a huge tree is only partly scanned)."""
    out: set[tuple[int, int]] = set()
    for base, _dirs, files in os.walk(folder):
        for name in files:
            ident = _identity(Path(base) / name)
            if ident is not None:
                out.add(ident)
            if len(out) >= limit:
                return out
    return out


def check_outputs_spare_inputs(outputs: Iterable[str | os.PathLike | None],
                               inputs: Iterable[str | os.PathLike | None], *,
                               replaceable: Callable[[Path], bool] | None = None,
                               folders: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, before any work, an output that would overwrite (or replace) one of the command's inputs.

    Why: ``-o`` naming an input was accepted and destroyed it (an intervention became GGUF, a
    results file became Markdown). An output collides with an input file when both resolve to the
    same path (symlinks, ``..``) or share an inode (hard links); with an input directory (a model
    folder, a corpus folder, the data dir) when it would replace an existing file inside it.
    Paths that are ``None`` are skipped, so callers can pass optional options as they are.

    ``replaceable``: an existing file inside an input directory that the command may replace
    anyway (its own earlier output there, e.g. ``RUN_DIR/report.html``). ``folders``: output
    directories the command writes new files into; one that is, or lies inside, an input
    directory (or is an input file) is refused too.
    """
    ins = [Path(i) for i in inputs if i is not None and str(i) != ""]
    for folder in (Path(f) for f in folders if f is not None and str(f) != ""):
        real = _resolved(folder)
        for given in ins:
            resolved = _resolved(given)
            if real == resolved or (given.is_dir() and resolved in real.parents):
                what = "input directory" if given.is_dir() else "input file"
                raise UsageError(f"output folder {folder} is or lies inside the {what} {given}; writing there could "
                                 "replace what the command reads, choose an output folder outside it")
    in_files = [(i, _resolved(i), _identity(i)) for i in ins if not i.is_dir()]
    in_dirs = [(i, _resolved(i)) for i in ins if i.is_dir()]
    dir_files: dict[Path, set[tuple[int, int]]] = {}
    for out in (Path(o) for o in outputs if o is not None and str(o) != ""):
        real, ident = _resolved(out), _identity(out)
        for given, resolved, in_ident in in_files:
            if real == resolved or (ident is not None and ident == in_ident):
                raise UsageError(f"output {out} is the input file {given}; writing it would destroy the input, "
                                 "choose another output path")
        for given, resolved in in_dirs:
            inside = real == resolved or resolved in real.parents
            if inside and out.exists() and not (replaceable is not None and replaceable(real)):
                raise UsageError(f"output {out} would replace {real.relative_to(resolved) if real != resolved else '.'}"
                                 f" of the input directory {given}; choose an output path outside it")
            if ident is None or inside:  # inside: refused above unless replaceable (then it is itself, not a link)
                continue
            if resolved not in dir_files:
                dir_files[resolved] = _files_of(resolved)
            if ident in dir_files[resolved]:
                raise UsageError(f"output {out} is a hard link to a file of the input directory {given}; "
                                 "writing it would destroy that file, choose another output path")


def files_written_into(folder: str | os.PathLike, patterns: Iterable[str]) -> list[Path]:
    """The files a command writing ``patterns`` (names or globs) into ``folder`` would create or replace."""
    root = Path(folder)
    out: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            out.extend(root.glob(pattern) if root.is_dir() else [])
        else:
            out.append(root / pattern)
    return out


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temp files of ``path`` left by writers that were killed (their process is gone).

    Temp names carry the writer's pid (``.<name>.<pid>.<random>.tmp``), so a live writer's
    file is never touched.
    """
    p = Path(path)
    removed = []
    for tmp in p.parent.glob(f".{glob.escape(p.name)}.*.tmp"):
        pid = tmp.name[len(p.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, validate: Callable[[Path], Any] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    ``validate(tmp)`` reads the finished temp file back (with the reader of its kind) before the
    rename and raises when it is bad, so a good file at ``path`` is never replaced by a bad one.
    The temp file is removed on any error; one left by a killed process (SIGKILL, power loss) is
    removed by the next successful write of the same path. The final file gets the usual
    permissions (0666 minus the umask), not mkstemp's 0600.
    """
    p = check_writable(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
    except OSError as e:
        raise UsageError(f"cannot write {p} ({e.strerror or e}); choose another output path") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if validate is not None:
            _validated(validate, tmp_path, p)
        try:
            os.chmod(tmp_path, 0o666 & ~_UMASK)
            os.replace(tmp_path, p)
        except OSError as e:
            raise ArtifactError(f"cannot write {p} ({e.strerror or e}); check the disk and run again") from None
    except OSError as e:  # from the block: disk full, quota, I/O error
        raise ArtifactError(f"cannot write {p} ({e.strerror or e}); check the disk and run again") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    remove_stale_temps(p)


def _validated(validate: Callable[[Path], Any], tmp: Path, target: Path) -> None:
    """Run ``validate`` on the temp file; its refusal names the target, which stays as it was."""
    from .errors import XlsteerError

    try:
        validate(tmp)
    except XlsteerError as e:
        why = " ".join(str(e).replace(str(tmp), str(target)).replace(tmp.name, target.name).split())[:300]
        state = "left unchanged" if target.exists() else "not written"
        raise ArtifactError(f"{target} {state}: the output failed its check before replacing anything ({why})") \
            from None


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """Replace NaN/Inf floats by None so the JSON is standard (and stays byte-stable)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def dumps_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no NaN, two-space indent, trailing newline."""
    return json.dumps(_clean(obj), sort_keys=True, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def atomic_write_text(path: str | os.PathLike, text: str, validate: Callable[[Path], Any] | None = None) -> Path:
    with atomic_path(path, validate) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, validate: Callable[[Path], Any] | None = None) -> Path:
    with atomic_path(path, validate) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, validate: Callable[[Path], Any] | None = None) -> Path:
    return atomic_write_text(path, dumps_json(obj), validate)


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise _NotFinite(text)
    return value


def _no_constant(text: str) -> float:
    raise _NotFinite(text)  # NaN, Infinity, -Infinity: not JSON, and never written by xlsteer


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file written by xlsteer (or by hand): bounded in size before it is read
    (:mod:`xlsteer.bounded`), standard JSON only (no NaN or infinity, no number that overflows),
    nested at most :data:`~xlsteer.validation.MAX_DEPTH` levels; anything else is one line."""
    from .bounded import read_bytes

    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {p} does not exist; check the path")
    raw = read_bytes(p, "json", what, ArtifactError)
    try:
        doc = json.loads(raw.decode("utf-8"), parse_float=_finite_float, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ArtifactError(f"{what} {p} is not UTF-8 text; give a JSON file written by xlsteer") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{what} {p} is malformed JSON (line {e.lineno}: {e.msg}); re-create it") from None
    except _NotFinite as e:
        raise ArtifactError(f"{what} {p} holds the number {str(e)[:40]}, which is not finite; xlsteer writes "
                            "only finite numbers, re-create it") from None
    except ValueError as e:  # an integer of thousands of digits
        raise ArtifactError(f"{what} {p} is malformed JSON ({' '.join(str(e).split())[:100]}); re-create it") from None
    except RecursionError:
        doc = None
        deep = True
    else:
        deep = json_depth_exceeds(doc)
    if deep:
        raise ArtifactError(f"{what} {p} nests JSON deeper than {MAX_DEPTH} levels; give a file written by xlsteer")
    return doc


def save_tensors(path: str | os.PathLike, tensors: dict[str, "torch.Tensor"], metadata: dict[str, Any]) -> Path:
    """Save tensors as safetensors with the metadata as one JSON string inside the file.

    One file carries both, so a tensor can never be separated from its provenance.
    """
    import torch
    from safetensors.torch import save_file
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"tensor {name!r} contains NaN or Inf; refusing to save (check the fit inputs)")
    bad = non_finite_field(metadata)
    if bad is not None:  # JSON would store null, which every later reader of the file refuses
        raise ArtifactError(f"metadata field {bad} of {path} is NaN or infinite; refusing to save (check the inputs)")
    meta = {"xlsteer": dumps_json(metadata)}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    from safetensors import SafetensorError

    with atomic_path(path, validate=lambda tmp: _readable_header(tmp, path)) as tmp:
        try:
            save_file(flat, str(tmp), metadata=meta)
        except SafetensorError as e:  # safetensors reports a full disk as its own error, not OSError
            raise ArtifactError(f"cannot write {path} ({' '.join(str(e).split())[:200]}); check the free disk "
                                "space and run again") from None
    return Path(path)


def load_tensors(path: str | os.PathLike, what: str = "file") -> tuple[dict[str, "torch.Tensor"], dict[str, Any]]:
    """Load a safetensors file written by :func:`save_tensors`; refuse anything else."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from .bounded import check_safetensors_header

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {p} does not exist; check the path")
    check_safetensors_header(p, what)
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("xlsteer")
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ArtifactError(f"{what} {p} is corrupted or truncated ({msg}); re-create it") from None
    if raw is None:
        raise ArtifactError(f"{what} {p} has no xlsteer metadata; it was not written by xlsteer")
    try:
        metadata = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise ArtifactError(f"{what} {p} has malformed metadata; re-create it") from None
    if not isinstance(metadata, dict) or json_depth_exceeds(metadata):
        raise ArtifactError(f"{what} {p} has malformed metadata (not an object, or nested deeper than "
                            f"{MAX_DEPTH} levels); re-create it")
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ArtifactError(f"{what} {p}: tensor {name!r} contains NaN or Inf; re-create it")
    return tensors, metadata


def _readable_header(tmp: Path, path: str | os.PathLike) -> None:
    """A safetensors file just written opens and holds its xlsteer metadata (checked before the rename)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(tmp), framework="pt") as f:
            json.loads((f.metadata() or {})["xlsteer"])
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise ArtifactError(f"{path} does not read back ({type(e).__name__})") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
