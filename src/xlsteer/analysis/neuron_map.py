"""Where language lives in the MLP neurons: CLAS categories per layer and LAPE counts.

Why: CLAS picks "bridge" layers where shared neurons dominate; LAPE finds language-specific
neurons. Both are easier to judge as a picture: stacked bars of the four CLAS categories per
layer with the bridge layers marked, and a languages x layers heatmap of LAPE neuron counts.

Input formats (this module normalises all of them; nothing here needs a model):

CLAS categories, any of
  * what :func:`xlsteer.interventions.clas.neuron_categories` returns:
    ``{"langs", "rule", "layers": {layer: {"percent": {"dead", "specific", "partial", "all"}, masks...}}}``
  * what :func:`xlsteer.interventions.clas.category_percentages` returns:
    ``{layer: {category: percent}}``
  * the documented minimal form ``{"percentages": {layer: {category: percent}}, "bridge_layers": [..]}``
  Category names may be ``dead``, ``language_specific``/``specific``,
  ``partial_shared``/``partial``, ``all_shared``/``all`` (hyphens and spaces allowed). Values are
  percentages of the layer's neurons (fractions that sum to 1 are scaled to percent). When only
  boolean masks are given, percentages are computed from them. Bridge layers come from
  ``bridge_layers`` (a list, or what ``select_bridge_layers`` returns: ``{"layers": [...]}``).

LAPE neurons, any of
  * ``{lang: {layer: neuron indices (tensor or list) | bool mask | count}}``
    (what :func:`xlsteer.interventions.neurons.lape_neurons` returns)
  * ``{"counts": {lang: {layer: count}}}``
  * a fitted LAPE intervention (its ``params["neurons"]``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from ..errors import DataError

CATEGORIES = ("dead", "language_specific", "partial_shared", "all_shared")
_ALIASES = {
    "dead": "dead",
    "language_specific": "language_specific",
    "specific": "language_specific",
    "lang_specific": "language_specific",
    "partial_shared": "partial_shared",
    "partial": "partial_shared",
    "partially_shared": "partial_shared",
    "all_shared": "all_shared",
    "all": "all_shared",
    "shared": "all_shared",
}


def _category(name: str) -> str | None:
    key = re.sub(r"[\s\-]+", "_", str(name).strip().lower())
    return _ALIASES.get(key)


def _is_layer_key(k: Any) -> bool:
    return isinstance(k, int) or (isinstance(k, str) and k.lstrip("-").isdigit())


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if hasattr(v, "numel") and v.numel() == 1 and v.is_floating_point():  # 0-d float tensor
        return float(v)
    return None


def _mask_share(v: Any) -> float | None:
    """Percent of True in a bool mask (tensor, array or list of bools)."""
    dtype = str(getattr(v, "dtype", ""))
    if "bool" in dtype:
        n = int(v.numel() if hasattr(v, "numel") else v.size)
        return 100.0 * float(v.sum()) / n if n else 0.0
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, bool) for x in v):
        return 100.0 * sum(v) / len(v)
    return None


def _layer_percent(entry: Mapping[str, Any]) -> dict[str, float]:
    """One layer's {category: percent} from percentages, or from masks."""
    source = entry.get("percent") or entry.get("percentages") or entry
    out: dict[str, float] = {}
    for name, v in source.items():
        cat = _category(name)
        value = _as_float(v)
        if cat is not None and value is not None:
            out[cat] = value
    if not out:
        for name, v in entry.items():
            cat = _category(name)
            share = _mask_share(v) if cat is not None else None
            if share is not None:
                out[cat] = share
    if not out:
        raise DataError(
            f"neuron categories: a layer has none of {', '.join(CATEGORIES)} (got keys {', '.join(map(str, entry))}); "
            "see xlsteer.analysis.neuron_map for the input format"
        )
    if 0.0 < sum(out.values()) <= 1.0 + 1e-6:  # fractions -> percent
        out = {k: 100.0 * v for k, v in out.items()}
    return {cat: out.get(cat, 0.0) for cat in CATEGORIES}


