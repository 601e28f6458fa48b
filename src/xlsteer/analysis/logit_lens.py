"""Logit lens: read each layer's residual stream as if it were the last one.

Why: if intermediate layers "think in English", decoding ``resid_post`` of a middle layer
through the final norm and the unembedding gives English tokens even for German input; a
steering method that moves inputs toward English should raise that share at the layers after
the one it steers.

Decoding: ``logits = head(final_norm(h))``, then the model's own output transforms, read from
its (text) config: ``final_logit_softcapping`` c (Gemma 2/3) gives ``c * tanh(logits / c)``,
and ``logits_scaling`` s (Granite) gives ``logits / s``. At the last layer this is exactly the
model's own logits (tested).

Which language is a decoded token? (the rule :class:`TokenLanguage` applies)

1. Special tokens, and tokens with no letter (digits, punctuation, whitespace), are ``other``.
2. If the anchor and the input language are written in different scripts
   (:func:`xlsteer.data.langs.script_of`): a token is ``anchor`` when every letter is in the
   anchor's script, ``input`` when every letter is in the input's script, else ``other``
   (mixed scripts, a third script, or a character both scripts share such as Han for zh/ja).
3. Same script (e.g. en/de): tokens whose letters are not all in that script are ``other``;
   tokens with fewer than ``MIN_LANGID_LETTERS`` letters are ``other`` (identifying the language
   of "a" or "de" is noise); the rest go to py3langid over its full label set
   (:func:`xlsteer.data.langs.identify_language`, open set): ``anchor`` or ``input`` when it
   names that language, ``other`` when it names a third one. Open set on purpose: restricted to
   {en, de} py3langid calls "the" and "and" German, which would bias the shares; open set it
   calls them Afrikaans (-> other). So the shares undercount both languages, equally before
   and after steering: read them as trends across layers and between conditions.

Shares are over the top-k tokens at the last real token of each text (``positions="last"``)
or at every real token except BOS (``positions="all"``), averaged over texts/tokens; the
three shares sum to 1.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Mapping, Sequence

import torch

from ..errors import LanguageError, UsageError
from ..hook_session import ForwardContext
from ..hooks import steer
from ..models.sites import Site, check_site, final_norm_and_head, text_config, unembed
from ..progress import bar
from .similarity import ForwardConfig

CATEGORIES = ("anchor", "input", "other")
MIN_LANGID_LETTERS = 3
LENS_POSITIONS = ("last", "all")

# unicodedata name prefixes of the letters of each script name used by ``script_of``
_SCRIPT_PREFIXES: dict[str, tuple[str, ...]] = {
    "Han": ("CJK",),
    "Han (Traditional)": ("CJK",),
    "Japanese": ("CJK", "HIRAGANA", "KATAKANA"),
    "Odia": ("ORIYA",),
    "Canadian Syllabics": ("CANADIAN",),
}


# --------------------------------------------------------------------------------------------
# Decoding the residual stream
# --------------------------------------------------------------------------------------------


def apply_lens(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from residual-stream vectors ``(..., d)``: final norm, unembedding, output transforms."""
    norm, _ = final_norm_and_head(model)
    x = hidden
    if norm is not None:
        p = next(norm.parameters(), None)  # with a device map, norm and head may differ
        x = norm(x if p is None else x.to(device=p.device, dtype=p.dtype))
    return unembed(model, x)


