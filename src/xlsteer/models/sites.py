"""Named intervention sites: what each one is, declared once, and how a model's table turns a
:class:`Site` ``(layer, name)`` into a module to hook and a hook kind.

A site is one :class:`SiteSpec` row of :data:`SITES` (:func:`register_site` adds one): its
meaning, its usual hook kind, its width (d_model or the MLP's), and what placement needs to know
(where a weightless module's computation lives, where a pre-hook's input was computed). Where a
site is in a given architecture comes from that architecture's table
(:mod:`xlsteer.models.archs`), else from rows declared with the site, else from its paths (the
same in every layout, or its usual names in a layer, for layouts nobody declared). ``docs/sites.md`` holds the
tables below and a test keeps them equal to the registries (:func:`sites_markdown`).

Decoder layers return a tensor in some architectures/versions and a tuple in others; this
module's ``get_tensor`` / ``replace_tensor`` handle both, nowhere else does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from ..errors import ModelError, SiteError
from ..registry import Registry
from .archs import ARCHS, HOOK_KINDS, ArchSpec, HookKind, arch_spec, get_layers, get_module, num_layers

__all__ = ["Site", "SiteSpec", "SITES", "SITE_NAMES", "register_site", "site_names", "site_spec", "resolve",
           "check_site", "placement_module", "producer_module", "site_width", "describe_sites", "sites_markdown",
           "ArchSpec", "arch_spec", "get_layers", "num_layers", "final_norm_and_head", "unembed",
           "text_config", "get_tensor", "replace_tensor", "pre_hook_tensor", "pre_hook_replace", "HookKind"]

Width = Literal["model", "mlp"]
_MLP_NAMES = ("mlp", "feed_forward", "ffn")


def _in_mlp(names: tuple[str, ...]) -> Callable[[nn.Module], str | None]:
    """A guess for a module inside the layer's MLP (the MLP found by its usual names first)."""

    def guess(layer: nn.Module) -> str | None:
        mlp = next((m for m in _MLP_NAMES if isinstance(get_module(layer, m), nn.Module)), None)
        if mlp is None:
            return None
        return next((f"{mlp}.{n}" for n in names if isinstance(get_module(layer, f"{mlp}.{n}"), nn.Module)), None)

    return guess


@dataclass(frozen=True, eq=False)
class SiteSpec:
    """One named site, declared once.

    ``hook``: the hook kind where a table row gives none (``pre``: the module's input, ``post``:
    its output). ``archs``: rows for given model types, declared with the site
    (``{"llama": "self_attn.o_proj"}``). ``paths``: where an architecture has no row for the site,
    candidate paths inside a decoder layer, the first that names a module wins (``("",)``: the
    layer itself, the same in every architecture; ``("self_attn", "attn")``: found by its usual
    names), or a callable ``layer -> path | None``. ``width``: ``model`` (d_model), ``mlp`` (the MLP's hidden width, the
    input width of the ``mlp_act`` module), or ``model -> int``. ``placed_at``: another site whose
    module tells this one's device and dtype (a module without weights cannot). ``arrives_from``:
    for pre hooks, where the input was computed: ``previous_layer`` (the layer before, or the
    embeddings at layer 0), ``parent`` (the module that calls the hooked one) or ``module``.
    """

    name: str
    description: str
    hook: HookKind = "post"
    archs: Mapping[str, Any] = field(default_factory=dict)
    paths: tuple[str, ...] | Callable[[nn.Module], str | None] = ()
    width: Width | Callable[[nn.Module], int] = "model"
    placed_at: str | None = None
    arrives_from: Literal["previous_layer", "parent", "module"] = "parent"

    def __post_init__(self) -> None:
        if self.hook not in HOOK_KINDS:
            raise ValueError(f"site {self.name}: hook must be one of {HOOK_KINDS}, got {self.hook!r}")
        if not (callable(self.width) or self.width in ("model", "mlp")):
            raise ValueError(f"site {self.name}: width must be 'model', 'mlp' or a callable, got {self.width!r}")

    def path_in(self, layer: nn.Module) -> str | None:
        """The first of :attr:`paths` that names a module of ``layer`` (None: none does)."""
        if callable(self.paths):
            return self.paths(layer)
        return next((p for p in self.paths if isinstance(get_module(layer, p), nn.Module)), None)


