"""The evaluation cache: what identifies a steered run, and the JSONL files that hold its results.

Why a module of its own: the engine's batching and forwards do not depend on how results are
keyed and stored. This module says which interventions count as the same (a hash of their
tensors and metadata, strength and creation times left out), how a cache file is appended to
and read back (one writer per file, torn last line dropped, ``.rank*`` siblings of a distributed
run read too), and how an :class:`~xlsteer.evaluation.engine.Engine` finds a request kind's
file and serves results from it (:class:`_CacheLookup`).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..distributed import current as current_dist
from ..errors import XlsteerError, XlsteerWarning
from ..hooks import _as_list  # one rule for "an intervention or a list of them"
from ..io import dumps_json

#: Intervention metadata keys that change between identical fits (left out of the hash): timings,
#: and whether the statistics were collected or read back from a statistics cache.
VOLATILE_META = frozenset({"strength", "provenance", "fit_seconds", "collect_seconds", "statistics_source",
                           "fitted_at", "created"})


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.to(torch.uint8)
    return t.numpy().tobytes()


def intervention_hash(interventions: Any) -> str | None:
    """sha256 of the interventions' tensors and metadata (strength excluded: it is keyed apart)."""
    items = _as_list(interventions)
    if not items:
        return None
    h = hashlib.sha256()
    for iv in items:
        meta = {k: v for k, v in iv.metadata().items() if k not in VOLATILE_META}
        h.update(dumps_json(meta).encode("utf-8"))
        for name in sorted(iv.tensors):
            t = iv.tensors[name]
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode("utf-8"))
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def intervention_info(interventions: Any, positions: str = "all") -> dict[str, Any] | None:
    """What results record about the interventions (method, params, sites, layers, strength, hash)."""
    items = _as_list(interventions)
    if not items:
        return None
    per = []
    for iv in items:
        per.append({
            "method": iv.method,
            "fit": iv.params.get("fit"),
            "params": iv.params,
            "sites": [str(s) for s in iv.sites],
            "layers": iv.layers,
            "strength": iv.strength,
            "languages": list(iv.languages),
            "anchor": iv.anchor,
        })
    out: dict[str, Any] = {"hash": intervention_hash(items), "positions": positions, "interventions": per}
    if len(per) == 1:
        out.update({k: per[0][k] for k in ("method", "params", "layers", "sites", "strength")})
    return out


# --------------------------------------------------------------------------------------------
# the JSONL cache


def _cache_error(folder: Path, e: OSError) -> XlsteerError:
    return XlsteerError(f"cannot use the evaluation cache in {folder} ({e.strerror or e}); pass --cache-dir with a "
                        "writable folder, or --no-cache")


