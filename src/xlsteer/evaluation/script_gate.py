"""The script gate: a decoding-time baseline that keeps only tokens of the wanted language's script.

In the spirit of the Language Confusion Gate (Zhang et al., ICLR 2026, arXiv 2510.17555): that
gate sorts the vocabulary into families (CJ, Latin, symbols, low-resource) by the Unicode names
of each token's letters, predicts from the hidden state which families may follow, and masks the
logits of the others (symbols and special tokens are never masked). The baseline here is its
*oracle* form without the learned predictor: the family is given by the row's wanted language
(``Item.lang``) and the gate is always on.

Rule (per token of the vocabulary, decided once per tokenizer and script, then cached): a token
is allowed for script S when every character of its decoded text has Unicode script ``Common``
(digits, punctuation, whitespace, most symbols), ``Inherited`` (combining marks) or one of S's
scripts (:data:`UNICODE_SCRIPTS`: Japanese = Han + Hiragana + Katakana). Special tokens (EOS,
padding, ...) are allowed, so a row can still stop. A token that does not decode to text on its
own (a byte-fallback piece such as ``<0xE4>``, or a partial UTF-8 sequence of a byte-level BPE
that decodes to U+FFFD) cannot be attributed to a script and is allowed (the Language Confusion
Gate attributes partial CJK bytes to CJ; here they stay usable by every script). Ids of the
model's output layer beyond the tokenizer's vocabulary are never allowed.

Latin-script targets (en, de, fr, tr, vi, ...) are left unconstrained: the tokens of their
competitors (English above all) share their script, so a script mask cannot separate them;
:func:`gate_scope` says so for every language it is asked about.
"""

from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch

#: xlsteer's script names (:func:`xlsteer.data.langs.script_of`) -> Unicode script property values.
UNICODE_SCRIPTS: dict[str, tuple[str, ...]] = {
    "Japanese": ("Han", "Hiragana", "Katakana"),
    "Han (Traditional)": ("Han",),
    "Canadian Syllabics": ("Canadian_Aboriginal",),
    "Odia": ("Oriya",),
}
UNCONSTRAINED_SCRIPTS = frozenset({"Latin"})
_NEUTRAL = ("Common", "Inherited")

# per tokenizer object: {script: (vocab,) bool allowed-token mask}; dropped with the tokenizer
_MASKS: "weakref.WeakKeyDictionary[Any, dict[str, torch.Tensor]]" = weakref.WeakKeyDictionary()


def unicode_scripts(script: str) -> tuple[str, ...]:
    return UNICODE_SCRIPTS.get(script, (script.replace(" ", "_"),))


def gate_scope(lang: str) -> str:
    """What the gate does for rows wanted in ``lang`` (one line, for results and docs)."""
    from ..data.langs import script_of

    script = script_of(lang)
    if script in UNCONSTRAINED_SCRIPTS:
        return f"unconstrained ({script} script: a script mask cannot tell {lang} from English)"
    return f"tokens of {' / '.join(unicode_scripts(script))} script, digits, punctuation, whitespace, special tokens"


def _token_texts(tokenizer: Any) -> list[str]:
    """Each vocabulary id decoded on its own (special tokens kept, so they can be recognised)."""
    n = len(tokenizer)
    return list(tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False))


def _allowed_by_text(texts: Sequence[str], script: str) -> list[bool]:
    import regex

    names = "".join(rf"\p{{Script={s}}}" for s in (*_NEUTRAL, *unicode_scripts(script)))
    ok = regex.compile(rf"[{names}]*")
    return ["\ufffd" in t or ok.fullmatch(t) is not None for t in texts]


def allowed_tokens(tokenizer: Any, script: str) -> torch.Tensor:
    """(len(tokenizer),) bool: the tokens the gate lets through for ``script`` (cached per tokenizer)."""
    per_tok = _MASKS.setdefault(tokenizer, {})
    if script not in per_tok:
        texts = _token_texts(tokenizer)
        mask = torch.tensor(_allowed_by_text(texts, script), dtype=torch.bool)
        special = [i for i in getattr(tokenizer, "all_special_ids", []) if 0 <= i < len(texts)]
        mask[special] = True
        per_tok[script] = mask
    return per_tok[script]


def row_masks(tokenizer: Any, langs: Sequence[str], width: int, device: torch.device | str = "cpu"
              ) -> torch.Tensor | None:
    """(rows, width) bool allowed-token masks for rows wanted in ``langs``, or None when no row is
    constrained (every wanted language in Latin script). Unconstrained rows allow every id."""
    from ..data.langs import script_of

    scripts = [script_of(lang) for lang in langs]
    if all(s in UNCONSTRAINED_SCRIPTS for s in scripts):
        return None
    n = len(tokenizer)
    out = torch.zeros(len(langs), width, dtype=torch.bool)
    for r, script in enumerate(scripts):
        if script in UNCONSTRAINED_SCRIPTS:
            out[r] = True
        else:
            m = allowed_tokens(tokenizer, script)
            out[r, : min(n, width)] = m[:width]
    return out.to(device)
