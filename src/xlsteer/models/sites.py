"""Named intervention sites and the one place that knows each architecture's module paths.

A :class:`Site` is ``(layer, name)``. The registry turns it into a module and a hook kind:

- ``resid_pre``  input of decoder layer ``l``           (forward pre-hook on the layer)
- ``resid_post`` output of decoder layer ``l``          (forward hook on the layer)
- ``attn_out``   attention's contribution to the residual, after any post-attention norm
                 (Gemma 2/3, OLMo 2 normalise it: we read after that norm)
- ``mlp_out``    the MLP's contribution to the residual, after any post-feed-forward norm
- ``mlp_act``    MLP intermediate activation = input of the down projection (width d_ff;
                 act(gate) * up for gated MLPs)  (forward pre-hook on the down projection)
- ``mlp_gate``   the MLP's activation-function output (width d_ff): act(gate_proj(x)) for gated
                 MLPs, act(fc_in(x)) for non-gated ones (GPT-2, GPT-NeoX, where it equals
                 mlp_act)  (forward hook on the activation module). LAPE (Tang et al.) counts
                 P(act(gate) > 0) here: the product act(gate) * up also carries up's sign.

Decoder layers return a tensor in some architectures/versions and a tuple in others; this
module's ``get_tensor`` / ``replace_tensor`` handle both, nowhere else does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ModelError, SiteError

SITE_NAMES: tuple[str, ...] = ("resid_pre", "resid_post", "attn_out", "mlp_out", "mlp_act", "mlp_gate")
#: Sites inside the MLP, width d_ff (the others have width d_model).
MLP_SITES: tuple[str, ...] = ("mlp_act", "mlp_gate")
HookKind = Literal["pre", "post"]


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    name: str

    def __post_init__(self) -> None:
        if self.name not in SITE_NAMES:
            raise SiteError(f"unknown site '{self.name}'; choose one of {', '.join(SITE_NAMES)}")

    def __str__(self) -> str:
        return f"{self.name}@{self.layer}"

    @classmethod
    def parse(cls, text: str) -> "Site":
        """Parse ``resid_post@6`` (the form used in files and on the command line)."""
        name, sep, layer = text.partition("@")
        if not sep or not layer.lstrip("-").isdigit():
            raise SiteError(f"cannot parse site '{text}'; write NAME@LAYER, e.g. resid_post@6")
        return cls(int(layer), name)


@dataclass(frozen=True)
class ArchSpec:
    """Module paths of one architecture family, relative to the model root or to a layer."""

    layers: str
    attn_out: str  # relative to the layer; the module whose output is the attention contribution
    mlp_out: str  # relative to the layer; the module whose output is the MLP contribution
    mlp_down: str  # relative to the layer; the down projection (its input is mlp_act)
    final_norm: str
    lm_head: str = "lm_head"
    mlp_width_attr: str = "intermediate_size"
    mlp_gate: str = "mlp.act_fn"  # relative to the layer; the activation module (its output is mlp_gate)


_LLAMA = ArchSpec("model.layers", "self_attn", "mlp", "mlp.down_proj", "model.norm")
_GEMMA = ArchSpec(
    "model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "mlp.down_proj", "model.norm"
)
_OLMO2 = _GEMMA  # OLMo 2 also normalises after attention and after the MLP

REGISTRY: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "phi3": ArchSpec("model.layers", "self_attn", "mlp", "mlp.down_proj", "model.norm", mlp_gate="mlp.activation_fn"),
    "granite": _LLAMA,
    "smollm3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA,
    "gemma3": ArchSpec(
        "model.language_model.layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        "mlp.down_proj",
        "model.language_model.norm",
    ),
    "gemma3_text": _GEMMA,
    "olmo2": _OLMO2,
    "gpt_neox": ArchSpec(
        "gpt_neox.layers", "attention", "mlp", "mlp.dense_4h_to_h", "gpt_neox.final_layer_norm", "embed_out",
        mlp_gate="mlp.act",
    ),
    "gpt2": ArchSpec("transformer.h", "attn", "mlp", "mlp.c_proj", "transformer.ln_f", "lm_head", "n_inner", "mlp.act"),
}

_ATTN_CANDIDATES = ("self_attn", "attn", "attention", "self_attention")
_MLP_CANDIDATES = ("mlp", "feed_forward", "ffn")
_DOWN_CANDIDATES = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "fc_out")
_ACT_CANDIDATES = ("act_fn", "activation_fn", "act", "activation")


def _get(root: nn.Module, path: str) -> nn.Module | None:
    mod: Any = root
    for part in path.split("."):
        if not part:
            continue
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


def _fallback_spec(model: nn.Module) -> ArchSpec:
    """Find the decoder-layer list of an unregistered architecture by shape of the module tree."""
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n_layers is None or len(mod) == n_layers)
    ]
    if not candidates:
        raise ModelError(
            f"unsupported architecture {type(model).__name__}: no list of decoder layers found; "
            "add an ArchSpec for its model_type to xlsteer.models.sites.REGISTRY"
        )
    name, layers = min(candidates, key=lambda c: c[0].count("."))
    first = layers[0]
    attn = next((a for a in _ATTN_CANDIDATES if hasattr(first, a)), None)
    mlp = next((m for m in _MLP_CANDIDATES if hasattr(first, m)), None)
    down = None
    if mlp is not None:
        down = next((f"{mlp}.{d}" for d in _DOWN_CANDIDATES if _get(first, f"{mlp}.{d}") is not None), None)
    gate = None
    if mlp is not None:
        gate = next((f"{mlp}.{a}" for a in _ACT_CANDIDATES if isinstance(_get(first, f"{mlp}.{a}"), nn.Module)), None)
    norm = next(
        (p for p in (name.rsplit(".", 1)[0] + ".norm", name.rsplit(".", 1)[0] + ".final_layernorm") if _get(model, p)),
        "",
    )
    return ArchSpec(name, attn or "", mlp or "", down or "", norm, mlp_gate=gate or "")


def arch_spec(model: nn.Module) -> ArchSpec:
    model_type = getattr(model.config, "model_type", "")
    spec = REGISTRY.get(model_type)
    if spec is not None and _get(model, spec.layers) is not None:
        return spec
    return _fallback_spec(model)


def get_layers(model: nn.Module) -> nn.ModuleList:
    spec = arch_spec(model)
    layers = _get(model, spec.layers)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"unsupported architecture {type(model).__name__}: '{spec.layers}' is not a layer list")
    if len(layers) == 0:
        raise ModelError(f"unsupported model {type(model).__name__}: its decoder layer list '{spec.layers}' is empty "
                         "(0 layers); give a model with at least one layer")
    return layers


def num_layers(model: nn.Module) -> int:
    return len(get_layers(model))


def check_site(model: nn.Module, site: Site) -> None:
    n = num_layers(model)
    if not 0 <= site.layer < n:
        raise SiteError(f"layer {site.layer} is out of range: this model has layers 0..{n - 1}")


def resolve(model: nn.Module, site: Site) -> tuple[nn.Module, HookKind]:
    """The module to hook for ``site`` and whether its input (pre) or output (post) is the activation."""
    check_site(model, site)
    spec = arch_spec(model)
    layer = get_layers(model)[site.layer]
    if site.name == "resid_pre":
        return layer, "pre"
    if site.name == "resid_post":
        return layer, "post"
    rel = {"attn_out": spec.attn_out, "mlp_out": spec.mlp_out, "mlp_act": spec.mlp_down, "mlp_gate": spec.mlp_gate}[
        site.name
    ]
    module = _get(layer, rel) if rel else None
    if not isinstance(module, nn.Module):
        raise SiteError(
            f"site {site.name} is not available for {type(model).__name__} "
            f"(module '{rel or '?'}' not found in layer {site.layer}); use resid_pre or resid_post"
        )
    return module, ("pre" if site.name == "mlp_act" else "post")


def placement_module(model: nn.Module, site: Site) -> nn.Module:
    """The module whose device and dtype an intervention at ``site`` must be prepared in.

    The hooked module itself, except for ``mlp_gate``: the activation module has no weights (and
    no accelerate hook), so it cannot say where it runs; it runs where its MLP's projections do,
    in their dtype, so the down projection answers for it.
    """
    module, _ = resolve(model, site)
    if site.name != "mlp_gate":
        return module
    return resolve(model, Site(site.layer, "mlp_act"))[0]


def site_width(model: nn.Module, site_name: str) -> int:
    """Width of the activation at a site: d_model, or d_ff for mlp_act and mlp_gate."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    if site_name not in MLP_SITES:
        return int(d)
    spec = arch_spec(model)
    module, _ = resolve(model, Site(0, "mlp_act"))
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    w = getattr(module, "weight", None)
    if w is not None and w.dim() == 2:  # GPT-2 Conv1D stores (in, out)
        return int(w.shape[0])
    width = getattr(cfg, spec.mlp_width_attr, None)
    return int(width or 4 * d)