def lens_logits(
    lm: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    layers: Sequence[int] | None = None,
    *,
    interventions: Any = None,
    langs: str | Sequence[str] | None = None,
    anchor: str = "en",
) -> dict[int, torch.Tensor]:
    """Lens logits ``(batch, seq, vocab)`` at every position of one batch, per layer (float32, CPU).

    Memory grows with vocab x seq x layers: meant for short inputs and tests; use
    :func:`language_shares` for corpora.
    """
    from ..stats import positions_from_mask

    model = lm.model if hasattr(lm, "model") and not isinstance(lm, torch.nn.Module) else lm
    n = getattr(text_config(model.config), "num_hidden_layers")
    layers = list(range(n)) if layers is None else sorted(set(int(x) for x in layers))
    sites = [Site(layer, "resid_post") for layer in layers]
    for s in sites:
        check_site(model, s)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out: dict[int, torch.Tensor] = {}

    def reader(s: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        out[s.layer] = apply_lens(model, act).float().cpu()

    from .similarity import _as_list, steer_policies

    ivs = _as_list(interventions)
    with (
        steer(model, ivs, langs=langs, anchor=anchor, positions=steer_policies(ivs), readers=[(sites, reader)]),
        torch.inference_mode(),
    ):
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask))
    return out


# --------------------------------------------------------------------------------------------
# Which language is a token in?
# --------------------------------------------------------------------------------------------


def _letters(text: str) -> list[str]:
    return [ch for ch in text if unicodedata.category(ch)[0] in "LM"]


def _in_script(ch: str, script: str) -> bool:
    prefixes = _SCRIPT_PREFIXES.get(script, (script.upper(),))
    name = unicodedata.name(ch, "")
    return name.startswith(prefixes)


class TokenLanguage:
    """Classifies decoded tokens as ``anchor``, ``input`` or ``other`` (rule in the module doc)."""

    def __init__(self, lang: str, anchor: str = "en"):
        from ..data.langs import normalize_lang, script_of

        self.lang = normalize_lang(lang)
        self.anchor = normalize_lang(anchor)
        if self.lang == self.anchor:
            raise UsageError(f"the input language equals the anchor ('{anchor}'); the lens share needs two languages")
        self.anchor_script = script_of(self.anchor)
        self.input_script = script_of(self.lang)
        self.rule = "script" if self.anchor_script != self.input_script else "langid"
        if self.rule == "langid":
            from ..data.langs import identify_language

            identify_language(["probe"], candidates=[self.anchor, self.lang])  # fail now if py3langid lacks one
        self._cache: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        return self.classify([text])[0]

    def classify(self, texts: Sequence[str]) -> list[str]:
        todo = sorted({t for t in texts if t not in self._cache})
        langid_inputs: list[str] = []
        for t in todo:
            letters = _letters(t.strip())
            if not letters:
                self._cache[t] = "other"
                continue
            in_anchor = all(_in_script(ch, self.anchor_script) for ch in letters)
            in_input = all(_in_script(ch, self.input_script) for ch in letters)
            if self.rule == "script":
                self._cache[t] = "anchor" if in_anchor and not in_input else "input" if in_input and not in_anchor else "other"
            elif not in_anchor or len(letters) < MIN_LANGID_LETTERS:
                self._cache[t] = "other"
            else:
                langid_inputs.append(t)
        if langid_inputs:
            from ..data.langs import identify_language

            found = identify_language([t.strip() for t in langid_inputs])
            for t, code in zip(langid_inputs, found):
                self._cache[t] = "anchor" if code == self.anchor else "input" if code == self.lang else "other"
        return [self._cache[t] for t in texts]


def _decode_tokens(tokenizer: Any, ids: Sequence[int], cache: dict[int, str]) -> list[str]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i in ids:
        i = int(i)
        if i not in cache:
            cache[i] = "" if i in special else tokenizer.decode([i])
        out.append(cache[i])
    return out


# --------------------------------------------------------------------------------------------
# Shares of anchor / input tokens per layer, before and after steering
# --------------------------------------------------------------------------------------------


LENS_CHUNK_ROWS = 256  # rows decoded per head call: the (vocab x d) head is read once per call


