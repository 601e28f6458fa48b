"""Decoding settings of generation requests, and the one function that picks the next tokens.

Why a settings record: how a continuation was decoded is part of what its score means. Greedy
decoding (the default) and nucleus sampling (LCB's upstream setting: T = 0.3, p = 0.75) must
never share cached outputs, and a result must say which one produced it; :class:`Sampling`
is frozen, validated once, and :meth:`Sampling.describe` is what enters the engine's cache key
and the result file.

Why per-row random streams: a sampled output must be reproducible item by item. Each row draws
from its *own* generator, seeded by :func:`row_seed` from the sampling seed and the row's key
(the request's cache key, e.g. ``"de/lcb/okapi/17"``; the prompt text when there is none), and
draws exactly one uniform number per decoding step. So a row's output does not depend on its
batch, the batch size, its padding or on which other rows run; the unsteered and the steered
output of an item use the same stream (they are *paired*: any difference comes from the
intervention, not from luck); and a re-run gives the same bytes.

How a token is drawn (:func:`next_tokens`): logits (optionally restricted to the allowed tokens
of the row's script, :mod:`xlsteer.evaluation.script_gate`) are divided by the temperature, the
nucleus is the smallest set of most probable tokens whose mass reaches ``top_p`` (the rule of
transformers' ``TopPLogitsWarper``: a token is kept when the mass of the tokens strictly more
probable than it is below ``top_p``; the most probable token is always kept), and the row's
uniform number ``u`` picks the token by inverse CDF over the renormalised nucleus (sorted by
probability, ties by token id, higher first). Drawing ``u`` on the CPU makes the random stream independent of
the device; only the probabilities are computed where the logits are.

The script gate (``gate="script"``) is a decoding setting too: it changes the output, so it
enters the cache key and the result's provenance like temperature and ``top_p``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import UsageError

if TYPE_CHECKING:  # torch is imported where tokens are chosen: templates carry Sampling without it
    import torch

#: ``none``: every token may be generated. ``script``: for rows whose wanted language is not
#: written in Latin script, only tokens of that script, digits, punctuation, whitespace and
#: special tokens (see :mod:`xlsteer.evaluation.script_gate`).
GATES = ("none", "script")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sampling:
    """How a generation request is decoded.

    ``temperature`` 0 (default) is greedy decoding (argmax; ``top_p`` and ``seed`` are then
    irrelevant and left out of :meth:`describe`). Otherwise nucleus sampling with
    ``temperature`` > 0 and ``top_p`` in (0, 1] (1: the whole vocabulary), each row drawing
    from its own stream seeded by (``seed``, the row's key). ``gate``: see :data:`GATES`.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    gate: str = "none"

    def __post_init__(self) -> None:
        t, p = self.temperature, self.top_p
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise UsageError(f"temperature must be a finite number >= 0 (0: greedy), got {t!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p <= 1:
            raise UsageError(f"top_p must be a number in (0, 1] (1: no nucleus cut), got {p!r}")
        s = self.seed
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
            raise UsageError(f"the sampling seed must be an integer in 0..{MAX_SEED}, got {s!r}")
        if self.gate not in GATES:
            raise UsageError(f"unknown decoding gate {self.gate!r}; choose one of {', '.join(GATES)}")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", float(p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity (canonical: greedy settings that decode alike describe alike)."""
        out: dict[str, Any] = {"mode": "greedy"} if self.greedy else {
            "mode": "nucleus", "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
            "stream": "per row: sha256(seed, row key), one uniform draw per step"}
        out["gate"] = self.gate
        return out

    def cache_params(self) -> dict[str, Any] | None:
        """What enters the engine's cache key: None for plain greedy decoding, so caches written
        before sampling existed keep serving greedy runs; else :meth:`describe`."""
        return None if self.greedy and self.gate == "none" else self.describe()

    def replace(self, **changes: Any) -> "Sampling":
        """A copy with ``changes`` (validated; unknown names: a one-line UsageError)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise UsageError(f"unknown sampling setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, base: "Sampling | None" = None, changes: Mapping[str, Any] | None = None) -> "Sampling":
        """``base`` (greedy when None) with ``changes`` applied (None values ignored)."""
        out = base if base is not None else cls()
        given = {k: v for k, v in (changes or {}).items() if v is not None}
        return out.replace(**given) if given else out


GREEDY = Sampling()


def row_seed(seed: int, key: str) -> int:
    """The seed of one row's random stream: the first 8 bytes of sha256(seed, key), as an int < 2**63."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & MAX_SEED


class RowStreams:
    """One CPU ``torch.Generator`` per row; :meth:`uniforms` draws one number in [0, 1) per row.

    Why CPU generators: their sequence is the same on every machine and device, and one draw per
    row per step costs nothing next to a forward pass.
    """

    def __init__(self, seeds: Sequence[int]):
        import torch

        self.generators = []
        for s in seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s))
            self.generators.append(g)

    @classmethod
    def for_keys(cls, seed: int, keys: Sequence[str]) -> "RowStreams":
        return cls([row_seed(seed, k) for k in keys])

    def __len__(self) -> int:
        return len(self.generators)

    def uniforms(self) -> torch.Tensor:
        """(rows,) float64 uniforms, one from each row's stream (every row draws, done or not)."""
        import torch

        return torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])