def _bridges(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = value.get("layers", [])
    return sorted({int(x) for x in value})


def category_table(categories: Any, bridge_layers: Any = None) -> dict[str, Any]:
    """Normalise CLAS categories to ``{"percentages": {layer: {category: %}}, "bridge_layers", "langs", "rule"}``."""
    if categories is None:
        raise DataError("no neuron categories given")
    if not isinstance(categories, Mapping):
        categories = {k: getattr(categories, k) for k in ("percentages", "layers", "bridge_layers", "langs", "rule")
                      if hasattr(categories, k)}
    per_layer: Mapping[Any, Any]
    if "percentages" in categories:
        per_layer = categories["percentages"]
    elif "layers" in categories and isinstance(categories["layers"], Mapping):
        per_layer = categories["layers"]
    else:
        per_layer = {k: v for k, v in categories.items() if _is_layer_key(k)}
    if not per_layer:
        raise DataError(
            "neuron categories: no per-layer entries found; give {layer: {category: percent}} "
            "(see xlsteer.analysis.neuron_map)"
        )
    pct = {int(layer): _layer_percent(entry) for layer, entry in per_layer.items()}
    bridges = _bridges(bridge_layers if bridge_layers is not None else
                       categories.get("bridge_layers", categories.get("bridge")))
    return {
        "percentages": dict(sorted(pct.items())),
        "bridge_layers": bridges,
        "langs": list(categories.get("langs") or []),
        "rule": categories.get("rule"),
    }


def _count(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v)
    dtype = str(getattr(v, "dtype", ""))
    if "bool" in dtype:
        return int(v.sum())
    if hasattr(v, "numel"):
        return int(v.numel())
    if hasattr(v, "size") and not callable(v.size):
        return int(v.size)
    if isinstance(v, (list, tuple)):
        return sum(1 for x in v if x is True) if v and all(isinstance(x, bool) for x in v) else len(v)
    raise DataError(f"LAPE neurons: cannot count a value of type {type(v).__name__}; give indices, a mask or a count")


def lape_counts(lape: Any) -> dict[str, dict[int, int]]:
    """Normalise LAPE neurons to ``{lang: {layer: count}}`` (see the module doc for inputs)."""
    if lape is None:
        raise DataError("no LAPE neurons given")
    params = getattr(lape, "params", None)
    if isinstance(params, Mapping) and "neurons" in params:
        lape = params["neurons"]
    if isinstance(lape, Mapping) and "counts" in lape:
        lape = lape["counts"]
    if not isinstance(lape, Mapping) or not lape:
        raise DataError("LAPE neurons: expected {lang: {layer: indices | mask | count}}")
    out: dict[str, dict[int, int]] = {}
    for lang, per_layer in lape.items():
        if not isinstance(per_layer, Mapping):
            raise DataError(f"LAPE neurons for {lang!r}: expected {{layer: indices}}, got {type(per_layer).__name__}")
        out[str(lang)] = {int(layer): _count(v) for layer, v in sorted(per_layer.items(), key=lambda kv: int(kv[0]))}
    return out


def neuron_map(
    categories: Any = None,
    lape: Any = None,
    bridge_layers: Sequence[int] | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """JSON-ready summary: CLAS category percentages (+ bridge layers) and LAPE counts, if given."""
    out: dict[str, Any] = {"categories": None, "lape": None}
    if categories is not None:
        table = category_table(categories, bridge_layers)
        shared = {layer: p["partial_shared"] + p["all_shared"] for layer, p in table["percentages"].items()}
        out["categories"] = {**table, "shared_percent": shared}
    if lape is not None:
        counts = lape_counts(lape)
        out["lape"] = {
            "counts": counts,
            "per_lang": {lang: sum(v.values()) for lang, v in counts.items()},
        }
    return out
