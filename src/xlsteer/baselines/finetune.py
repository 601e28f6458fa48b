"""LoRA fine-tuning baselines: cross-lingual transfer (English only) and multilingual SFT.

Two recipes (METHODS.md section 1, baselines "cross-lingual transfer" and "SFT"), one trainer:

* ``xlt``  train on English training data only, evaluate every language (zero-shot
           cross-lingual transfer);
* ``sft``  train on the training data of several languages (by default every evaluated
           language, English included), evaluate every language.

Training data never comes from test (METHODS.md section 5), and comes from the train split
where one exists: XNLI train items 200-1489; MGSM the 8 exemplars per language (the only
MGSM training data: their final numbers for the direct template, their chains of thought for
the CoT template). XCOPA and XQuAD have no train split, so their **dev** items are the
training data (XCOPA val; XQuAD articles 0-4): the record says so (``train_split: dev``), and
dev is then no longer held out for anything selected after training (e.g. SFT+steering's
alpha); the reported numbers stay on test.

Examples are rendered with the task's own template, so the model is trained on exactly the
prompts it is evaluated on; the loss is the cross-entropy of the *answer tokens only*, the
tokens the evaluation scores: the gold continuation's tokens for choice tasks (split at the
context boundary as the engine does), the gold label token right after "Answer:" for label
tasks, and " <answer>" plus the stop newline for generation tasks (so the model learns to
stop). Prompt and padding positions are masked out.

LoRA (peft): rank ``r`` (default 8), alpha ``2r``, no dropout, on every linear layer of the
decoder (peft's ``all-linear``: attention and MLP projections; embeddings and the LM head stay
frozen). AdamW, constant learning rate after a short linear warm-up, ``steps`` optimizer steps
of ``batch_size`` examples drawn by a seeded permutation (epochs repeat it). The training
loss of every step is logged. The same code runs on a GPU (the model's device).

The trained model is evaluated merged (``merge_and_unload``) on a *copy* of the base model, so
the base model stays untouched and the hook engine sees an ordinary transformers model
(SFT + steering fits a DiffMean vector on it with :func:`xlsteer.interventions.fit`). The
fingerprint of the fine-tuned model is the base model's plus ``adapter`` (the adapter's hash),
so caches and result files never mix the two. Adapters are saved with peft's
``save_pretrained`` (safetensors) plus ``xlsteer_training.json`` (data, parameters, loss log,
provenance), written to a temporary folder and renamed; :func:`load_adapter` reloads them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.langs import normalize_lang
from ..errors import ArtifactError, UsageError
from ..evaluation.config import EvalConfig
from ..evaluation.tasks import get_task, get_template
from ..evaluation.templates import Template
from ..io import atomic_write_json, read_json
from ..progress import bar
from ..stats import positions_from_mask
from .icl import check_no_test

# Where training data comes from (never test) and what it is: each task's BaselineHints.
TRAINING_RECORD = "xlsteer_training.json"
RECIPES = ("xlt", "sft")


@dataclass
class TrainConfig:
    """Everything that determines a LoRA run (recorded in the adapter folder and the results)."""

    rank: int = 8
    lora_alpha: float | None = None  # None: 2 * rank
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    steps: int = 40
    batch_size: int = 8
    lr: float = 5e-4
    warmup_steps: int = 4
    weight_decay: float = 0.0
    max_length: int = 512
    seed: int = 0
    max_train_items: int | None = None  # per language

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["lora_alpha"] = self.lora_alpha if self.lora_alpha is not None else 2 * self.rank
        return d


@dataclass
class Example:
    """One training example as token ids; ``n_answer`` trailing tokens carry the loss."""

    ids: list[int]
    n_answer: int
    item_id: str
    lang: str


@dataclass
class FineTuned:
    """A fine-tuned model ready for evaluation (a LoadedModel look-alike) and its training record."""

    lm: Any
    record: dict[str, Any]
    peft_model: Any = None
    adapter_dir: Path | None = None
    losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# data


def train_split(task: Any) -> str:
    """The split fine-tuning trains on (the task's train split, else dev; never test)."""
    spec = get_task(task)
    split = spec.baselines.train_split
    if split is None:
        raise UsageError(f"task {spec.name} declares no training split (train or dev); it has no fine-tuning baseline")
    if split == "test":
        raise UsageError(f"task {spec.name} would train on test items; declare a train or dev split")
    return split


def train_items(task: str, langs: Sequence[str], data_dir: str | os.PathLike | None = None,
                max_items: int | None = None) -> dict[str, list[Any]]:
    """Training items per language (train split, else dev; never test)."""
    mod = get_task(task)
    task, split = mod.name, train_split(mod)
    out = {}
    for lang in langs:
        items = mod.load_items(data_dir, normalize_lang(lang), split, max_items)
        check_no_test(items, task, data_dir, "fine-tuning data")
        out[normalize_lang(lang)] = items
    return out


def _encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=True)["input_ids"])


