"""Reading user files at the boundary, with limits: size before a byte is read, lines one at a time.

Why: every file xlsteer reads is user input (results, task specs and their JSONL/CSV data,
intervention metadata, the per-item cache, control vectors). Read whole, a 1 GiB sparse spec
took 2 GB of memory before its one-line error; a FIFO or ``/dev/zero`` given as a file never
ends. Here a file must be a regular file no larger than its kind's limit (checked with ``stat``
before it is opened), is read with a cap even if it grows meanwhile, and line-oriented files are
streamed with a bound on each line, so memory stays bounded by the limits whatever the file
holds. Depth of parsed JSON is bounded by :mod:`xlsteer.validation` before anything walks it.

The limits are generous for files xlsteer writes; ``XLSTEER_MAX_INPUT_MB`` raises (or lowers)
every file-size limit at once.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from .errors import DataError, XlsteerError

MB = 1 << 20
ENV_VAR = "XLSTEER_MAX_INPUT_MB"

#: Largest file of each kind (bytes). A results file with per-item records of 15 languages x
#: 1,000 items is ~50 MB; a task spec a few hundred bytes; a control vector a few hundred KB.
FILE_LIMITS = {
    "json": 512 * MB,       # results, sweeps, comparisons, analysis, control, categories, upgrade input
    "spec": 1 * MB,         # a YAML task spec
    "lines": 256 * MB,      # JSONL task data, TSV/CSV data, parallel text, SHA256SUMS
    "cache": 4096 * MB,     # the per-item evaluation cache (streamed; grows with the work done)
    "gguf": 512 * MB,       # a llama.cpp control vector
}
#: Longest line of a line-oriented file (bytes): one record, one text, one cache entry.
LINE_LIMITS = {"lines": 8 * MB, "cache": 64 * MB}
#: Largest JSON metadata header of a safetensors file (safetensors' own limit is 100 MB).
SAFETENSORS_HEADER = 100 * MB


def file_limit(kind: str) -> int:
    """The size limit of ``kind`` (``XLSTEER_MAX_INPUT_MB`` overrides every kind's)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            value = float(env)
        except ValueError:
            value = -1.0
        if not 0 < value < 1e9:
            raise XlsteerError(f"{ENV_VAR}={env!r} is not a size in MB; set it to a positive number, e.g. 2048")
        return int(value * MB)
    return FILE_LIMITS[kind]


def _mb(n: int) -> str:
    return f"{n / MB:,.1f} MB" if n >= MB else f"{n:,} bytes"


def check_file(path: str | os.PathLike, kind: str, what: str = "file",
               error: type[XlsteerError] = DataError) -> int:
    """The size of ``path``, after checking it is a regular file within ``kind``'s limit."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise error(f"cannot read {what} {p} ({e.strerror or e}); check the path") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {p} is not a regular file (a directory, device, pipe or socket); give a file")
    limit = file_limit(kind)
    if st.st_size > limit:
        raise error(f"{what} {p} is {_mb(st.st_size)}, more than the {_mb(limit)} a {what} may have; give the "
                    f"right file, or raise the limit with {ENV_VAR}=<MB>")
    return st.st_size


def read_bytes(path: str | os.PathLike, kind: str, what: str = "file",
               error: type[XlsteerError] = DataError) -> bytes:
    """The whole file, when it is a regular file within ``kind``'s limit (read with that cap)."""
    check_file(path, kind, what, error)
    limit = file_limit(kind)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e}); check the path and its permissions") from None
    if len(data) > limit:  # it grew after the check
        raise error(f"{what} {path} is more than the {_mb(limit)} a {what} may have; give the right file")
    return data


def iter_lines(path: str | os.PathLike, kind: str = "lines", what: str = "file",
               error: type[XlsteerError] = DataError, *, skip_long: bool = False) -> Iterator[tuple[int, bytes]]:
    """``(line number, line without its end of line)`` of a line-oriented file, one at a time.

    A line longer than the kind's line limit is an error naming the line (``skip_long``: it is
    yielded as ``b""`` instead, for readers that skip what they cannot use, such as the cache).
    """
    check_file(path, kind, what, error)
    limit = LINE_LIMITS[kind]
    try:
        f = open(path, "rb")
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e}); check the path and its permissions") from None
    with f:
        n = 0
        while True:
            line = f.readline(limit + 1)
            if not line:
                return
            n += 1
            if len(line) > limit and not line.endswith(b"\n"):
                if not skip_long:
                    raise error(f"{what} {path} line {n} is longer than {_mb(limit)}; give one record per line")
                while line and not line.endswith(b"\n"):  # the rest of the long line, in bounded pieces
                    line = f.readline(limit + 1)
                yield n, b""
                continue
            yield n, line.rstrip(b"\n").removesuffix(b"\r")


def check_safetensors_header(p: Path, what: str = "file") -> None:
    """The header length a safetensors file starts with is bounded before the file is parsed."""
    import struct

    from .errors import ArtifactError

    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ArtifactError(f"cannot read {what} {p} ({e.strerror or e}); check the path") from None
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if not 0 < n <= min(SAFETENSORS_HEADER, size - 8):
        raise ArtifactError(f"{what} {p} is corrupted or truncated (header of {n if n >= 0 else 'no'} bytes in a file "
                            f"of {size}); re-create it")