class _Store:
    """One JSONL file of ``{"k": key, "v": value}`` lines (after a header line with the scope);
    ``"s"``, where present, names how the value was computed (the log-likelihood strategy).

    In a data-parallel launch process ``r`` appends to ``<name>.rank<r>.jsonl`` (one writer per
    file); every process, distributed or not, also reads the ``.rank*`` siblings, so a cache
    filled by a distributed run serves a later single-process run and the other way round.
    """

    def __init__(self, path: Path, scope: dict[str, Any], rank: int | None = None):
        self.path = path if rank is None else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")
        self.data: dict[str, Any] = {}
        self.how: dict[str, str] = {}
        try:
            self._open(path, scope)
        except OSError as e:
            raise _cache_error(path.parent, e) from None

    def _open(self, base: Path, scope: dict[str, Any]) -> None:
        base.parent.mkdir(parents=True, exist_ok=True)
        for other in [base, *sorted(base.parent.glob(f"{base.stem}.rank*{base.suffix}"))]:
            if other != self.path and other.exists():
                self._read(other)
        if self.path.exists():
            self._load()
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append([{"scope": scope}])

    def _load(self) -> None:
        end = self._read(self.path)
        if end < self.path.stat().st_size:  # a torn last line (killed mid-write): drop it so appends start clean
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())

    def _read(self, path: Path) -> int:
        """Read the records of ``path`` line by line (bounded: a cache grows with the work, a line
        does not); returns the offset after the last complete line. Lines that do not parse, or
        are longer than any record, are skipped (the engine counts and recomputes them)."""
        from ..bounded import LINE_LIMITS, check_file

        check_file(path, "cache", "evaluation cache", XlsteerError)
        limit, end = LINE_LIMITS["cache"], 0
        with open(path, "rb") as f:
            while line := f.readline(limit + 1):
                if not line.endswith(b"\n"):
                    if len(line) <= limit:
                        break  # torn last line
                    while line and not line.endswith(b"\n"):  # skip a line too long to be a record
                        line = f.readline(limit + 1)
                    end = f.tell()
                    continue
                end = f.tell()
                try:
                    rec = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(rec, dict) and "k" in rec and "v" in rec:
                    self.data[str(rec["k"])] = rec["v"]
                    if isinstance(rec.get("s"), str):
                        self.how[str(rec["k"])] = rec["s"]
        return end

    def _append(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise _cache_error(self.path.parent, e) from None

    def put(self, pairs: list[tuple[str, Any]], how: list[str | None] | None = None) -> None:
        how = how or [None] * len(pairs)
        self._append([{"k": k, "v": v, **({"s": s} if s else {})} for (k, v), s in zip(pairs, how)])
        for (k, v), s in zip(pairs, how):
            self.data[k] = v
            if s:
                self.how[k] = s


class _CacheLookup:
    """The :class:`~xlsteer.evaluation.engine.Engine` methods that find and read its cache files.

    A mixin: it uses the engine's ``cache_dir``, ``lm``, ``model_hash`` and ``max_length``, and
    notes in ``_how`` how each result served from a file was computed.
    """

    def _store(self, kind: str, params: dict[str, Any], scope: dict[str, Any] | None,
               interventions: list[Any], positions: str, anchor: str | None, create: bool = True) -> _Store | None:
        if self.cache_dir is None:
            return None
        full = {
            "format": "xlsteer.eval-cache/1",
            "kind": kind,
            "params": params,
            "scope": scope or {},
            "model": {"name": self.lm.name, "fingerprint_sha256": self.model_hash},
            "intervention_hash": intervention_hash(interventions),
            "strength": [iv.strength for iv in interventions],
            "positions": positions if interventions else None,
            "anchor": anchor if interventions else None,
            "max_length": self.max_length,
        }
        digest = hashlib.sha256(dumps_json(full).encode("utf-8")).hexdigest()
        dist = current_dist()
        path = self.cache_dir / f"{kind}-{digest[:24]}.jsonl"
        if not create and not (path.exists() or any(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))):
            return None
        return _Store(path, full, dist.rank if dist.active else None)
    def _cached(self, kind: str, params: dict[str, Any], scope: dict[str, Any] | None, ivs: list[Any],
                positions: str, anchor: str | None, langs: Sequence[str], keys: Sequence[str] | None,
                decode: Callable[[Any, int], Any]) -> tuple[list[Any], set[int], _Store | None]:
        """Results served from the cache, the rows not served by the unsteered anchor cache, and the store.

        A line whose value does not decode (or fails the kind's checks) is skipped, so that row is
        computed again; one warning says how many.
        """
        n = len(langs)
        results: list[Any] = [None] * n
        universe = set(range(n))
        poisoned: list[str] = []

        def cached(i: int, raw: Any) -> Any:
            try:
                return decode(raw, i)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError):
                poisoned.append(str(keys[i]))  # type: ignore[index]
                return None

        if ivs and anchor is not None and keys is not None and self.cache_dir is not None:
            # Anchor rows are never steered: where the unsteered run of the same requests is in
            # the cache, its results are the anchor rows' results (exactly, bit for bit), and a
            # steered run (sweep grid point, method) does not compute them again.
            plain = self._store(kind, params, scope, [], positions, anchor, create=False)
            for i in range(n if plain is not None else 0):
                if langs[i] == anchor and keys[i] in plain.data:  # type: ignore[union-attr]
                    results[i] = cached(i, plain.data[keys[i]])  # type: ignore[union-attr]
                    if results[i] is not None:
                        universe.discard(i)
                        self._how[i] = plain.how.get(keys[i])  # type: ignore[union-attr]
        store = self._store(kind, params, scope, ivs, positions, anchor) if keys is not None else None
        if store is not None:
            for i in universe:
                if keys[i] in store.data:  # type: ignore[index]
                    results[i] = cached(i, store.data[keys[i]])  # type: ignore[index]
                    self._how[i] = store.how.get(keys[i])  # type: ignore[index]
        if poisoned:
            warnings.warn(f"{len(poisoned)} malformed line(s) of the evaluation cache in {self.cache_dir} "
                          f"(e.g. item {poisoned[0]}) were skipped and are computed again", XlsteerWarning,
                          stacklevel=3)
        return results, universe, store