#: Tokens examined before a full sort of the vocabulary (see :func:`nucleus_keep`).
NUCLEUS_CANDIDATES = 1024
#: How far every cumulative mass among the candidates must be from the cut for the shortcut to
#: be trusted; closer, and the row's decision is taken by the full sort (the reference rule).
NUCLEUS_MARGIN = 1e-4


def nucleus_keep(probs: torch.Tensor, top_p: float,
                 candidates: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sorted probs, their token ids, kept)`` for rows of ``probs``, most probable first.

    Kept: the mass of the tokens strictly before a token (in this order) is below ``top_p``;
    the first token is always kept. Computed as transformers' ``TopPLogitsWarper`` does, in the
    same float arithmetic (ascending cumulative mass, dropped where it is <= 1 - top_p), so the
    kept sets agree exactly, also at ``top_p`` = 1 (nothing dropped).

    Why a shortcut: sorting a 262k-token vocabulary costs more than a decode step of a small model
    on a CPU. The nucleus at LCB's T = 0.3, p = 0.75 holds a handful of tokens, so the rows are
    first decided on their ``candidates`` (default :data:`NUCLEUS_CANDIDATES`) most probable tokens (:func:`_nucleus_keep_top`); the
    columns returned then cover only those, in the same order, and every token left out is
    dropped. Where the shortcut cannot prove it decides exactly as the full sort, the full sort
    decides (:func:`_nucleus_keep_sorted`).
    """
    candidates = NUCLEUS_CANDIDATES if candidates is None else candidates
    if top_p < 1 and candidates < probs.shape[-1]:
        fast = _nucleus_keep_top(probs, top_p, candidates)
        if fast is not None:
            return fast
    return _nucleus_keep_sorted(probs, top_p)


def _nucleus_keep_sorted(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference rule over the whole vocabulary (one stable sort per row)."""
    import torch

    asc, idx = torch.sort(probs, dim=-1, descending=False, stable=True)
    drop = asc.cumsum(-1) <= (1 - top_p)
    drop[..., -1] = False
    return asc.flip(-1), idx.flip(-1), ~drop.flip(-1)  # most probable first (ties: higher id first)