BUILTIN_SITES: dict[str, SiteSpec] = {s.name: s for s in (
    SiteSpec("resid_pre", "input of decoder layer l (the residual stream before it)", hook="pre", paths=("",),
             arrives_from="previous_layer"),
    SiteSpec("resid_post", "output of decoder layer l (the residual stream after it)", hook="post", paths=("",)),
    SiteSpec("attn_out", "attention's contribution to the residual, after any post-attention norm "
             "(Gemma 2/3, OLMo 2 normalise it)", paths=("self_attn", "attn", "attention", "self_attention")),
    SiteSpec("mlp_out", "the MLP's contribution to the residual, after any post-feed-forward norm",
             paths=_MLP_NAMES),
    SiteSpec("mlp_act", "input of the MLP's down projection (act(gate) * up for gated MLPs)",
             hook="pre", paths=_in_mlp(("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "fc_out")),
             width="mlp", arrives_from="parent"),
    SiteSpec("mlp_gate", "the MLP's activation-function output: act(gate_proj(x)), or act(fc_in(x)) (= mlp_act) "
             "for non-gated MLPs; LAPE counts P(act(gate) > 0) here",
             paths=_in_mlp(("act_fn", "activation_fn", "act", "activation")), width="mlp", placed_at="mlp_act"),
)}


def _accept(name: str, obj: Any) -> SiteSpec:
    if not isinstance(obj, SiteSpec) or obj.name != name:
        raise TypeError(f"site {name!r} must be a SiteSpec named {name!r}, got {obj!r}")
    return obj


SITES: Registry[SiteSpec] = Registry("site", BUILTIN_SITES, accept=_accept)
#: The built-in site names (plugins may add more: :func:`site_names`).
SITE_NAMES: tuple[str, ...] = SITES.builtins


def register_site(spec: SiteSpec, *, replace: bool = False) -> SiteSpec:
    """Declare a new site; from then on ``Site(l, name)`` works wherever a table, a row or its paths place it."""
    return SITES.register(spec.name, spec, replace=replace)


def site_names() -> list[str]:
    """Every site name: the built-ins, then those plugins registered."""
    return SITES.names()


def site_spec(name: str) -> SiteSpec:
    spec = SITES.find(name)
    if spec is None:
        raise SiteError(SITES.unknown(name))  # the registry's one message, with its close match
    return spec


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    name: str

    def __post_init__(self) -> None:
        if self.name not in SITES:
            raise SiteError(SITES.unknown(self.name))

    def __str__(self) -> str:
        return f"{self.name}@{self.layer}"

    @classmethod
    def parse(cls, text: str) -> "Site":
        """Parse ``resid_post@6`` (the form used in files and on the command line)."""
        name, sep, layer = text.partition("@")
        if not sep or not layer.lstrip("-").isdigit():
            raise SiteError(f"cannot parse site '{text}'; write NAME@LAYER, e.g. resid_post@6")
        return cls(int(layer), name)


def check_site(model: nn.Module, site: Site) -> None:
    n = num_layers(model)
    if not 0 <= site.layer < n:
        raise SiteError(f"layer {site.layer} is out of range: this model has layers 0..{n - 1}")


def _row(model: nn.Module, spec: ArchSpec, site: SiteSpec, first: nn.Module) -> tuple[str | None, HookKind]:
    """(path relative to a layer, hook): the model's table, else the site's own rows, else its paths."""
    row = spec.row(site.name)
    if row is None:
        declared = site.archs.get(getattr(model.config, "model_type", ""))
        if declared is not None and ARCHS.find(getattr(model.config, "model_type", "")) is spec:
            row = (declared, None) if isinstance(declared, str) else tuple(declared)
    if row is None:
        return site.path_in(first), site.hook
    return row[0], row[1] or site.hook


def resolve(model: nn.Module, site: Site) -> tuple[nn.Module, HookKind]:
    """The module to hook for ``site`` and whether its input (pre) or output (post) is the activation."""
    check_site(model, site)
    layers = get_layers(model)
    rel, kind = _row(model, arch_spec(model), site_spec(site.name), layers[0])
    module = get_module(layers[site.layer], rel) if rel is not None else None
    if not isinstance(module, nn.Module):
        raise SiteError(
            f"site {site.name} is not available for {type(model).__name__} "
            f"(module '{rel or '?'}' not found in layer {site.layer}); use resid_pre or resid_post"
        )
    return module, kind


def placement_module(model: nn.Module, site: Site) -> nn.Module:
    """The module whose device and dtype an intervention at ``site`` must be prepared in.

    The hooked module itself, unless the site says another site's module answers for it
    (``mlp_gate``: the activation module has no weights and no accelerate hook, so it cannot say
    where it runs; it runs where its MLP's projections do, in their dtype).
    """
    module, _ = resolve(model, site)
    other = site_spec(site.name).placed_at
    if other is None:
        return module
    return resolve(model, Site(site.layer, other))[0]


def producer_module(model: nn.Module, site: Site, module: nn.Module, names: Mapping[int, str]) -> nn.Module:
    """The module whose output a pre-hook site receives (``SiteSpec.arrives_from``); ``names``
    maps ``id(module)`` to its path (``model.named_modules()``)."""
    rule = site_spec(site.name).arrives_from
    if rule == "previous_layer":
        if site.layer == 0:
            emb = model.get_input_embeddings()
            return emb if emb is not None else module
        return get_layers(model)[site.layer - 1]
    if rule == "parent":  # e.g. mlp_act: computed inside the MLP that owns the down projection
        parent = names.get(id(module), "").rsplit(".", 1)[0]
        return model.get_submodule(parent) if parent else module
    return module


def site_width(model: nn.Module, site_name: str) -> int:
    """Width of the activation at a site: d_model, the MLP's width (mlp_act, mlp_gate), or the site's own rule."""
    width = site_spec(site_name).width
    if callable(width):
        return int(width(model))
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    if width == "model":
        return int(d)
    module, _ = resolve(model, Site(0, "mlp_act"))
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    w = getattr(module, "weight", None)
    if w is not None and w.dim() == 2:  # GPT-2 Conv1D stores (in, out)
        return int(w.shape[0])
    mlp_width = getattr(cfg, arch_spec(model).mlp_width_attr, None)
    return int(mlp_width or 4 * d)


def final_norm_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """The final norm and unembedding (for the logit lens)."""
    spec = arch_spec(model)
    norm = get_module(model, spec.final_norm) if spec.final_norm else None
    head = get_module(model, spec.lm_head) or model.get_output_embeddings()
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
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for layer in range(num_layers(model)):
        for name in site_names():
            try:
                module, kind = resolve(model, Site(layer, name))
            except SiteError:
                continue
            out.append({"layer": layer, "site": name, "module": names.get(id(module), "?"), "hook": kind,
                        "width": site_width(model, name)})
    return out


def _cell(text: str) -> str:
    return f"`{text}`" if text else "layer"


def sites_markdown() -> str:
    """The tables of docs/sites.md: every site, and every architecture's rows (from the registries)."""
    lines = ["| site | hook | width | what it is |", "|---|---|---|---|"]
    for name in site_names():
        s = site_spec(name)
        width = s.width if isinstance(s.width, str) else "its own rule"
        lines.append(f"| `{name}` | {s.hook} | {'d_ff' if width == 'mlp' else 'd_model' if width == 'model' else width} "
                     f"| {s.description} |")
    lines += ["", "| model_type | layers | " + " | ".join(site_names()) + " |",
              "|---|---|" + "---|" * len(site_names())]
    for model_type in ARCHS.names():
        arch = ARCHS.get(model_type)
        cells = []
        for name in site_names():
            spec = site_spec(name)
            row = arch.row(name) or ((spec.archs[model_type], None) if isinstance(spec.archs.get(model_type), str)
                                     else spec.archs.get(model_type))
            sure = spec.paths[0] if isinstance(spec.paths, tuple) and len(spec.paths) == 1 else None
            path, hook = (row[0], row[1] or spec.hook) if row else (sure, spec.hook)
            cells.append("-" if path is None else f"{_cell(path)} {hook}")
        layers = arch.layers if isinstance(arch.layers, str) else "(a callable)"
        lines.append(f"| {model_type} | `{layers}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)