def encode_example(tok: Any, tpl: Template, item: Any, exemplars: Sequence[Any] = (), max_length: int = 512) -> Example:
    """Prompt + gold answer as ids, tokenised the way the engine scores/generates it."""
    req = tpl.render(item, exemplars)
    if req.kind == "choice":
        ctx = req.context
        n_space = len(ctx) - len(ctx.rstrip())
        moved, ctx_text = ctx[len(ctx) - n_space:], ctx[: len(ctx) - n_space]
        cont = moved + req.choices[int(item.answer)]
        prompt_ids = _encode(tok, ctx_text)
        whole = _encode(tok, ctx_text + cont)
        answer = whole[len(prompt_ids):]
        ids = prompt_ids + answer
    elif req.kind == "label":
        prompt_ids = _encode(tok, req.prompt)
        label = req.labels[int(item.answer)]
        enc = list(tok(label, add_special_tokens=False)["input_ids"])
        if len(enc) != 1:
            raise UsageError(f"label {label!r} is {len(enc)} tokens; labels must be single tokens")
        answer = enc
        ids = prompt_ids + answer
    else:
        answer_text = get_task(tpl.task).baselines.answer_text
        if answer_text is None:
            raise UsageError(f"task {tpl.task} declares no answer_text, so it has no fine-tuning targets")
        gold = answer_text(item, tpl)
        stop = req.stop[0] if req.stop else ""
        prompt_ids = _encode(tok, req.prompt)
        whole = _encode(tok, req.prompt + gold + stop)
        answer = whole[len(prompt_ids):]
        ids = prompt_ids + answer
    if not answer:
        raise UsageError(f"item {item.id}: the gold answer has no tokens after the prompt")
    if len(ids) > max_length:  # keep the answer, drop prompt tokens from the left (as the engine does)
        ids = ids[len(ids) - max_length:]
    return Example(ids=ids, n_answer=min(len(answer), len(ids) - 1), item_id=item.id, lang=item.lang)


def build_examples(lm: Any, task: str, items: dict[str, list[Any]], template: str | Template | None = None,
                   data_dir: str | os.PathLike | None = None, max_length: int = 512) -> list[Example]:
    """Examples for every language's training items (MGSM: zero-shot prompts, as evaluated)."""
    tpl = get_template(task, template)
    out = []
    for lang, its in items.items():
        for it in its:
            out.append(encode_example(lm.tokenizer, tpl, it, (), max_length))
    return out


# ---------------------------------------------------------------------------------------------
# training


def _pad_id(tok: Any) -> int:
    pad = tok.pad_token_id
    if pad is None:
        pad = tok.eos_token_id if tok.eos_token_id is not None else 0
    return int(pad)