def _nucleus_keep_top(probs: torch.Tensor, top_p: float,
                      k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The reference rule decided on each row's ``k`` most probable tokens, or None where unsure.

    The ascending cumulative mass at a candidate is the mass of every token outside the
    candidates plus the candidates up to it (in float64 here; the reference sums the same values
    in its own order). The answer is exact when every token outside the candidates is dropped and
    no cumulative mass lies within :data:`NUCLEUS_MARGIN` of the cut, far above the rounding of
    either sum, and the ``k``-th most probable token is strictly more probable than the next
    (so the candidates are the same whatever the order of ties). Ties among the candidates keep
    the reference order: candidates in token-id order, then a stable sort.
    """
    import torch

    cut = 1 - top_p
    vals, ids = torch.topk(probs, k + 1, dim=-1)
    if bool((vals[:, k] >= vals[:, k - 1]).any()):
        return None  # a tie at the boundary: which tokens are the candidates depends on tie order
    top = ids[:, :k].sort(dim=-1).values
    sub = probs.gather(-1, top)
    asc, order = torch.sort(sub, dim=-1, descending=False, stable=True)
    outside = probs.sum(-1, keepdim=True, dtype=torch.float64) - sub.sum(-1, keepdim=True, dtype=torch.float64)
    mass = outside + asc.double().cumsum(-1)
    if bool((outside > cut - NUCLEUS_MARGIN).any()) or bool(((mass - cut).abs() < NUCLEUS_MARGIN).any()):
        return None
    drop = mass <= cut
    drop[..., -1] = False
    return asc.flip(-1), top.gather(-1, order).flip(-1), ~drop.flip(-1)


def nucleus_choice(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """(rows,) token ids: inverse-CDF choice by ``u`` (rows,) in [0, 1) over each row's nucleus."""
    import torch

    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sp, si, keep = nucleus_keep(probs, top_p)
    kept = torch.where(keep, sp, torch.zeros_like(sp)).double()
    cdf = kept.cumsum(-1)
    target = (u.to(device=cdf.device, dtype=torch.float64) * cdf[:, -1]).unsqueeze(1)
    j = torch.searchsorted(cdf, target, right=True)
    last = keep.sum(-1, keepdim=True) - 1  # never past the nucleus (float rounding at u -> 1)
    j = torch.minimum(j, last)
    return si.gather(1, j).squeeze(1)


def next_tokens(logits: torch.Tensor, sampling: Sampling, streams: RowStreams | None = None,
                allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The next token of each row from its last-position ``logits`` (rows, vocab).

    ``allowed`` (rows, vocab) bool, or None: tokens outside it are never chosen (the script
    gate). Greedy: argmax (bit for bit the engine's greedy rule). Sampling: one draw from each
    row's stream in ``streams``. Both the eager and a compiled decoding loop call this.
    """
    x = logits
    if allowed is not None:  # -inf: never chosen by argmax, probability 0 after the softmax
        x = x.masked_fill(~allowed.to(x.device), float("-inf"))
    if sampling.greedy:
        return x.argmax(-1)
    if streams is None or len(streams) != x.shape[0]:
        raise ValueError("sampling needs one random stream per row")
    return nucleus_choice(x, sampling.temperature, sampling.top_p, streams.uniforms())


class RowDecoding:
    """The decoding state of one batch: settings, the rows' streams, and (lazily) the script gate.

    ``keys``: each row's stream key (its cache key); ``langs``: each row's wanted language (the
    script gate's input); ``tokenizer``: whose vocabulary the gate classifies. The gate's masks
    are built at the first step, when the logits' width is known.
    """

    def __init__(self, sampling: Sampling, keys: Sequence[str], langs: Sequence[str], tokenizer: Any = None):
        self.sampling = sampling
        self.streams = None if sampling.greedy else RowStreams.for_keys(sampling.seed, keys)
        self._gate = (tokenizer, list(langs)) if sampling.gate == "script" else None
        self.allowed: torch.Tensor | None = None

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """(rows,) next tokens from the last-position ``logits`` (rows, vocab)."""
        if self._gate is not None:
            from .script_gate import row_masks

            tokenizer, langs = self._gate
            self.allowed = row_masks(tokenizer, langs, int(logits.shape[-1]), logits.device)
            self._gate = None
        return next_tokens(logits, self.sampling, self.streams, self.allowed)
