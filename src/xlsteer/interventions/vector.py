"""Residual-stream steering vectors (DiffMean and learned): ``h <- h + alpha * v[lang, layer]``.

Tensors: ``vectors@<layer>`` of shape (n_languages, d), one row per language in
``self.languages``. How the stored vector is scaled at application time is the parameter
``normalize``:

- ``none``      v as fitted (the raw mean difference; alpha = 1 moves the target mean onto the anchor mean)
- ``unit``      v / ||v||, so alpha is a norm in the residual stream's units (CLaS-Bench style)
- ``relative``  v / ||v|| * ref_norm[layer], so alpha is a fraction of that layer's typical
                token norm (comparable across models: Gemma's residual norm is ~7000, SmolLM2's ~130)
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ArtifactError
from ..hooks import ForwardContext
from ..models.sites import Site
from .base import Intervention, register


def vector_key(layer: int) -> str:
    return f"vectors@{layer}"


@register
class SteeringVector(Intervention):
    method = "vector"
    NORMALIZE = ("none", "unit", "relative")

    def validate(self) -> None:
        n = len(self.languages)
        for site in self.sites:
            t = self.tensors.get(vector_key(site.layer))
            if t is None or t.dim() != 2 or t.shape[0] != n:
                raise ArtifactError(
                    f"steering vector file lacks a ({n}, d) tensor '{vector_key(site.layer)}'; re-create it"
                )
        if self.params.get("normalize", "none") not in self.NORMALIZE:
            raise ArtifactError(f"unknown normalize mode {self.params.get('normalize')!r}")

    def effective(self, layer: int) -> torch.Tensor:
        """The (n_languages, d) vectors as added at strength 1, in float32."""
        v = self.tensors[vector_key(layer)].float()
        mode = self.params.get("normalize", "none")
        if mode == "none":
            return v
        unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if mode == "unit":
            return unit
        ref = float(self.params["ref_norm"][str(layer)])
        return unit * ref

    def _prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        v = self.effective(site.layer) * self.strength
        zero = torch.zeros(1, v.shape[1])
        # last row = zero vector, used by anchor rows (index -1)
        return torch.cat([v, zero]).to(device=device, dtype=dtype)

    def apply(self, site: Site, act: torch.Tensor, ctx: ForwardContext, prepared: torch.Tensor) -> torch.Tensor:
        idx = self.language_index(ctx, act.device)
        rows = prepared[idx]  # index -1 selects the zero row
        return act + rows.unsqueeze(1)
