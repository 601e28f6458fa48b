"""The ``task`` objective of learned steering vectors: (prompt, answer) examples, teacher forcing.

The loss is the cross-entropy of the reference answer tokens given the prompt, steered at every
position as in generation (see :mod:`xlsteer.interventions.learned`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError, UsageError
from ..hooks import steer
from ..stats import positions_from_mask


def _task_batch(tok: Any, pairs: Sequence[tuple[str, str]], max_length: int, device: torch.device):
    """Left-padded prompt+answer ids, attention mask, and a mask of answer tokens."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    rows, ans_lens = [], []
    for prompt, answer in pairs:
        p = list(tok(prompt)["input_ids"])
        a = list(tok(answer, add_special_tokens=False)["input_ids"])
        if not a:
            raise DataError(f"empty reference answer for prompt {prompt[:40]!r}; every example needs an answer")
        seq = (p + a)[-max_length:]
        a_len = min(len(a), len(seq) - 1)
        rows.append(seq)
        ans_lens.append(a_len)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    answer = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (r, a_len) in enumerate(zip(rows, ans_lens)):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
        answer[i, width - a_len :] = True
    return ids.to(device), mask.to(device), answer.to(device), max(ans_lens)


def task_loss(lm: Any, pairs: Sequence[tuple[str, str]], max_length: int, iv: Any, lang: str, anchor: str) -> torch.Tensor:
    model, tok = lm.model, lm.tokenizer
    ids, mask, answer, a_max = _task_batch(tok, pairs, max_length, next(model.parameters()).device)
    keep = a_max + 1  # logits at positions T-keep .. T-1 predict the answer tokens
    with steer(model, iv, langs=lang, anchor=anchor):
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), logits_to_keep=keep
        ).logits
    pred = logits[:, :-1].float()
    target = ids[:, -keep + 1 :]
    sel = answer[:, -keep + 1 :]
    return F.cross_entropy(pred[sel], target[sel])


def as_task_examples(data: Any, langs: list[str]) -> dict[str, list[tuple[str, str]]]:
    if isinstance(data, Mapping):
        out = {}
        for lang in langs:
            if lang not in data:
                raise DataError(f"no task examples for language '{lang}'; give (prompt, answer) pairs for it")
            out[lang] = [(str(p), str(a)) for p, a in data[lang]]
        return out
    if len(langs) != 1:
        raise UsageError("with several languages give the task examples as a dict: language -> [(prompt, answer), ...]")
    return {langs[0]: [(str(p), str(a)) for p, a in data]}