def final_norm_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """The final norm and unembedding (for the logit lens)."""
    spec = arch_spec(model)
    norm = _get(model, spec.final_norm) if spec.final_norm else None
    head = _get(model, spec.lm_head) or model.get_output_embeddings()
    return norm, head


def text_config(config: Any) -> Any:
    """The decoder's config (multimodal configs nest it); plain configs return themselves."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def unembed(model: nn.Module, normed: torch.Tensor) -> torch.Tensor:
    """Logits from final-normed hidden states: the head, then the model's output transforms.

    Reads ``final_logit_softcapping`` c (Gemma 2/3: ``c * tanh(logits / c)``) and
    ``logits_scaling`` s (Granite: ``logits / s``) from the (text) config. Callers that rely on
    this equalling the model's own logits check it (the engine does, on its first batch).
    """
    _, head = final_norm_and_head(model)
    p = next(head.parameters(), None)
    x = normed if p is None else normed.to(device=p.device, dtype=p.dtype)
    logits = head(x)
    cfg = text_config(model.config)
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(cfg, "logits_scaling", None)
    if scale:
        logits = logits / scale
    return logits


# ---- tensor-or-tuple handling, in one place ------------------------------------------------


def get_tensor(value: Any) -> torch.Tensor:
    """The activation inside a module's output (a tensor, or the first element of a tuple)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    if hasattr(value, "last_hidden_state"):
        return value.last_hidden_state
    raise ModelError(f"cannot find the activation in a module output of type {type(value).__name__}")


def replace_tensor(value: Any, new: torch.Tensor) -> Any:
    """``value`` with its activation replaced by ``new``, keeping the container type."""
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, tuple):
        return (new,) + tuple(value[1:])
    if isinstance(value, list):
        return [new] + list(value[1:])
    raise ModelError(f"cannot replace the activation in a module output of type {type(value).__name__}")


def pre_hook_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    if "hidden_states" in kwargs:
        return kwargs["hidden_states"]
    return next(v for v in kwargs.values() if isinstance(v, torch.Tensor))


def pre_hook_replace(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (new,) + tuple(args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": new}
    key = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
    return args, {**kwargs, key: new}


def describe_sites(model: nn.Module) -> list[dict[str, Any]]:
    """Every layer's sites with the hooked module path and activation width (for ``xlsteer sites``)."""
    spec = arch_spec(model)
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for layer in range(num_layers(model)):
        for name in SITE_NAMES:
            try:
                module, kind = resolve(model, Site(layer, name))
            except SiteError:
                continue
            out.append(
                {
                    "layer": layer,
                    "site": name,
                    "module": names.get(id(module), "?"),
                    "hook": kind,
                    "width": site_width(model, name),
                }
            )
    del spec
    return out
