"""Progress reporting owned by the caller: the library only asks for a bar, the CLI decides to show it."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    """Off with XLSTEER_QUIET=1, and on every process but rank 0 of a data-parallel launch."""
    if os.environ.get("RANK", "0").strip() not in ("", "0"):
        return False
    return os.environ.get("XLSTEER_QUIET", "") not in ("1", "true", "yes")


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A bar with rate and ETA on stderr, or the bare iterable when progress is disabled."""
    if not enabled():
        yield from iterable
        return
    yield from tqdm(iterable, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False)


def bar(total: int, desc: str = "", unit: str = "it") -> tqdm:
    """A manually advanced bar (e.g. tokens or items inside batches)."""
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False, disable=not enabled())


def stage(log: Callable[[str], None], name: str) -> Callable[[], None]:
    """Log ``[name] ...`` now; the returned function logs ``[name] done in X s`` (a pipeline's stages)."""
    import time

    t0 = time.perf_counter()
    log(f"[{name}] ...")
    return lambda: log(f"[{name}] done in {time.perf_counter() - t0:.1f} s")
