"""How a batch of log-likelihood requests is scored: the shared prefix or one full forward per pair.

Two strategies give the same scores (tested, fp32 atol 1e-4):

``shared_prefix``  each context runs once (left-padded, logits of its last position only), its
                   KV cache is repeated per continuation, and the continuations run in a second
                   forward against it. Fewer tokens: the context is not repeated per choice.
``full_forward``   one forward of every (context, continuation) pair, contexts left-padded to
                   one width and continuations after them. One forward instead of two.

Which is faster depends on the device. A forward whose time grows with its tokens
(compute-bound: any CPU, a GPU at large batches) favours the shared prefix; a forward whose
time is flat in its tokens (a GPU at small batches reads every weight once per forward, and an
eager forward of a large model is bound by the host) favours one forward. The engine chooses
per batch from a cost model of one forward, ``t(tokens)``:

* on a CPU, ``t`` is proportional to the tokens (compute-bound at every batch size, measured:
  docs/performance.md), so the strategy with fewer tokens wins, ties going to one forward;
* on an accelerator, ``t`` is measured once: forwards of 32, 128, 512, ... tokens until the time
  has grown 4x (or 8192 tokens), interpolated piecewise-linearly, proportional beyond. The
  measurement is kept in xlsteer's cache folder per model fingerprint, device, dtype and torch
  version, so every later engine and re-run on the machine makes the same choices (and writes
  the same bytes); a data-parallel launch uses rank 0's.

Predicted costs ignore attention (short sequences) and the head (the same rows either way).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

STRATEGIES = ("shared_prefix", "full_forward")
PROBE_WIDTH = 32
MAX_PROBE_TOKENS = 8192
_MEASURED: dict[str, "ForwardCost"] = {}  # per calibration key, this process (the file is the record)


@dataclass(frozen=True)
class ForwardCost:
    """``t(tokens)`` of one forward: measured points (tokens, seconds), or proportional to tokens."""

    points: tuple[tuple[int, float], ...] = ()

    def __call__(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        pts = self.points
        if not pts:
            return float(tokens)  # compute-bound: cost in units of one token
        if tokens <= pts[0][0]:
            return pts[0][1]
        for (n0, t0), (n1, t1) in zip(pts, pts[1:]):
            if tokens <= n1:
                return t0 + (t1 - t0) * (tokens - n0) / (n1 - n0)
        n, t = pts[-1]
        return t * tokens / n

    def describe(self) -> dict[str, Any]:
        if not self.points:
            return {"model": "proportional to tokens (compute-bound)"}
        return {"model": "measured, piecewise linear", "ms_by_tokens": {str(n): round(1000 * t, 3) for n, t in self.points}}


def batch_tokens(enc: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]) -> dict[str, list[int]]:
    """Tokens fed per forward by each strategy for one batch (padded widths, as the engine pads)."""
    width = max(len(ctx) for ctx, _ in enc)
    conts = [c for _, cs in enc for c in cs]
    longest = max(len(c) for c in conts)
    shared = [len(enc) * width] + ([len(conts) * (longest - 1)] if longest > 1 else [])
    return {"shared_prefix": shared, "full_forward": [len(conts) * (width + longest - 1)]}


def choose(enc: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], cost: ForwardCost) -> str:
    """The cheaper strategy for this batch under ``cost`` (a tie goes to one forward)."""
    forwards = batch_tokens(enc)
    shared = sum(cost(n) for n in forwards["shared_prefix"])
    full = sum(cost(n) for n in forwards["full_forward"])
    return "full_forward" if full <= shared else "shared_prefix"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: Any, device: torch.device, budget_s: float = 5.0) -> ForwardCost:
    """Time forwards (no head, no cache) of ``PROBE_WIDTH``-token rows: 1, 4, 16, ... rows until the
    time has grown 4x over the smallest, ``MAX_PROBE_TOKENS`` is reached or ``budget_s`` is spent."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    g = torch.Generator().manual_seed(0)
    points: list[tuple[int, float]] = []
    start = time.perf_counter()
    rows = 1
    with torch.inference_mode():
        while rows * PROBE_WIDTH <= MAX_PROBE_TOKENS:
            ids = torch.randint(min(10, vocab - 1), vocab, (rows, PROBE_WIDTH), generator=g).to(device)
            times = []
            for _ in range(3 if not points else 2):  # the first size also warms up
                _sync(device)
                t0 = time.perf_counter()
                model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1)
                _sync(device)
                times.append(time.perf_counter() - t0)
            points.append((rows * PROBE_WIDTH, min(times)))
            if points[-1][1] >= 4 * points[0][1] or time.perf_counter() - start > budget_s:
                break
            rows *= 4
    return ForwardCost(tuple(points))


def _key(model: Any, fingerprint: Any, device: torch.device) -> str:
    dtype = next(model.parameters()).dtype
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    raw = json.dumps([fingerprint, name, str(dtype), torch.__version__], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:24]


def forward_cost(model: Any, fingerprint: Any, device: torch.device) -> ForwardCost:
    """The cost model for ``model`` on ``device``: proportional on a CPU; else measured once and kept."""
    if device.type == "cpu":
        return ForwardCost()
    key = _key(model, fingerprint, device)
    if key in _MEASURED:
        return _MEASURED[key]
    path = _calibration_path(key)
    cost = _read(path)
    if cost is None:
        from ..distributed import current as current_dist

        cost = measure(model, device)
        dist = current_dist()
        if dist.active:  # every process must choose as rank 0 does (the same batches, the same bytes)
            cost = dist.gather(cost)[0]
        _write(path, cost)
    _MEASURED[key] = cost
    return cost


def _calibration_path(key: str) -> Any:
    from ..models.shipped import cache_dir

    return cache_dir() / "calibration" / f"forward-{key}.json"


def _read(path: Any) -> ForwardCost | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return ForwardCost(tuple((int(n), float(t)) for n, t in doc["points"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Any, cost: ForwardCost) -> None:
    """Keep the measurement (best effort: an unwritable cache folder only costs a re-measurement)."""
    from ..io import atomic_write_json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"format": "xlsteer.forward-cost/1", "points": [list(p) for p in cost.points]})
    except OSError:
        pass