def topk_from_hidden(model: Any, hidden: Mapping[int, Any], k: int,
                     chunk_rows: int = LENS_CHUNK_ROWS) -> dict[int, torch.Tensor]:
    """Top-k lens token ids per layer from residual rows ``{layer: (n, d)}`` -> ``{layer: (n, k)}``.

    Why batched across layers: with a 262k vocabulary the head weight is ~670 MB (fp32); decoding
    8 rows per call is bound by reading it, so rows of every layer go through the head together.
    """
    if k < 1:
        raise UsageError(f"k must be a positive integer, got {k}")
    layers = sorted(hidden)
    tensors = [torch.as_tensor(hidden[layer]) for layer in layers]
    rows = [t.reshape(-1, t.shape[-1]) for t in tensors]
    counts = [r.shape[0] for r in rows]
    if not layers or sum(counts) == 0:
        return {layer: torch.zeros(0, k, dtype=torch.long) for layer in layers}
    flat = torch.cat(rows)
    picked = []
    with torch.inference_mode():
        for start in range(0, flat.shape[0], chunk_rows):
            logits = apply_lens(model, flat[start : start + chunk_rows])
            picked.append(logits.topk(min(k, logits.shape[-1]), dim=-1).indices.cpu())
    ids = torch.cat(picked)
    return dict(zip(layers, ids.split(counts)))


def lens_hidden(lm: Any, texts: Sequence[str], layers: Sequence[int], *, positions: str = "last",
                interventions: Any = None, lang: str | None = None, cfg: ForwardConfig | None = None,
                **settings: Any) -> dict[int, torch.Tensor]:
    """Residual rows the lens decodes, per layer: ``(n_texts, d)`` for ``last``, ``(n_real_tokens, d)`` for ``all``.

    ``cfg`` (:class:`~.similarity.ForwardConfig`; keyword ``settings`` override its fields): anchor,
    batch size, maximum length."""
    cfg = ForwardConfig.of(cfg, **settings)
    anchor, batch_size, max_length = cfg.anchor, cfg.batch_size, cfg.max_length
    if positions not in LENS_POSITIONS:
        raise UsageError(f"unknown lens positions '{positions}'; choose last or all")
    model = lm.model
    sites = [Site(int(layer), "resid_post") for layer in sorted(set(layers))]
    for s in sites:
        check_site(model, s)
    out: dict[int, list[torch.Tensor]] = {s.layer: [] for s in sites}
    state: dict[str, Any] = {}

    def reader(s: Site, act: torch.Tensor, ctx: ForwardContext) -> None:
        mask = state["mask"].to(act.device)
        h = _pool(act, mask, "last") if positions == "last" else act[mask]
        out[s.layer].append(h.detach().float().cpu())

    from .similarity import _as_list, _pool, forward_texts, steer_policies

    ivs = _as_list(interventions)
    with (
        steer(model, ivs, langs=lang, anchor=anchor, positions=steer_policies(ivs), readers=[(sites, reader)]),
        torch.inference_mode(),
        bar(len(texts), "logit lens", "text") as pbar,
    ):
        for n in forward_texts(lm, texts, batch_size, max_length, state):
            pbar.update(n)
    d = int(getattr(text_config(model.config), "hidden_size", 0) or 0)
    return {layer: torch.cat(v) if v else torch.zeros(0, d) for layer, v in out.items()}


def shares_from_topk(
    tokenizer: Any, topk: Mapping[int, torch.Tensor], classifier: TokenLanguage, n_examples: int = 5
) -> tuple[dict[int, dict[str, float]], dict[int, list[str]]]:
    """Per layer: shares of anchor/input/other among the top-k tokens, and the first row's tokens."""
    cache: dict[int, str] = {}
    shares: dict[int, dict[str, float]] = {}
    examples: dict[int, list[str]] = {}
    for layer, ids in topk.items():
        flat = ids.reshape(-1).tolist()
        labels = classifier.classify(_decode_tokens(tokenizer, flat, cache))
        total = max(len(labels), 1)
        shares[layer] = {c: sum(lab == c for lab in labels) / total for c in CATEGORIES}
        if ids.shape[0]:
            examples[layer] = _decode_tokens(tokenizer, ids[0, :n_examples].tolist(), cache)
    return shares, examples