def batch_loss(model: Any, examples: Sequence[Example], pad_id: int, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a left-padded batch (logits only where needed)."""
    width = max(len(e.ids) for e in examples)
    n_ans = max(e.n_answer for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    tmask = torch.zeros((len(examples), n_ans), dtype=torch.bool)
    for r, e in enumerate(examples):
        ids[r, width - len(e.ids):] = torch.tensor(e.ids, dtype=torch.long)
        mask[r, width - len(e.ids):] = 1
        tmask[r, n_ans - e.n_answer:] = True
    ids, mask, tmask = ids.to(device), mask.to(device), tmask.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                logits_to_keep=n_ans + 1, use_cache=False)
    logits = out.logits[:, :-1, :].float()  # predictions of the last n_ans tokens
    target = ids[:, width - n_ans:]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return -(lp * tmask).sum() / tmask.sum().clamp_min(1)


def trainable_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def train_lora(lm: Any, examples: Sequence[Example], config: TrainConfig | None = None,
               progress_desc: str = "lora") -> tuple[Any, dict[str, Any]]:
    """Train a LoRA adapter on a copy of ``lm.model``; returns (peft model, training record)."""
    from peft import LoraConfig, get_peft_model

    cfg = config or TrainConfig()
    if not examples:
        raise UsageError("no training examples; check the task, languages and splits")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.rank < 1:
        raise UsageError("steps, batch_size and rank must be positive integers")
    t0 = time.perf_counter()
    base = copy.deepcopy(lm.model)
    device = next(base.parameters()).device
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.to_dict()["lora_alpha"], lora_dropout=cfg.dropout,
                      target_modules=cfg.target_modules, bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        pm = get_peft_model(base, lcfg)
    n_train = trainable_parameters(pm)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    rng = random.Random(cfg.seed)
    order: list[int] = []
    pad = _pad_id(lm.tokenizer)
    losses: list[float] = []
    pm.train()
    with bar(cfg.steps, progress_desc, "step") as pbar:
        for step in range(cfg.steps):
            batch = []
            while len(batch) < min(cfg.batch_size, len(examples)):
                if not order:
                    order = list(range(len(examples)))
                    rng.shuffle(order)
                batch.append(examples[order.pop()])
            loss = batch_loss(pm, batch, pad, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            pbar.update(1)
    pm.eval()
    record = {
        "config": cfg.to_dict(),
        "n_examples": len(examples),
        "examples_per_lang": _count_langs(examples),
        "trainable_parameters": n_train,
        "total_parameters": int(sum(p.numel() for p in pm.parameters())),
        "loss": losses,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "train_seconds": round(time.perf_counter() - t0, 3),
        "answer_tokens": int(sum(e.n_answer for e in examples)),
        "device": str(device),
    }
    return pm, record


def _count_langs(examples: Sequence[Example]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in examples:
        out[e.lang] = out.get(e.lang, 0) + 1
    return out


@torch.no_grad()
def mean_loss(model: Any, examples: Sequence[Example], tok: Any, batch_size: int = 8) -> float:
    """Mean answer-token loss of ``model`` over ``examples`` (evaluation mode, no gradients)."""
    device = next(model.parameters()).device
    pad = _pad_id(tok)
    total, count = 0.0, 0
    for s in range(0, len(examples), batch_size):
        b = list(examples[s:s + batch_size])
        n = sum(e.n_answer for e in b)
        total += float(batch_loss(model, b, pad, device)) * n
        count += n
    return total / max(count, 1)


# ---------------------------------------------------------------------------------------------
# adapters: save / load / merge


def adapter_hash(peft_model: Any) -> str:
    """sha256 over the adapter's tensors (names, shapes, bytes)."""
    from peft import get_peft_model_state_dict

    h = hashlib.sha256()
    state = get_peft_model_state_dict(peft_model)
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}|{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def save_adapter(peft_model: Any, path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """peft ``save_pretrained`` (safetensors) + the training record, atomically (temp folder + rename)."""
    from ..provenance import provenance

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"adapter path {target} is a file; give a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        if not (tmp / "adapter_model.safetensors").is_file():
            raise ArtifactError(f"peft did not write adapter_model.safetensors in {tmp}")
        atomic_write_json(tmp / TRAINING_RECORD, provenance(**{**record, "adapter_sha256": adapter_hash(peft_model)}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_adapter(lm: Any, path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(peft model on a copy of ``lm.model``, training record) from a folder made by :func:`save_adapter`."""
    from peft import PeftModel

    p = Path(path)
    if not (p / "adapter_model.safetensors").is_file() or not (p / "adapter_config.json").is_file():
        raise ArtifactError(f"{p} is not a saved adapter (adapter_model.safetensors / adapter_config.json missing); "
                            "re-create it with the sft or xlt baseline")
    record = read_json(p / TRAINING_RECORD, "adapter training record") if (p / TRAINING_RECORD).is_file() else {}
    base = copy.deepcopy(lm.model)
    pm = PeftModel.from_pretrained(base, str(p), is_trainable=False)
    pm.eval()
    if record.get("adapter_sha256") and adapter_hash(pm) != record["adapter_sha256"]:
        raise ArtifactError(f"adapter {p} does not match its training record (hash differs); re-create it")
    return pm, record


def merged_model(lm: Any, peft_model: Any, label: str, record: dict[str, Any]) -> Any:
    """A LoadedModel of the merged fine-tuned weights (fingerprint = base's + adapter hash)."""
    from ..models.loading import LoadedModel

    digest = record.get("adapter_sha256") or adapter_hash(peft_model)
    merged = peft_model.merge_and_unload()
    merged.eval()
    for p in merged.parameters():
        p.requires_grad_(False)
    fp = dict(lm.fingerprint)
    fp["adapter"] = {"method": "lora", "recipe": label, "sha256": digest}
    return LoadedModel(model=merged, tokenizer=lm.tokenizer, name=f"{lm.name}+lora-{label}", fingerprint=fp,
                       source={**dict(getattr(lm, "source", {}) or {}), "adapter": fp["adapter"]})


# ---------------------------------------------------------------------------------------------
# recipes


def finetune(lm: Any, task: str, recipe: str, langs: Sequence[str], config: TrainConfig | None = None, *,
             train_langs: Sequence[str] | None = None, items_from: EvalConfig | None = None,
             adapter_dir: str | os.PathLike | None = None) -> FineTuned:
    """Train the ``xlt`` (anchor only) or ``sft`` (``train_langs``, default ``langs``) adapter.

    ``config``: the LoRA training settings; ``items_from``: the anchor, data dir and template the
    training items are read and prompted with (those of the evaluation). Returns the merged model
    for evaluation, with the training record (data, config, loss log, trainable parameters,
    seconds). ``adapter_dir``: also save the adapter there.
    """
    src = items_from or EvalConfig()
    anchor, data_dir, template = src.anchor, src.data_dir, src.template
    if recipe not in RECIPES:
        raise UsageError(f"unknown fine-tuning recipe {recipe!r}; choose xlt or sft")
    mod = get_task(task)
    task = mod.name
    cfg = config or TrainConfig()
    if recipe == "xlt":
        tl = [normalize_lang(anchor)]
    else:
        tl = [normalize_lang(x) for x in (train_langs or langs)]
    tl = [x for x in dict.fromkeys(tl) if x in mod.langs]
    if not tl:
        raise UsageError(f"no training language of {task} among {', '.join(train_langs or langs)}")
    items = train_items(task, tl, data_dir, cfg.max_train_items)
    examples = build_examples(lm, task, items, template, data_dir, cfg.max_length)
    pm, rec = train_lora(lm, examples, cfg, progress_desc=f"lora {recipe}")
    record = {
        "recipe": recipe,
        "task": task,
        "train_langs": tl,
        "train_split": train_split(mod),
        "train_note": mod.baselines.train_note,
        "train_item_ids": {"n": sum(len(v) for v in items.values()),
                           "sha256": hashlib.sha256(json.dumps({k: [i.id for i in v] for k, v in items.items()},
                                                               sort_keys=True).encode()).hexdigest()},
        "template": get_template(task, template).describe(),
        "base_model": {"name": lm.name, "fingerprint": lm.fingerprint},
        **rec,
    }
    record["adapter_sha256"] = adapter_hash(pm)
    saved = None
    if adapter_dir is not None:
        saved = save_adapter(pm, adapter_dir, record)
    model = merged_model(lm, pm, recipe, record)
    return FineTuned(lm=model, record=record, peft_model=None, adapter_dir=saved, losses=list(rec["loss"]))
