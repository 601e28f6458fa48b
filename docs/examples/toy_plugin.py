"""A toy xlsteer plugin: an architecture, an intervention kind with its fit method, and a task.

    python docs/examples/toy_plugin.py toy-model          # save a tiny random ToyLM (and its tokenizer)
    xlsteer --plugin docs/examples/toy_plugin.py fit toy-shift --model toy-model --langs de,fr -o shift.safetensors
    xlsteer --plugin docs/examples/toy_plugin.py eval --model toy-model --task toy-colours --langs en,de,fr \\
        --intervention shift.safetensors -o eval.json

docs/plugins.md walks through it; tests/test_plugins.py runs it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, DynamicCache, GenerationMixin, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import CausalLMOutputWithPast

from xlsteer.evaluation.tasks import Item, Metric, TaskSpec, register_task
from xlsteer.evaluation.templates import Request, Template
from xlsteer.interventions import Intervention, LayerPolicy, StatisticsNeed, register_intervention, register_method
from xlsteer.models.archs import register_arch
from xlsteer.models.sites import Site

# ---- 1. an architecture xlsteer has never seen ---------------------------------------------------
# ToyLM: pre-norm blocks whose attention is called "mix" and whose gated MLP is called "ff", so
# xlsteer cannot guess where attn_out or the MLP sites are: register_arch says it, once.


class ToyConfig(PretrainedConfig):
    model_type = "xlsteer_toy"

    def __init__(self, vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        super().__init__(**kwargs)


class Mix(nn.Module):
    """Causal self-attention with learned absolute positions added by the trunk; keys and values go
    through transformers' cache, so xlsteer's engine can reuse a prompt's cache for its choices."""

    def __init__(self, cfg: ToyConfig, index: int):
        super().__init__()
        self.index, self.heads = index, cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(self, x, mask, cache):
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(d, dim=-1))
        if cache is not None:
            k, v = cache.update(k, v, self.index)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        weights = scores.masked_fill(~mask, torch.finfo(scores.dtype).min).softmax(-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, d))


class FF(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.act = nn.SiLU()
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down(self.act(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: ToyConfig, index: int):
        super().__init__()
        self.norm1, self.mix = nn.LayerNorm(cfg.hidden_size), Mix(cfg, index)
        self.norm2, self.ff = nn.LayerNorm(cfg.hidden_size), FF(cfg)

    def forward(self, x, mask, cache):
        x = x + self.mix(self.norm1(x), mask, cache)
        return x + self.ff(self.norm2(x))


class ToyForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig
    base_model_prefix = "trunk"

    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg)
        self.trunk = nn.ModuleDict({"embed": nn.Embedding(cfg.vocab_size, cfg.hidden_size),
                                    "pos": nn.Embedding(512, cfg.hidden_size),
                                    "blocks": nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers)),
                                    "norm": nn.LayerNorm(cfg.hidden_size)})
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.trunk["embed"]

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        b, n = input_ids.shape
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if attention_mask is None:
            attention_mask = torch.ones(b, past + n, dtype=torch.long, device=input_ids.device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -n:]
        keys = torch.arange(past + n, device=input_ids.device)
        mask = (keys[None, :] <= keys[past:, None])[None, None] & attention_mask.bool()[:, None, None, :]
        x = self.trunk["embed"](input_ids) + self.trunk["pos"](position_ids)
        for block in self.trunk["blocks"]:
            x = block(x, mask, past_key_values if use_cache else None)
        x = self.trunk["norm"](x)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return CausalLMOutputWithPast(logits=self.head(x[:, keep, :]), past_key_values=past_key_values)


AutoConfig.register(ToyConfig.model_type, ToyConfig)
AutoModelForCausalLM.register(ToyConfig, ToyForCausalLM)

register_arch(
    ToyConfig.model_type,
    layers="trunk.blocks.{layer}",  # a layer matcher: a path, a {layer} template or a callable (model, i) -> path
    sites={"attn_out": "mix", "mlp_out": "ff", "mlp_act": ("ff.down", "pre"), "mlp_gate": "ff.act"},
    final_norm="trunk.norm",
    lm_head="head",
)


# ---- 2. an intervention kind, and the method that fits it ----------------------------------------


@register_intervention
class ToyShift(Intervention):
    """Adds, at every steered token, one vector per target language: ``strength * scale * d``."""

    method = "toy-shift"

    def validate(self) -> None:
        for site in self.sites:
            if self.tensors[f"shift@{site.layer}"].shape[0] != len(self.languages):
                raise ValueError(f"shift@{site.layer} needs one row per language")

    def row_vectors(self, site):
        """One vector per language at strength 1; the base class adds ``strength * v[row language]``
        (anchor rows: nothing) as one traced tensor operation, so steering compiles with the model."""
        return self.tensors[f"shift@{site.layer}"] * self.params["scale"]


@register_method("toy-shift", site="mlp_out", statistics=StatisticsNeed("item-level pooled means"),
                 layer_policy=LayerPolicy(compare=lambda n_layers: [n_layers // 2]), alpha_grid=(0.5, 1.0),
                 description="the anchor-minus-target mean of the MLP output, scaled",
                 compare="toy shift at mlp_out (strength on dev)")
def fit_toy_shift(stats, layers, targets, anchor="en", site="mlp_out", meta=None, scale=1.0):
    """d[t, l] = mean(anchor) - mean(t), pooled per text, at ``site`` of each layer."""
    tensors = {}
    for layer in layers:
        s = Site(layer, site)
        tensors[f"shift@{layer}"] = torch.stack([stats.mean(anchor, s) - stats.mean(t, s) for t in targets]).float()
    return ToyShift(sites=[Site(layer, site) for layer in layers], tensors=tensors,
                    params={"fit": "toy-shift", "scale": float(scale), "positions": "all"},
                    languages=list(targets), anchor=anchor, meta=dict(meta or {}))


# ---- 3. a task -------------------------------------------------------------------------------------

WORDS = {"en": ("red", "blue", "green"), "de": ("rot", "blau", "grün"), "fr": ("rouge", "bleu", "vert")}


def load_items(data_dir, lang, split, limit=None):
    """Twelve items per language, the same ids in every language: dev = 0-3, test = 4-11."""
    words = WORDS[lang]
    ids = range(0, 4) if split == "dev" else range(4, 12)
    items = [Item(id=f"colours/{i}", lang=lang, split=split, answer=i % 3,
                  fields={"context": f"{i} {words[i % 3]} is", "choices": [f" {w}" for w in words]}) for i in ids]
    return items[:limit]


def render(template, item, exemplars):
    return Request(kind="choice", context=item.fields["context"], choices=tuple(item.fields["choices"]))


register_task(TaskSpec(
    name="toy-colours", description="which colour word follows (a toy 3-way choice)", langs=tuple(WORDS),
    splits={"dev": "items 0-3", "test": "items 4-11"}, load_items=load_items,
    data_files=lambda lang, split: [str(Path(__file__).resolve())],  # the items live in this file: hash it
    templates=(Template("toy-colours", "toy-colours", "1", "choice", "the context, then each colour word", {}, render),),
    metrics=(Metric("acc", "binary"),), main="acc", source={"kind": "plugin", "file": Path(__file__).name},
))


# ---- a tiny random ToyLM to try it on ----------------------------------------------------------------

if __name__ == "__main__":
    from xlsteer.testing import tiny_tokenizer

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "toy-model")
    torch.manual_seed(0)
    ToyForCausalLM(ToyConfig()).save_pretrained(out)
    tiny_tokenizer(128, add_bos=False).save_pretrained(out)
    print(f"wrote a random ToyLM to {out}")