def language_shares(lm: Any, texts_by_lang: Mapping[str, Sequence[str]], layers: Sequence[int], *,
                    interventions: Any = None, k: int = 10, positions: str = "last", cfg: ForwardConfig | None = None,
                    **settings: Any) -> dict[str, Any]:
    """Anchor/input/other shares of the lens top-k per non-anchor language and layer.

    Result::

        {"anchor", "k", "positions", "layers", "langs", "rule": {lang: "script"|"langid"},
         "before": {lang: {layer: {anchor, input, other}}}, "after": same or None,
         "examples": {"before"|"after": {lang: {layer: [top tokens of the first text]}}},
         "skipped": {lang: reason}}

    ``after`` is filled when ``interventions`` is given, for the languages they cover. ``cfg``
    (:class:`~.similarity.ForwardConfig`; keyword ``settings`` override its fields): anchor, batch
    size, maximum length.
    """
    from .similarity import _as_list, covered_langs

    cfg = ForwardConfig.of(cfg, **settings)
    anchor = cfg.anchor
    ivs = _as_list(interventions)
    covered = set(covered_langs(ivs, list(texts_by_lang), anchor)) if ivs else set()
    kw = dict(positions=positions, cfg=cfg)
    before: dict[str, dict[int, torch.Tensor]] = {}
    after: dict[str, dict[int, torch.Tensor]] = {}
    skipped: dict[str, str] = {}
    for lang, texts in texts_by_lang.items():
        if lang == anchor:
            continue
        try:
            TokenLanguage(lang, anchor)
        except LanguageError as e:
            skipped[lang] = str(e)
            continue
        texts = [t for t in texts if str(t).strip()]
        if not texts:
            skipped[lang] = "no non-empty texts"
            continue
        before[lang] = lens_hidden(lm, texts, layers, lang=lang, **kw)
        if ivs and lang in covered:
            after[lang] = lens_hidden(lm, texts, layers, lang=lang, interventions=ivs, **kw)
    result = shares_from_hidden(lm, before, after if ivs else None, layers, anchor=anchor, k=k, positions=positions)
    result["skipped"].update(skipped)
    return result


def shares_from_hidden(
    lm: Any,
    before: Mapping[str, Mapping[int, Any]],
    after: Mapping[str, Mapping[int, Any]] | None,
    layers: Sequence[int],
    *,
    anchor: str = "en",
    k: int = 10,
    positions: str = "last",
) -> dict[str, Any]:
    """:func:`language_shares` from residual rows already read (``{lang: {layer: (n, d)}}``).

    Why: the analysis reads last-token states in the same forward as its pooled states; every
    row of every language and condition is then decoded in one batched pass over the head.
    """
    result: dict[str, Any] = {
        "anchor": anchor,
        "k": k,
        "positions": positions,
        "layers": sorted(set(int(x) for x in layers)),
        "langs": [],
        "rule": {},
        "before": {},
        "after": None if after is None else {},
        "examples": {"before": {}, "after": {}},
        "skipped": {},
    }
    jobs: list[tuple[str, str, int]] = []
    hidden: dict[int, Any] = {}
    classifiers: dict[str, TokenLanguage] = {}
    for cond, states in (("before", before), ("after", after or {})):
        for lang, by_layer in states.items():
            if lang == anchor:
                continue
            if lang not in classifiers:
                try:
                    classifiers[lang] = TokenLanguage(lang, anchor)
                except LanguageError as e:
                    result["skipped"][lang] = str(e)
                    continue
            for layer in result["layers"]:
                hidden[len(jobs)] = by_layer[layer]
                jobs.append((cond, lang, layer))
    top = topk_from_hidden(lm.model, hidden, k)
    per: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for j, (cond, lang, layer) in enumerate(jobs):
        per.setdefault((cond, lang), {})[layer] = top[j]
    for (cond, lang), topk in per.items():
        if lang not in result["langs"]:
            result["langs"].append(lang)
            result["rule"][lang] = classifiers[lang].rule
        result[cond][lang], result["examples"][cond][lang] = shares_from_topk(lm.tokenizer, topk, classifiers[lang])
    return result
