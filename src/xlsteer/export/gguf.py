"""Export steering vectors as llama.cpp control vectors (GGUF), so a steered model can be served
by llama.cpp (``llama-server --control-vector-scaled vec.gguf:ALPHA``) without Python.

The format, as llama.cpp reads it (vendored llama.cpp 0c1e570 in llama-cpp-python 0.3.36):

* ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (a string, not
  checked) and ``controlvector.layer_count`` (the number of direction tensors, not read by
  the loader) -- as written by ``tools/cvector-generator/cvector-generator.cpp`` (export_gguf)
  and by repeng's ``ControlVector.export_gguf`` (repeng/extract.py).
* one float32 1-D tensor ``direction.N`` of n_embd values per steered layer.

Layer indexing (the part that is easy to get wrong):

* ``common/common.cpp``, ``common_control_vector_load_one``: parses N from ``direction.N``,
  rejects N == 0 ("invalid (zero) direction tensor layer index") and stores the tensor times the
  file's scale at ``data[n_embd * (N - 1)]`` ("layer 1 at [0]"); several files are summed.
* ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``: copies ``data + n_embd * (il - 1)``
  into ``tensors[il]`` for il = 1 .. n_layer - 1 (``tensors[0]`` is always null: "there's
  never a tensor for layer 0"); ``apply_to(ctx, cur, il)`` adds ``tensors[il]`` to ``cur``.
* ``src/models/gemma3.cpp`` (and every other architecture): ``cur = build_cvec(cur, il)`` is
  the last operation of decoder layer ``il`` (0-based), after the FFN residual add, and its
  result is named ``l_out``: the layer's output, the input of layer ``il + 1``.

So ``direction.N`` is added to the output of 0-based decoder layer N, i.e. exactly xlsteer's
``resid_post@N`` (transformers' ``model.layers[N]`` output, ``hidden_states[N + 1]``). N is
*not* shifted by one; repeng writes ``direction.{layer}`` with the same 0-based layer index.
(llama.cpp's own cvector-generator writes the difference read at ``l_out`` of layer il into
``direction.{il+1}``, which the loader then applies one layer later; that is the generator's
choice, not the loader's convention.) Consequences: ``resid_post@0`` cannot be exported at all
(llama.cpp never steers layer 0), and only ``resid_post`` vectors have a llama.cpp equivalent.

What is exported is :meth:`SteeringVector.effective` (normalisation applied) at strength 1 for
one language: ``--control-vector-scaled vec.gguf:ALPHA`` then adds ``ALPHA * v`` at every token
(BOS, prompt and generated), which is xlsteer's ``steer(..., positions="all")`` at strength ALPHA.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, LanguageError, UsageError
from ..io import atomic_path, check_writable

ARCH = "controlvector"
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def _model_hint(intervention: Any, model_hint: str | None) -> str:
    """The hint llama.cpp stores but does not check: the fitted model's type when known."""
    if model_hint:
        return str(model_hint)
    fp = intervention.meta.get("model_fingerprint") or {}
    return str(fp.get("model_type") or fp.get("architecture") or "unknown")


def control_vector_directions(intervention: Any, lang: str) -> dict[int, np.ndarray]:
    """{llama.cpp direction index: float32 (d,) vector} for ``lang`` (checks method, site, layer)."""
    from ..data.langs import normalize_lang
    from ..interventions.vector import SteeringVector

    if not isinstance(intervention, SteeringVector):
        method = getattr(intervention, "method", type(intervention).__name__)
        raise UsageError(
            f"only steering vectors (method 'vector') can be exported to a llama.cpp control vector, "
            f"not a '{method}' intervention (it is not a fixed residual-stream offset); fit diffmean or learned instead"
        )
    if intervention.default_positions != "all":
        raise UsageError(
            f"llama.cpp applies a control vector at every position, but this vector is applied at "
            f"'{intervention.default_positions}' positions (params.positions); refit it for all positions"
        )
    bad = [str(s) for s in intervention.sites if s.name != "resid_post"]
    if bad:
        raise UsageError(
            f"only resid_post vectors can be exported: llama.cpp adds control vectors to the layer output, and this "
            f"vector is at {', '.join(bad)}; refit it at resid_post (resid_pre@L is the same point as resid_post@L-1)"
        )
    if 0 in intervention.layers:
        raise UsageError(
            "llama.cpp never applies a control vector to layer 0 (direction.0 is rejected); "
            "drop layer 0 (SteeringVector.select_layers) or refit at layers >= 1"
        )
    code = normalize_lang(lang)
    if code == intervention.anchor:
        raise LanguageError(
            f"'{code}' is the anchor language, which is never steered; export a target language "
            f"({', '.join(intervention.languages)})"
        )
    if code not in intervention.languages:
        raise LanguageError(
            f"this steering vector has no row for '{code}' (it has {', '.join(intervention.languages)}); "
            "choose one of those or fit it with that language"
        )
    row = intervention.languages.index(code)
    out: dict[int, np.ndarray] = {}
    for layer in intervention.layers:
        v = intervention.effective(layer)[row].detach().cpu().numpy().astype(np.float32)
        if not np.isfinite(v).all():
            raise ArtifactError(f"the vector at resid_post@{layer} contains NaN or Inf; re-create it")
        out[layer] = np.ascontiguousarray(v)  # direction.N = resid_post@N (see module docstring)
    return out


