"""How a learned steering vector is trained (used by :func:`xlsteer.interventions.learned.fit_learned`):
pooled states read through the hook engine, a frozen model, Adam on one vector per layer with
a seeded batch order, dev-loss early stopping, and the DiffMean initialisation.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError, UsageError
from ..hook_session import Rows
from ..hook_session import ForwardContext
from ..hooks import record, steer
from ..models.sites import Site, site_width
from ..progress import bar
from ..stats import positions_from_mask
from .task_objective import task_loss
from .base import add_rows, check_width
from .vector import SteeringVector, vector_key


class TrainableSteeringVector(SteeringVector):
    """A SteeringVector whose tensors may require grad: nothing is cached, the table is rebuilt from
    the leaf tensor at every call (``prepare`` in the base class caches a detached cast once per
    install), so gradients reach the vector through the engine's ``where(mask, new, act)``."""

    def prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        return None

    def apply(self, site: Site, act: torch.Tensor, rows: Rows, prepared: Any) -> torch.Tensor:
        v = self.tensors[vector_key(site.layer)]
        check_width(self, site, act, v.shape[-1])
        table = torch.cat([v.float(), torch.zeros_like(v[:1], dtype=torch.float32)]).to(act.device)
        return add_rows(act, rows, table)


class _Stop(Exception):
    """Raised by a reader to end a forward pass once the state it needs is captured."""


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Every parameter ``requires_grad=False`` inside the block; the previous flags are restored."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _encode(tok: Any, texts: Sequence[str], max_length: int, device: torch.device, exclude_bos: bool):
    enc = tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    ids = enc["input_ids"].to(device)
    mask = enc["attention_mask"].to(device)
    count = mask.bool()
    bos = getattr(tok, "bos_token_id", None)
    if exclude_bos and bos is not None:
        count = count & (ids != bos)
    return ids, mask, count


