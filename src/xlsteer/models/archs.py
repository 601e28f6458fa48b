"""Architectures as data: one table per model family says where its decoder layers are and, per
site, which module inside a layer to hook and whether its input or its output is the activation.

Why tables: a new family (or a plugin's own model class) is one :func:`register_arch` call, and
nothing else in the code knows module paths (pyvene keeps the same kind of table per model:
``"mlp_activation": ("layers[%s].mlp.act_fn", output hook)``). A row of ``sites`` is
``site -> (path relative to the layer, hook)``, or just the path when the site's usual hook
applies (:class:`xlsteer.models.sites.SiteSpec`); ``""`` is the layer itself.

``layers`` is a *layer matcher*, as in steering-vectors: the path of a module list
(``"model.layers"``), a template with ``{layer}`` (``"backbone.stages.0.blocks.{layer}"``), or a
callable ``(model, i) -> path`` for layouts no template describes. A model whose ``model_type`` has
no table (or whose table's layers are not there) gets a guessed one: the shallowest module list
with one entry per layer, and the sites found by their usual names
(:func:`xlsteer.models.sites.resolve`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Literal, Mapping, Sequence, Union

from torch import nn

from ..errors import ModelError
from ..registry import Registry

HookKind = Literal["pre", "post"]
HOOK_KINDS: tuple[str, ...] = ("pre", "post")
#: Where the decoder layers are: a module-list path, a ``{layer}`` template, or ``(model, i) -> path``.
LayerMatcher = Union[str, Callable[[nn.Module, int], str]]


def get_module(root: nn.Module, path: str) -> nn.Module | None:
    """The submodule at dotted ``path`` ("" is ``root``), or None when a part is missing."""
    mod: Any = root
    for part in path.split("."):
        if not part:
            continue
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


def _site_row(site: str, row: Any) -> tuple[str, HookKind | None]:
    path, hook = (row, None) if isinstance(row, str) else tuple(row)
    if not isinstance(path, str) or hook not in (None, *HOOK_KINDS):
        raise ValueError(f"site {site}: a row is 'path' or ('path', 'pre' | 'post'), got {row!r}")
    return path, hook


@dataclass(frozen=True, eq=False)
class ArchSpec:
    """One architecture family (see the module docstring). ``final_norm`` and ``lm_head`` are paths
    from the model root (the logit lens reads them); ``mlp_width_attr`` is the config field holding
    the MLP width when the down projection does not tell it."""

    layers: LayerMatcher
    sites: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    final_norm: str = ""
    lm_head: str = "lm_head"
    mlp_width_attr: str = "intermediate_size"

    def __post_init__(self) -> None:
        if not (callable(self.layers) or isinstance(self.layers, str)):
            raise ValueError(f"layers must be a path, a '{{layer}}' template or a callable, got {self.layers!r}")
        rows = {str(name): _site_row(name, row) for name, row in self.sites.items()}
        object.__setattr__(self, "sites", MappingProxyType(rows))

    def row(self, site: str) -> tuple[str, HookKind | None] | None:
        """(path relative to the layer, hook or None for the site's usual one), if the table names ``site``."""
        return self.sites.get(site)

    def __getattr__(self, name: str) -> str:
        """``spec.mlp_out``: the module path of a site this table names (reads like the field it replaces)."""
        rows = self.__dict__.get("sites")
        if name.startswith("_") or rows is None or name not in rows:
            raise AttributeError(f"{type(self).__name__} has no field or site row {name!r}")
        return rows[name][0]


def _llama_like(attn_out: str, mlp_out: str, mlp_gate: str = "mlp.act_fn", layers: str = "model.layers",
                final_norm: str = "model.norm") -> ArchSpec:
    return ArchSpec(layers, {"attn_out": (attn_out, "post"), "mlp_out": (mlp_out, "post"),
                             "mlp_act": ("mlp.down_proj", "pre"), "mlp_gate": (mlp_gate, "post")},
                    final_norm=final_norm)


_LLAMA = _llama_like("self_attn", "mlp")
# Gemma 2/3 and OLMo 2 normalise the attention and MLP outputs: read after those norms
_GEMMA = _llama_like("post_attention_layernorm", "post_feedforward_layernorm")
_OLMO2 = _GEMMA

#: The built-in architectures, by ``config.model_type``.
BUILTIN_ARCHS: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "phi3": _llama_like("self_attn", "mlp", mlp_gate="mlp.activation_fn"),
    "granite": _LLAMA,
    "smollm3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA,
    "gemma3": _llama_like("post_attention_layernorm", "post_feedforward_layernorm",
                          layers="model.language_model.layers", final_norm="model.language_model.norm"),
    "gemma3_text": _GEMMA,
    "olmo2": _OLMO2,
    "gpt_neox": ArchSpec("gpt_neox.layers", {
        "attn_out": ("attention", "post"),
        "mlp_out": ("mlp", "post"), "mlp_act": ("mlp.dense_4h_to_h", "pre"), "mlp_gate": ("mlp.act", "post"),
    }, final_norm="gpt_neox.final_layer_norm", lm_head="embed_out"),
    "gpt2": ArchSpec("transformer.h", {
        "attn_out": ("attn", "post"),
        "mlp_out": ("mlp", "post"), "mlp_act": ("mlp.c_proj", "pre"), "mlp_gate": ("mlp.act", "post"),
    }, final_norm="transformer.ln_f", lm_head="lm_head", mlp_width_attr="n_inner"),
}


