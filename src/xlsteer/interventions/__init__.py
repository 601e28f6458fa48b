"""Interventions: every steering method is an :class:`Intervention` (``base.py``) made by a fit
function registered in the method registry (``registry.py``).

Nothing here imports the methods: the registries name the built-in ones (``"module:attr"``) and
import each module the first time it is asked for; plugins and tests add rows by running
``@register_method`` / ``@register_intervention``. The classes and fit functions of each method
live in their modules (``vector``, ``learned``, ``incline``, ``clas``, ``neurons``).
"""

from __future__ import annotations

from .base import (INTERVENTION_KINDS, Intervention, check_compatible, load_intervention, register_intervention,
                   site_widths)
from .fit import fit
from .registry import (STEERING_METHODS, LayerPolicy, StatisticsNeed, SteeringMethod, get_method, method_names,
                       register_method, registered)

__all__ = [
    "Intervention",
    "INTERVENTION_KINDS",
    "register_intervention",
    "load_intervention",
    "check_compatible",
    "site_widths",
    "fit",
    "STEERING_METHODS",
    "SteeringMethod",
    "LayerPolicy",
    "StatisticsNeed",
    "register_method",
    "registered",
    "get_method",
    "method_names",
]