def export_control_vector(
    intervention: Any, lang: str, path: str | os.PathLike, model_hint: str | None = None
) -> Path:
    """Write ``intervention``'s vector for ``lang`` as a llama.cpp control-vector GGUF at ``path``.

    The file holds the effective vector at strength 1; serve it with
    ``--control-vector-scaled PATH:ALPHA`` (ALPHA = xlsteer's alpha / strength). The
    intervention's own strength is recorded (``xlsteer.strength``) but not baked in.
    """
    import gguf

    directions = control_vector_directions(intervention, lang)
    target = check_writable(path)
    from ..data.langs import normalize_lang

    info = {
        "lang": normalize_lang(lang),
        "anchor": intervention.anchor,
        "sites": [str(s) for s in intervention.sites],
        "normalize": intervention.params.get("normalize", "none"),
        "strength": intervention.strength,
        "fit": intervention.params.get("fit"),
    }
    with atomic_path(target, validate=lambda tmp: _same_directions(tmp, directions)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", _model_hint(intervention, model_hint))
        writer.add_uint32(f"{ARCH}.layer_count", len(directions))
        writer.add_string("xlsteer.lang", info["lang"])
        writer.add_float32("xlsteer.strength", float(intervention.strength))
        writer.add_string("xlsteer.info", json.dumps(info, sort_keys=True))
        for layer, vec in sorted(directions.items()):
            writer.add_tensor(f"direction.{layer}", vec)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target


def _same_directions(path: Path, directions: dict[int, np.ndarray]) -> None:
    """The file just written reads back as a control vector holding exactly ``directions``."""
    got = read_control_vector(path)
    if sorted(got) != sorted(directions) or not all(np.array_equal(got[k], directions[k]) for k in directions):
        raise ArtifactError("the control vector read back differs from the one exported")


# ---- reading back (tests, inspection) -------------------------------------------------------


def _field_value(field: Any) -> Any:
    """A scalar or string GGUF field's value (works across gguf-py versions)."""
    part = field.parts[field.data[0]]
    if part.dtype == np.uint8 and len(field.types) and field.types[0].name == "STRING":
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def _reader(path: str | os.PathLike) -> Any:
    import gguf

    from ..bounded import check_file

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"control vector file {p} does not exist; check the path")
    check_file(p, "gguf", "control vector file", ArtifactError)
    try:
        return gguf.GGUFReader(str(p))
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise ArtifactError(f"{p} is not a readable GGUF file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def read_control_vector_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Every scalar/string key-value field of a control-vector GGUF (``general.architecture``, ...)."""
    reader = _reader(path)
    out: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            out[name] = _field_value(field)
        except (IndexError, UnicodeDecodeError):
            continue
    return out


def read_control_vector(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """{direction index N: float32 (d,) array} of a llama.cpp control-vector GGUF file."""
    reader = _reader(path)
    try:
        arch_field = reader.get_field("general.architecture")
        arch = _field_value(arch_field) if arch_field is not None else None
        if arch != ARCH:
            raise ArtifactError(f"{path} is not a control vector (general.architecture is {arch!r}, not '{ARCH}')")
        out: dict[int, np.ndarray] = {}
        for t in reader.tensors:
            m = _DIRECTION.match(t.name)
            if m is None:
                raise ArtifactError(f"{path} has a tensor {t.name!r}; a control vector only holds direction.N tensors")
            out[int(m.group(1))] = np.array(t.data, dtype=np.float32).reshape(-1)  # copy: the reader memory-maps
    except (ValueError, IndexError, KeyError, TypeError) as e:  # a damaged field (e.g. a string that is not UTF-8)
        raise ArtifactError(f"{path} is not a readable GGUF file ({type(e).__name__}); re-export it") from None
    return out
