"""The one Intervention abstraction every method produces.

Methods differ in how they are *fitted*, never in how they are applied: each is a small object
holding named tensors and JSON parameters, applying itself per row given the row's language,
and saving itself as one safetensors file whose metadata records method, parameters, sites,
languages, anchor, model fingerprint, data hash and library versions.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from ..errors import ArtifactError, FingerprintError, LanguageError, UsageError, XlsteerError
from ..hook_session import Rows
from ..io import load_tensors, save_tensors
from ..models.sites import SITES, Site, check_site, site_names, site_width
from ..provenance import provenance
from ..registry import Registry, require_plugins
from ..validation import check_fields, finite, integer, list_of, obj, optional, text
from .registry import method_for, method_plugin

# the JSON types of an intervention file's metadata (values are checked by the method's validate)
_METADATA = {
    "format": text, "format_version": integer(1, 1000), "method": text, "sites": list_of(text, min_len=1),
    "params": obj, "languages": list_of(text, min_len=1, unique=True), "anchor": text, "strength": finite,
    "model_fingerprint": optional(obj), "model": optional(text), "provenance": optional(obj),
    "plugins": optional(list_of(obj)),
}

FORMAT_VERSION = 1

#: The built-in intervention kinds: the ``method`` stored in a file -> the class that loads it.
BUILTIN_INTERVENTIONS: dict[str, str] = {
    "vector": "xlsteer.interventions.vector:SteeringVector",
    "incline": "xlsteer.interventions.incline:InclineIntervention",
    "clas": "xlsteer.interventions.clas:CLASIntervention",
    "lape": "xlsteer.interventions.neurons:LapeIntervention",
    "intmu": "xlsteer.interventions.neurons:IntMuIntervention",
}


def _accept(name: str, cls: Any) -> type["Intervention"]:
    if not (isinstance(cls, type) and issubclass(cls, Intervention)) or cls.method != name:
        raise TypeError(f"intervention kind {name!r} must be an Intervention subclass whose method is {name!r}")
    return cls


INTERVENTION_KINDS: Registry[type["Intervention"]] = Registry("intervention kind", BUILTIN_INTERVENTIONS,
                                                              accept=_accept)


def register_intervention(cls: type["Intervention"]) -> type["Intervention"]:
    """Class decorator: files whose ``method`` is ``cls.method`` are loaded as ``cls``."""
    INTERVENTION_KINDS.register(cls.method, cls)
    return cls


def check_alpha(alpha: Any, name: str = "alpha") -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {alpha!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {alpha!r}")
    return value


class Intervention:
    """Base class: tensors + params + sites; ``apply`` edits one site's activation.

    ``strength`` multiplies the effect without refitting (its meaning is method-specific and
    documented by each subclass; ``strength=0`` is always the identity).
    """

    method: ClassVar[str] = "base"

    def __init__(
        self,
        *,
        sites: list[Site],
        tensors: dict[str, torch.Tensor],
        params: dict[str, Any],
        languages: list[str],
        anchor: str = "en",
        strength: float = 1.0,
        meta: dict[str, Any] | None = None,
    ):
        self.sites = sorted(sites)
        self.tensors = tensors
        self.params = dict(params)
        self.languages = list(languages)
        self.anchor = anchor
        self.strength = check_alpha(strength, "strength")
        self.meta = dict(meta or {})
        self._prepared: dict[tuple[Site, str, torch.dtype], Any] = {}

    # ---- application -------------------------------------------------------------------
    # The hook engine calls ``prepare`` once per site when ``steer`` installs its hooks, then
    # ``apply`` in every forward call. ``apply`` must be *traceable*: tensor operations on the
    # activation, the prepared tensors and ``rows`` (each row's language index and the strength,
    # both tensors), with no Python branching on their values, so that torch.compile keeps a
    # steered decode step one graph and a new alpha or new row languages reuse it.
    #
    # A method that only adds a per-language vector implements ``row_vectors``; the default
    # ``_prepare`` and ``apply`` do the rest. Other methods override ``_prepare`` and ``apply``.

    def prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        """What ``apply`` needs at ``site``, on the hooked module's device, once (cached).

        Strength is not part of it (it arrives in ``rows``), so copies made by ``scaled`` /
        ``with_strength`` / ``at_layers`` share the prepared tensors.
        """
        key = (site, str(device), dtype)
        if key not in self._prepared:
            self._prepared[key] = self._prepare(site, device, dtype)
        return self._prepared[key]

    def _prepare(self, site: Site, device: torch.device, dtype: torch.dtype) -> Any:
        """Default: the additive table, ``row_vectors(site)`` with a zero row for index -1 (float32)."""
        vectors = self.row_vectors(site)
        if vectors is None:
            raise NotImplementedError(f"{type(self).__name__} must implement row_vectors or _prepare and apply")
        return row_table(vectors, torch.zeros(1, vectors.shape[-1]), device)

    def row_vectors(self, site: Site) -> torch.Tensor | None:
        """(n_languages, width) float vectors added at strength 1 (methods that add a vector per language)."""
        return None

    def apply(self, site: Site, act: torch.Tensor, rows: Rows, prepared: Any) -> torch.Tensor:
        """The edited activation ``(batch, tokens, width)`` (the engine keeps it only where the
        position policy and the routing select). Default: ``act + strength * v[row language]``."""
        check_width(self, site, act, prepared.shape[-1])
        return add_rows(act, rows, prepared)

    def row_index(self, langs: Sequence[str] | None, batch: int) -> list[int]:
        """Each row's index into ``self.languages`` (host side); -1 for rows left alone (the anchor).

        A single-language intervention may be used without language tags.
        """
        if langs is not None:
            missing = sorted({lang for lang in langs if lang != self.anchor and lang not in self.languages})
            if missing:
                raise LanguageError(
                    f"{self.method} intervention has no statistics for language(s) {', '.join(missing)} "
                    f"(it has {', '.join(self.languages)}); fit it with --langs including them"
                )
            rows = list(langs)
        elif len(self.languages) == 1:
            rows = [self.languages[0]] * batch
        else:
            raise LanguageError(
                f"this {self.method} intervention covers {len(self.languages)} languages; "
                "tag the inputs with --lang CODE (or --lang auto)"
            )
        index = {lang: i for i, lang in enumerate(self.languages)}
        return [index.get(lang, -1) for lang in rows]

    # ---- composition -------------------------------------------------------------------
    def _shallow_copy(self) -> "Intervention":
        """A copy sharing the tensors and their prepared (cast) forms, with its own params.

        Prepared tensors do not depend on strength or on which sites act, so a copy for another
        alpha or a subset of layers reuses them (no new allocation, same addresses for CUDA graphs).
        """
        out = copy.copy(self)
        out.params = dict(self.params)
        return out

    def scaled(self, factor: float) -> "Intervention":
        """A copy with strength multiplied by ``factor`` (no refit)."""
        out = self._shallow_copy()
        out.strength = self.strength * check_alpha(factor, "alpha")
        return out

    def at_layers(self, layers: Sequence[int]) -> "Intervention":
        """A shallow copy acting only at ``layers`` (tensors shared, not copied).

        How a sweep tries one layer of an intervention fitted at several (or all of them at once);
        the one implementation of it. Layers the intervention lacks are ignored, but at least one
        must be among its layers. (``SteeringVector.select_layers`` is another job: a smaller
        standalone vector, holding only those layers' tensors, to save or export.)
        """
        keep = set(layers)
        sites = [s for s in self.sites if s.layer in keep]
        if not sites:
            raise UsageError(
                f"the {self.method} intervention has no sites at layer(s) {sorted(keep)} "
                f"(it has layers {self.layers}); choose layers among those"
            )
        out = self._shallow_copy()
        out.sites = sorted(sites)
        return out

    def with_strength(self, strength: float) -> "Intervention":
        out = self.scaled(1.0)
        out.strength = check_alpha(strength, "alpha")
        return out

    @property
    def layers(self) -> list[int]:
        return sorted({s.layer for s in self.sites})

    @property
    def sweeps_together(self) -> bool:
        """Whether a dev sweep applies this intervention at every fitted layer together rather than
        at each layer alone (INCLINE, CLAS: as in their papers), per its method's registry entry."""
        spec = method_for(self)
        return spec is not None and spec.sweeps_together()

    @property
    def default_positions(self) -> str:
        """The position policy this intervention is applied with unless the caller chooses one.

        The one place that decides it: the fit stores it in ``params["positions"]`` (INCLINE:
        ``last_prompt``, as the authors patch the last prompt token only; the others ``all``).
        Every entry point (eval, sweep, compare, lm-eval, generate, export) asks this.
        """
        return str(self.params.get("positions") or "all")

    # ---- persistence -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """The file's JSON metadata; ``plugins`` names the plugins that registered its kind or its
        fit method (absent for built-ins), so a later process can say which to load."""
        out = {
            "format": "xlsteer.intervention",
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "sites": [str(s) for s in self.sites],
            "params": self.params,
            "languages": self.languages,
            "anchor": self.anchor,
            "strength": self.strength,
            **self.meta,
        }
        origins = [INTERVENTION_KINDS.origin(self.method), method_plugin(self)]
        plugins = [o.record() for i, o in enumerate(origins) if o is not None and o not in origins[:i]]
        if plugins:
            out["plugins"] = plugins
        return out

    def save(self, path: str | Path) -> Path:
        meta = self.metadata()
        meta.setdefault("provenance", provenance())
        return save_tensors(path, self.tensors, meta)

    @staticmethod
    def load(path: str | Path) -> "Intervention":
        tensors, meta = load_tensors(path, what="intervention file")
        required = ("format", "method", "sites", "params", "languages", "anchor", "strength")
        missing = [k for k in required if k not in meta]
        if meta.get("format") != "xlsteer.intervention" or missing:
            raise ArtifactError(
                f"intervention file {path} is missing metadata field(s) {', '.join(missing) or 'format'}; "
                "re-create it with `xlsteer fit`"
            )
        check_fields(meta, _METADATA, what=f"intervention file {path}", fix="re-create it with `xlsteer fit`",
                     required=required)
        require_plugins(meta.get("plugins"), f"intervention file {path}")
        cls = INTERVENTION_KINDS.find(meta["method"])
        if cls is None:
            raise ArtifactError(
                f"intervention file {path} has unknown method '{meta['method']}'; "
                f"known: {', '.join(INTERVENTION_KINDS.names())}"
            )
        extra = {k: v for k, v in meta.items() if k not in required and k != "format_version"}
        try:
            obj = cls(
                sites=[Site.parse(s) for s in meta["sites"]],
                tensors=tensors,
                params=meta["params"],
                languages=meta["languages"],
                anchor=meta["anchor"],
                strength=meta["strength"],
                meta=extra,
            )
            obj.validate()
            _check_within_model(obj)
        except ArtifactError as e:
            raise ArtifactError(f"intervention file {path}: {e}") from None
        except (XlsteerError, KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
            # a value of the right JSON type that the method cannot use (an unknown site name, a
            # parameter of the wrong type or shape): the file is the problem, not the command line
            why = " ".join(str(e).split())[:200] or type(e).__name__
            raise ArtifactError(f"intervention file {path} has invalid contents ({why}); "
                                "re-create it with `xlsteer fit`") from None
        return obj

    def validate(self) -> None:
        """Subclasses check their tensors' names and shapes after load."""

    def check_model(self, fingerprint: dict[str, Any]) -> None:
        """Refuse to run on a model other than the one this was fitted on."""
        from ..models.fingerprint import check_fingerprint

        expected = self.meta.get("model_fingerprint")
        if expected is None:
            return
        try:
            check_fingerprint(expected, fingerprint, what=f"{self.method} intervention")
        except FingerprintError:
            raise


def _check_within_model(iv: Intervention) -> None:
    """Layers exist in the model the file was fitted on (0..num_layers-1); a recorded site name is
    one of the known sites. Checked at load, so ``export`` and ``inspect`` refuse them too."""
    n = (iv.meta.get("model_fingerprint") or {}).get("num_layers")
    bad = [layer for layer in iv.layers if layer < 0 or (isinstance(n, int) and layer >= n)]
    if bad:
        top = f"0..{n - 1}" if isinstance(n, int) else "0 or more"
        raise ArtifactError(f"layer {bad[0]} is outside the model it was fitted on (layers {top}); re-create it")
    site = iv.params.get("site")
    if site is not None and site not in SITES:
        raise ArtifactError(f"params.site {str(site)[:40]!r} is not a site name ({', '.join(site_names())}); "
                            "re-create it")


def default_positions(interventions: Any, given: str | None = None) -> str:
    """The position policy to steer with: ``given`` if set, else the one the interventions store.

    INCLINE stores ``last_prompt`` (the authors patch the last prompt token only); a caller that
    does not choose must get that, not ``all``. Interventions that disagree need an explicit choice.
    """
    if given is not None:
        return given
    ivs = interventions if isinstance(interventions, (list, tuple)) else ([] if interventions is None else [interventions])
    stored = {iv.default_positions for iv in ivs if isinstance(iv, Intervention)}
    if len(stored) > 1:
        raise UsageError(f"the interventions store different position policies ({', '.join(sorted(stored))}); "
                         "choose one with --positions")
    return stored.pop() if stored else "all"


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


def require_file_plugins(path: str | Path) -> None:
    """Refuse, in one line, an intervention file made with a plugin this process has not loaded,
    reading only its metadata (a damaged file is left to :meth:`Intervention.load` to report)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("xlsteer") or "{}")
    except Exception:  # noqa: BLE001  (unreadable here: the full load says why)
        return
    if isinstance(meta, dict) and isinstance(meta.get("plugins"), list):
        require_plugins([p for p in meta["plugins"] if isinstance(p, dict)], f"intervention file {path}")


def load_intervention(path: str | Path, lm: Any = None) -> Intervention:
    """Load any intervention file (``Intervention.load``); with ``lm``, also check it fits that model."""
    iv = Intervention.load(path)
    if lm is not None:
        check_compatible(iv, lm)
    return iv


# ---- traceable building blocks of ``apply`` (shared by the methods) ----------------------------


def row_table(per_language: torch.Tensor, last: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``(n_languages + 1, width)`` float32 on ``device``: one row per language, then ``last`` for index -1."""
    return torch.cat([per_language.float(), last.float()]).to(device=device, dtype=torch.float32)


def add_rows(act: torch.Tensor, rows: Rows, table: torch.Tensor) -> torch.Tensor:
    """``act + strength * table[row]`` on every position of each row (table float32, last row zero)."""
    delta = (rows.strength * table[rows.index]).to(act.dtype)
    return act + delta.unsqueeze(1)


def scale_rows(act: torch.Tensor, rows: Rows, table: torch.Tensor) -> torch.Tensor:
    """``act * (1 + strength * table[row])`` per neuron (table float32 of ``factor - 1``, last row zero)."""
    scale = (1 + rows.strength * table[rows.index]).to(act.dtype)
    return act * scale.unsqueeze(1)


def check_width(iv: Intervention, site: Site, act: torch.Tensor, width: int) -> None:
    """Refuse an activation of another width (an artifact applied to another model)."""
    if act.shape[-1] != width:
        raise FingerprintError(
            f"{iv.method} intervention at {site} was fitted for width {width}, but the model's activation "
            f"there has width {act.shape[-1]}; fit it again for this model"
        )
