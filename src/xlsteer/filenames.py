"""File names made from data, and writes kept inside their output folder.

Why: names of figures and files are built from fields of records (an analysis file's
intervention and method names, a task or metric name, a result file's stem). A field holding
``../``, an absolute path, a NUL byte or ten thousand characters must not become a path that
escapes the output folder, fails in the operating system or overwrites something else. Every
name derived from data goes through :func:`slug`; every write of such a name goes through
:func:`confined`, which resolves the path and refuses it outside its folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from .errors import ArtifactError

#: The longest slug (file systems allow 255 bytes per name; prefixes and suffixes are added).
MAX_SLUG = 80


def slug(text: Any, max_len: int = MAX_SLUG) -> str:
    """``text`` as a safe part of a file name: lower-case ASCII letters, digits and ``-``.

    Runs of anything else become one ``-`` (so ``/``, ``..``, NUL and spaces never survive);
    a name that would be empty or longer than ``max_len`` keeps a short hash of the original,
    so distinct long or non-ASCII names do not collide. ``"Diff Mean@6"`` -> ``diff-mean-6``.
    """
    raw = str(text)
    out = re.sub(r"[^A-Za-z0-9]+", "-", raw).strip("-").lower()
    if out and len(out) <= max_len:
        return out
    digest = hashlib.sha256(raw.encode("utf-8", errors="replace")).hexdigest()[:10]
    return f"{out[: max_len - 11].strip('-')}-{digest}" if out else f"x-{digest}"


def confined(folder: str | os.PathLike, name: str) -> Path:
    """``folder / name``, refused unless it resolves to a file strictly inside ``folder``.

    The last defence of every write whose name came from data (after :func:`slug`): ``..``
    components, absolute names, symlinks out of the folder and NUL bytes are refused with one
    line instead of writing elsewhere.
    """
    root = Path(folder)
    if "\x00" in str(name) or not str(name) or len(str(name).encode("utf-8", errors="replace")) > 255:
        raise ArtifactError(f"refusing to write a file named {str(name)[:60]!r} in {root}: not a usable file name")
    path = root / name
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real_root not in real.parents:
        raise ArtifactError(f"refusing to write {str(name)[:60]!r}: it would land outside {root}")
    return path
