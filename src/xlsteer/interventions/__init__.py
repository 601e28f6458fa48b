"""Interventions: every steering method is an :class:`Intervention` (see ``base.py``).

Importing this package registers every method: its intervention class (so
:func:`load_intervention` can load any intervention file) and its fit function in the method
registry (:mod:`xlsteer.interventions.registry`). The modules are imported in a fixed order,
which is the order methods are listed in (``xlsteer fit --help``, ``xlsteer compare``). Fit
functions: ``fit_diffmean``, ``fit_learned``, ``fit_incline``, ``fit_clas``, ``fit_lape``,
``fit_intmu``, and the dispatcher ``fit``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import FingerprintError
from .base import Intervention, register, registered_methods

# the order of these imports is the order of the method registry
from .vector import SteeringVector, fit_diffmean, vector_key  # isort: skip
from .learned import fit_learned  # isort: skip
from .training import TrainableSteeringVector  # isort: skip
from .incline import InclineIntervention, fit_incline, incline_texts  # isort: skip
from .clas import CLASIntervention, fit_clas, neuron_categories, select_bridge_layers  # isort: skip
from .neurons import IntMuIntervention, LapeIntervention, fit_intmu, fit_lape, lape_neurons  # isort: skip
from .fit import fit  # isort: skip
from .registry import (LayerPolicy, SteeringMethod, StatisticsNeed, get_method, method_names,  # isort: skip
                       register_method, registered)

__all__ = [
    "Intervention",
    "register",
    "registered_methods",
    "SteeringVector",
    "TrainableSteeringVector",
    "CLASIntervention",
    "InclineIntervention",
    "LapeIntervention",
    "IntMuIntervention",
    "fit",
    "METHODS",
    "SteeringMethod",
    "LayerPolicy",
    "StatisticsNeed",
    "register_method",
    "registered",
    "get_method",
    "method_names",
    "fit_diffmean",
    "fit_learned",
    "fit_clas",
    "fit_incline",
    "fit_lape",
    "fit_intmu",
    "neuron_categories",
    "select_bridge_layers",
    "lape_neurons",
    "incline_texts",
    "vector_key",
    "load_intervention",
    "check_compatible",
]


def __getattr__(name: str) -> Any:
    """``METHODS``: the registered steering methods' names, read from the registry when asked."""
    if name == "METHODS":
        return tuple(method_names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def site_widths(iv: Intervention) -> dict[Any, int]:
    """The activation width each site of ``iv`` expects (last dim of its ``<name>@<layer>`` tensors)."""
    out = {}
    for site in iv.sites:
        for key, t in iv.tensors.items():
            if key.endswith(f"@{site.layer}"):
                out[site] = int(t.shape[-1])
                break
    return out


def check_compatible(iv: Intervention, lm: Any) -> None:
    """Raise FingerprintError if ``iv`` was fitted for another model than ``lm`` (a LoadedModel)
    or its tensors do not fit the model's widths (also when the file has no fingerprint)."""
    from ..models.sites import check_site, site_width

    fingerprint = getattr(lm, "fingerprint", None)
    if fingerprint is not None:
        iv.check_model(fingerprint)
    model = getattr(lm, "model", lm)
    for site, width in site_widths(iv).items():
        check_site(model, site)
        actual = site_width(model, site.name)
        if actual != width:
            raise FingerprintError(
                f"{iv.method} intervention expects width {width} at {site}, this model has {actual}; "
                "fit it again for this model"
            )


def load_intervention(path: str | Path, lm: Any = None) -> Intervention:
    """Load any intervention file (``Intervention.load``); with ``lm``, also check it fits that model."""
    iv = Intervention.load(path)
    if lm is not None:
        check_compatible(iv, lm)
    return iv
