"""Positive control: does an intervention move the model's *behaviour* at all?

Every task result on a small model may be null; a reader cannot tell "steering has no effect on
this model" from "the hooks do nothing" without a control whose effect is known to be large.
The control here is output language (as CLaS-Bench measures language forcing): a DiffMean
vector toward a target language, added at every position of English prompts, should make the
greedy continuation switch to that language; and the vector toward English, added to
target-language prompts, should make it switch to English.

Per direction (prompt language -> target language):

1. Vector: DiffMean at ``layer`` (resid_post) from NTREX fit lines, fitted with the *target*
   as the anchor, so that the prompt language is the steered one: ``v = mean(h_target) -
   mean(h_prompt)``, applied with strength ``alpha`` (``normalize`` as in DiffMean).
2. Prompts: the first ``prompt_words`` words (CJK: 2x as many characters) of NTREX
   validation lines ``offset`` .. ``offset + n_prompts`` in the prompt language — text the
   vector was never fitted on.
3. Greedy continuations of ``n_new_tokens`` tokens, unsteered and steered (KV cache; every
   prompt and generated token steered once).
4. py3langid (open set, imported lazily) labels each continuation; a hit is "labelled as the
   target language". Shares with 95% percentile-bootstrap CIs, the paired difference with its
   paired-bootstrap CI, and the exact McNemar test of the paired hits
   (:mod:`xlsteer.evaluation.significance`).

The record (``control.json``) has the fixed shape :func:`run_control` documents, which the
report renders next to the task results.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..formats import p_inline
from ..results import CONTROL, CONTROL_VERSION

_CJK = ("zh", "ja", "ko", "th")


@dataclass(frozen=True)
class ControlConfig:
    """What the control runs; every value is recorded in the record's provenance."""

    target_langs: tuple[str, ...] = ("de", "ru")
    anchor: str = "en"
    layer: int | None = None  # None: L // 4 (the layer chosen on NTREX validation lines 1500-1511)
    alpha: float = 1.0  # raw DiffMean at alpha 1 moves the prompt-language mean onto the target mean
    normalize: str = "none"
    n_prompts: int = 40
    offset: int = 100  # validation line offset: lines 1500-1511 were used to choose the layer
    prompt_words: int = 8
    n_new_tokens: int = 24
    fit_limit: int = 100
    batch_size: int = 8
    max_length: int = 96
    seed: int = 0
    n_boot: int = 2000
    compile: bool | str = "auto"  # compiled greedy decoding (auto: on CUDA); the same tokens either way


def _prefix(text: str, lang: str, words: int) -> str:
    if lang in _CJK:
        return text.strip()[: 2 * words]
    return " ".join(text.split()[:words])


def _direction_vector(lm: Any, stats: Any, layer: int, prompt_lang: str, target: str, normalize: str) -> Any:
    """DiffMean toward ``target`` that steers rows in ``prompt_lang`` (the target is the anchor)."""
    from ..interventions.vector import fit_diffmean

    return fit_diffmean(stats, [layer], [prompt_lang], anchor=target, site="resid_post", normalize=normalize,
                        meta={"model_fingerprint": lm.fingerprint, "data_hash": stats.meta.get("data_hash")})


def _row(prompt_lang: str, target: str, base_ids: Sequence[str], steered_ids: Sequence[str], seed: int,
         n_boot: int) -> dict[str, Any]:
    import numpy as np

    from . import significance as S

    a = np.asarray([x == target for x in base_ids], dtype=np.float64)
    b = np.asarray([x == target for x in steered_ids], dtype=np.float64)
    sa, sb = S.summarize(a, seed=seed, n_boot=n_boot), S.summarize(b, seed=seed, n_boot=n_boot)
    paired = S.paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    test = S.mcnemar(a, b)
    return {"prompt_lang": prompt_lang, "target_lang": target, "n": int(a.size),
            "unsteered_share": float(sa["mean"]), "steered_share": float(sb["mean"]),
            "unsteered_ci": [float(sa["ci_low"]), float(sa["ci_high"])],
            "steered_ci": [float(sb["ci_low"]), float(sb["ci_high"])],
            "diff": float(paired["diff"]), "diff_ci": [float(paired["ci_low"]), float(paired["ci_high"])],
            "p": float(test["p"]), "test": "mcnemar"}