def _accept(name: str, obj: Any) -> ArchSpec:
    if not isinstance(obj, ArchSpec):
        raise TypeError(f"architecture {name!r} must be an ArchSpec, got {type(obj).__name__}")
    return obj


ARCHS: Registry[ArchSpec] = Registry("architecture", BUILTIN_ARCHS, accept=_accept)


def register_arch(model_type: str, spec: ArchSpec | None = None, *, like: str | None = None,
                  replace: bool = False, **fields: Any) -> ArchSpec:
    """Declare how to steer models whose ``config.model_type`` is ``model_type``.

    Give an :class:`ArchSpec`, or its fields (``layers=``, ``sites=``, ``final_norm=``, ...),
    optionally starting from a registered table: ``register_arch("mine", like="llama",
    layers="backbone.blocks")``. ``sites`` given with ``like`` add to (or override) its rows.
    """
    if spec is None:
        if like is not None:
            base = ARCHS.get(like)
            rows = {**base.sites, **fields.pop("sites", {})}
            spec = dataclasses.replace(base, sites=rows, **fields)
        else:
            spec = ArchSpec(**fields)
    elif fields or like is not None:
        raise TypeError("register_arch takes an ArchSpec or its fields, not both")
    return ARCHS.register(model_type, spec, replace=replace)


# ---- layer matching ---------------------------------------------------------------------------


def _numbered(model: nn.Module, path_of: Callable[[nn.Module, int], str]) -> list[nn.Module] | None:
    """Layers 0, 1, ... as long as the matcher's path names a module (None when layer 0 is missing)."""
    out: list[nn.Module] = []
    for i in range(sum(1 for _ in model.modules())):
        module = get_module(model, path_of(model, i))
        if not isinstance(module, nn.Module):
            break
        out.append(module)
    return out or None


def match_layers(model: nn.Module, matcher: LayerMatcher) -> Sequence[nn.Module] | None:
    """The decoder layers a matcher names (None when its module list is not there)."""
    if callable(matcher):
        return _numbered(model, matcher)
    if "{layer}" in matcher:
        return _numbered(model, lambda _model, i: matcher.format(layer=i))
    return get_module(model, matcher)


def layer_path(model: nn.Module, matcher: LayerMatcher, layer: int) -> str:
    """The module path of decoder layer ``layer`` under ``matcher``."""
    if callable(matcher):
        return matcher(model, layer)
    if "{layer}" in matcher:
        return matcher.format(layer=layer)
    return f"{matcher}.{layer}"


def _guessed(model: nn.Module) -> ArchSpec:
    """A table for an unregistered layout: the shallowest module list with one entry per layer."""
    n_layers = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    candidates = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and (n_layers is None or len(mod) == n_layers)
    ]
    if not candidates:
        raise ModelError(
            f"unsupported architecture {type(model).__name__}: no list of decoder layers found; "
            "declare its layout with xlsteer.models.archs.register_arch (see docs/plugins.md)"
        )
    name, _ = min(candidates, key=lambda c: c[0].count("."))
    parent = name.rsplit(".", 1)[0]
    norm = next((p for p in (parent + ".norm", parent + ".final_layernorm") if get_module(model, p)), "")
    return ArchSpec(name, {}, final_norm=norm)


def arch_spec(model: nn.Module) -> ArchSpec:
    """The table of ``model``: its ``model_type``'s registered one when its layers are there, else a guess."""
    model_type = getattr(model.config, "model_type", "")
    spec = ARCHS.find(model_type) if model_type else None
    if spec is not None and match_layers(model, spec.layers) is not None:
        return spec
    return _guessed(model)


def get_layers(model: nn.Module) -> Sequence[nn.Module]:
    """The decoder layers, in order (a non-empty module list, or a list of the matched modules)."""
    spec = arch_spec(model)
    layers = match_layers(model, spec.layers)
    if isinstance(spec.layers, str) and "{layer}" not in spec.layers and not isinstance(layers, nn.ModuleList):
        raise ModelError(f"unsupported architecture {type(model).__name__}: '{spec.layers}' is not a layer list")
    if not layers:
        raise ModelError(f"unsupported model {type(model).__name__}: its decoder layer list '{spec.layers}' is empty "
                         "(0 layers); give a model with at least one layer")
    return layers


def num_layers(model: nn.Module) -> int:
    return len(get_layers(model))