def _pool(act: torch.Tensor, count: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d) -> (B, d): mean over counted tokens, or the last counted token (as Statistics)."""
    x = act.float()
    m = count.to(device=x.device, dtype=x.dtype)
    if pooling == "mean":
        return torch.einsum("bt,btd->bd", m, x) / m.sum(1).clamp_min(1).unsqueeze(1)
    t = x.shape[1]
    last = torch.where(count.to(x.device), torch.arange(t, device=x.device), -1).max(1).values.clamp_min(0)
    return x[torch.arange(x.shape[0], device=x.device), last]


def _state_at(
    lm: Any,
    texts: Sequence[str],
    site: Site,
    pooling: str,
    max_length: int,
    exclude_bos: bool,
    intervention: Any = None,
    lang: str | None = None,
    anchor: str | None = None,
) -> torch.Tensor:
    """Pooled activation at ``site`` for one batch; the forward stops right after ``site``."""
    model, tok = lm.model, lm.tokenizer
    ids, mask, count = _encode(tok, texts, max_length, _device(model), exclude_bos)
    got: dict[str, torch.Tensor] = {}

    def reader(s: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        got["act"] = act
        raise _Stop

    ctx = (
        steer(model, intervention, langs=lang, anchor=anchor, readers=[([site], reader)])
        if intervention is not None
        else record(model, [site], reader)
    )
    with ctx:
        try:
            model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1)
        except _Stop:
            pass
    if "act" not in got:
        raise UsageError(f"site {site} was never reached in the forward pass; check the layer")
    return _pool(got["act"], count, pooling)


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def split_rows(n: int, dev_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if not 0 < dev_fraction < 1:
        raise UsageError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    if n < 2:
        raise DataError(f"need at least 2 training items to hold out a dev split, got {n}; give more items")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    n_dev = min(n - 1, max(1, round(n * dev_fraction)))
    return sorted(perm[n_dev:]), sorted(perm[:n_dev])


def _diffmean_init(
    lm: Any, texts: dict[str, list[str]], rows: list[int], lang: str, anchor: str, sites: list[Site],
    pooling: str, batch_size: int, max_length: int, exclude_bos: bool,
) -> dict[int, torch.Tensor]:
    """DiffMean on the training rows (same pooling as the objective)."""
    out = {}
    with torch.no_grad():
        for site in sites:
            sums = {}
            for which in (anchor, lang):
                total = None
                for b in _batches(len(rows), batch_size):
                    chunk = [texts[which][rows[i]] for i in b]
                    pooled = _state_at(lm, chunk, site, pooling, max_length, exclude_bos).double().sum(0)
                    total = pooled if total is None else total + pooled
                sums[which] = total / len(rows)
            out[site.layer] = (sums[anchor] - sums[lang]).float()
    return out


def _site_scale(lm: Any, texts: Sequence[str], sites: list[Site], max_length: int, exclude_bos: bool) -> float:
    """Per-coordinate RMS activation at the steered sites (mean over sites) on one batch."""
    model, tok = lm.model, lm.tokenizer
    ids, mask, count = _encode(tok, texts, max_length, _device(model), exclude_bos)
    vals: list[float] = []

    def reader(s: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        x = act.float()[count]
        vals.append(float(x.pow(2).mean().sqrt()))

    with torch.no_grad(), record(model, sites, reader):
        model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=1)
    return float(sum(vals) / max(len(vals), 1)) or 1.0


@dataclass
class TrainingRun:
    """The settings every target language is trained with (one seeded batch order across languages)."""

    lm: Any
    anchor: str
    layer_list: list[int]
    sites: list[Site]
    site: str
    pooling: str
    max_length: int
    exclude_bos: bool
    batch_size: int
    steps: int
    lr: float
    eval_every: int
    patience: int
    min_delta: float
    train_rows: list[int]
    dev_rows: list[int]
    gen: torch.Generator


def objective_loss(run: TrainingRun, lang: str, objective: str, texts: Any, examples: Any, target_site: Site | None,
               anchor_states: torch.Tensor | None) -> tuple[Callable[[list[int], Any], torch.Tensor], list[str]]:
    """(loss of a batch of rows under a vector, a sample of training inputs for the step-size scale)."""
    lm, anchor, max_length = run.lm, run.anchor, run.max_length
    if objective == "align":
        assert target_site is not None and anchor_states is not None

        def loss_on(rows: list[int], iv: Any) -> torch.Tensor:
            pooled = _state_at(
                lm, [texts[lang][i] for i in rows], target_site, run.pooling, max_length, run.exclude_bos, iv, lang,
                anchor
            )
            return F.mse_loss(pooled, anchor_states[rows].to(pooled.device))

        return loss_on, [texts[lang][i] for i in run.train_rows[:run.batch_size]]
    ex = examples[lang]

    def task_loss_on(rows: list[int], iv: Any) -> torch.Tensor:
        return task_loss(lm, [ex[i] for i in rows], max_length, iv, lang, anchor)

    return task_loss_on, [ex[i][0] for i in run.train_rows[:run.batch_size]]


def initial_vector(run: TrainingRun, init: Any, lang: str, objective: str,
                    parallel_texts: dict[str, list[str]] | None) -> dict[int, torch.Tensor]:
    if isinstance(init, SteeringVector):
        if lang not in init.languages:
            raise UsageError(f"the init vector has no language '{lang}'; fit it for that language")
        return {layer: init.effective(layer)[init.languages.index(lang)] * init.strength for layer in run.layer_list}
    if init == "diffmean":
        assert parallel_texts is not None
        rows_p = run.train_rows if objective == "align" else list(range(len(parallel_texts[run.anchor])))
        return _diffmean_init(run.lm, parallel_texts, rows_p, lang, run.anchor, run.sites, run.pooling,
                              run.batch_size, run.max_length, run.exclude_bos)
    width = site_width(run.lm.model, run.site)
    return {layer: torch.zeros(width) for layer in run.layer_list}


def train_language(run: TrainingRun, lang: str, loss_on: Callable[[list[int], Any], torch.Tensor], sample: list[str],
           start: dict[int, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[str, Any], float]:
    """Adam from ``start``; the vector with the lowest dev loss, the loss history, the step-size scale."""
    dev = _device(run.lm.model)
    params = {layer: start[layer].detach().clone().float().reshape(1, -1).to(dev).requires_grad_(True)
              for layer in run.layer_list}
    iv = TrainableSteeringVector(sites=run.sites, tensors={vector_key(layer): p for layer, p in params.items()},
                                 params={"normalize": "none"}, languages=[lang], anchor=run.anchor)
    scale = _site_scale(run.lm, sample, run.sites, run.max_length, run.exclude_bos)
    opt = torch.optim.Adam(list(params.values()), lr=run.lr * scale)

    def dev_loss() -> float:
        with torch.no_grad():
            total, count = 0.0, 0
            for b in _batches(len(run.dev_rows), run.batch_size):
                rows = [run.dev_rows[i] for i in b]
                total += float(loss_on(rows, iv)) * len(rows)
                count += len(rows)
        return total / count

    best = dev_loss()
    best_step = 0
    best_vec = {layer: p.detach().clone() for layer, p in params.items()}
    train_hist: list[float] = []
    dev_hist: list[list[float]] = [[0, best]]
    bad = 0
    stopped_early = False
    order: list[int] = []
    with bar(run.steps, f"learn {lang}", "step") as pbar:
        for step in range(1, run.steps + 1):
            if len(order) < run.batch_size:
                order += [run.train_rows[i] for i in torch.randperm(len(run.train_rows), generator=run.gen).tolist()]
            rows, order = order[:run.batch_size], order[run.batch_size:]
            opt.zero_grad(set_to_none=True)
            loss = loss_on(rows, iv)
            loss.backward()
            opt.step()
            value_now = float(loss.detach())
            train_hist.append(value_now)
            pbar.update(1)
            pbar.set_postfix(loss=f"{value_now:.4g}", dev=f"{best:.4g}")
            if step % run.eval_every == 0 or step == run.steps:
                value = dev_loss()
                dev_hist.append([step, value])
                if value < best - run.min_delta:
                    best, best_step, bad = value, step, 0
                    best_vec = {layer: p.detach().clone() for layer, p in params.items()}
                else:
                    bad += 1
                    if bad >= run.patience:
                        stopped_early = True
                        break
    record = {"train": train_hist, "dev": dev_hist, "best_step": best_step, "best_dev": best,
              "initial_dev": dev_hist[0][1], "steps_run": len(train_hist), "stopped_early": stopped_early}
    return best_vec, record, scale


def anchor_states_at(run: "TrainingRun", anchor_texts: list[str], target_site: Site) -> torch.Tensor:
    """The unsteered anchor states at ``target_site``: the same for every target language."""
    with torch.no_grad():
        return torch.cat(
            [
                _state_at(run.lm, [anchor_texts[i] for i in b], target_site, run.pooling, run.max_length,
                          run.exclude_bos)
                for b in _batches(len(anchor_texts), run.batch_size)
            ]
        ).detach()