def run_control(lm: Any, cfg: ControlConfig | None = None, data_dir: Any = None) -> dict[str, Any]:
    """Run the output-language control on ``lm`` (a LoadedModel); returns the ``control.json`` record:

    ``{"format": "xlsteer.control", "version": 1, "model", "method", "layer", "alpha",
    "n_new_tokens", "rows": [{"prompt_lang", "target_lang", "n", "unsteered_share",
    "steered_share", "unsteered_ci", "steered_ci", "diff", "diff_ci", "p", "test"}],
    "provenance": {...}}`` — one row per direction (anchor -> target, target -> anchor).
    """
    from ..data.corpora import load_ntrex
    from ..data.langs import identify_language
    from ..models.sites import Site
    from ..provenance import provenance
    from ..stats import collect
    from .engine import Engine

    cfg = cfg or ControlConfig()
    t0 = time.perf_counter()
    layer = cfg.layer if cfg.layer is not None else lm.num_layers // 4
    langs = [cfg.anchor, *[x for x in cfg.target_langs if x != cfg.anchor]]
    fit_corpus = load_ntrex(data_dir, langs, split="fit", limit=cfg.fit_limit)
    stats = collect(lm, fit_corpus.texts, [Site(layer, "resid_post")], batch_size=cfg.batch_size,
                    max_length=cfg.max_length, meta={"model_fingerprint": lm.fingerprint,
                                                     "data_hash": fit_corpus.data_hash})
    held = load_ntrex(data_dir, langs, split="validation", limit=cfg.offset + cfg.n_prompts)
    engine = Engine(lm, batch_size=cfg.batch_size, cache_dir=None, max_length=512, progress_desc="control",
                    compile=cfg.compile)
    rows, examples = [], {}
    for target in langs[1:]:
        for prompt_lang, goal in ((cfg.anchor, target), (target, cfg.anchor)):
            prompts = [_prefix(t, prompt_lang, cfg.prompt_words) for t in held.texts[prompt_lang][cfg.offset:]]
            iv = _direction_vector(lm, stats, layer, prompt_lang, goal, cfg.normalize).with_strength(cfg.alpha)
            row_langs = [prompt_lang] * len(prompts)
            base = engine.generate(prompts, row_langs, cfg.n_new_tokens, [], anchor=goal)
            steered = engine.generate(prompts, row_langs, cfg.n_new_tokens, [], interventions=iv, positions="all",
                                      anchor=goal)
            base_ids, steered_ids = identify_language(base), identify_language(steered)
            rows.append(_row(prompt_lang, goal, base_ids, steered_ids, cfg.seed, cfg.n_boot))
            examples[f"{prompt_lang}->{goal}"] = [
                {"prompt": p, "unsteered": u, "steered": s, "unsteered_lang": ui, "steered_lang": si}
                for p, u, s, ui, si in list(zip(prompts, base, steered, base_ids, steered_ids))[:3]]
    return {
        "format": CONTROL, "version": CONTROL_VERSION, "model": lm.name, "method": "diffmean", "layer": int(layer),
        "alpha": float(cfg.alpha), "n_new_tokens": int(cfg.n_new_tokens), "rows": rows,
        "provenance": {
            "config": {**asdict(cfg), "layer": int(layer)},
            "vector": "DiffMean at resid_post: mean(h_target) - mean(h_prompt) over NTREX fit lines "
                      f"0-{cfg.fit_limit - 1}, applied to every prompt and generated token of the prompt-language rows",
            "prompts": f"first {cfg.prompt_words} words of NTREX validation lines {1500 + cfg.offset}-"
                       f"{1500 + cfg.offset + cfg.n_prompts - 1} (held out from the fit)",
            "decoding": f"greedy, {cfg.n_new_tokens} new tokens",
            "language_id": "py3langid, open set; hit = continuation labelled as the target language",
            "share_ci": "95% percentile bootstrap over prompts", "diff_ci": "95% paired bootstrap",
            "test": "exact McNemar on the paired hits (xlsteer.evaluation.significance.mcnemar)",
            "model_fingerprint": lm.fingerprint, "data_hash": fit_corpus.data_hash,
            "examples": examples, "wall_seconds": round(time.perf_counter() - t0, 1), **provenance(),
        },
    }


def format_control(record: dict[str, Any]) -> str:
    """Plain-text lines for the demo: share labelled as the target language, unsteered -> steered."""
    lines = [f"positive control: {record['method']} toward the target language, layer {record['layer']}, "
             f"alpha {record['alpha']:g}, {record['n_new_tokens']} greedy tokens; share of continuations "
             "py3langid labels as the target language [95% CI]"]
    for r in record["rows"]:
        lines.append(f"  {r['prompt_lang']} prompts -> {r['target_lang']}: "
                     f"{r['unsteered_share']:.2f} [{r['unsteered_ci'][0]:.2f},{r['unsteered_ci'][1]:.2f}] -> "
                     f"{r['steered_share']:.2f} [{r['steered_ci'][0]:.2f},{r['steered_ci'][1]:.2f}], "
                     f"diff {r['diff']:+.2f} [{r['diff_ci'][0]:+.2f},{r['diff_ci'][1]:+.2f}], "
                     f"{r['test']} {p_inline(r['p'])} (n={r['n']})")
    return "\n".join(lines)
