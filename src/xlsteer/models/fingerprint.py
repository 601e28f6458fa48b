"""Model fingerprints: what identifies a model for the artifacts made with it, and the check that they fit.

Why: every artifact (statistics, interventions, results) records the model it was made for, so
applying a steering vector to another model (or another width) fails with a clear message
instead of silently producing nonsense. The hashes leave out what changes with the loader, the
dtype or the library version, not with the network itself.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

from ..errors import FingerprintError
from .sites import text_config


# Config fields that change with the loader, the dtype or the transformers version but not with
# the network itself. Every key starting with "_" is dropped as well (_name_or_path, _commit_hash,
# _model_name_or_path from GGUF metadata, ...).
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "torch_dtype",
        "dtype",
        "quantization_config",
        "use_cache",
        "architectures",
        "attn_implementation",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "is_local",
    }
)


def _strip_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: _strip_volatile(v)
            for k, v in obj.items()
            if not str(k).startswith("_") and k not in VOLATILE_CONFIG_KEYS
        }
    if isinstance(obj, list):
        return [_strip_volatile(v) for v in obj]
    return obj


def config_hash(config: Any) -> str:
    """sha256 of the config's JSON without volatile fields (same network -> same hash)."""
    raw = json.loads(config.to_json_string(use_diff=False))
    text = json.dumps(_strip_volatile(raw), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the vocabulary's (token, id) items sorted by id, and the BOS/EOS/UNK tokens.

    The pad token is left out on purpose: :func:`load_model` sets it to EOS when missing, and
    that does not change how text maps to ids. Sorting by id rather than by token string halves
    the time for 262k-entry vocabularies.
    """
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = {name: getattr(tokenizer, f"{name}_token", None) for name in ("bos", "eos", "unk")}
    text = json.dumps({"special": special, "vocab": items}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def weights_hash(model: Any, per_tensor: int = 64) -> str:
    """sha256 of a strided sample of every parameter, in its own dtype (cheap even for 8B models).

    Two models with one config (a base model and its fine-tune, fp32 and bf16 copies) get
    different hashes, so cached evaluation results are never served to the wrong weights. It is
    not compared by :func:`check_fingerprint`: a vector fitted in fp32 may be applied in bf16.
    Offloaded ('meta') parameters contribute their name and shape only.
    """
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            if p.device.type == "meta" or p.numel() == 0:
                continue
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // per_tensor)
            sample = flat[::step][:per_tensor].cpu().contiguous()
            h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint_of(model: Any, tokenizer: Any) -> dict:
    """What identifies a model for the artifacts made with it (JSON-serialisable)."""
    cfg = text_config(model.config)
    inter = getattr(cfg, "intermediate_size", None)
    if inter is None:  # GPT-2 names it n_inner, None meaning 4 x width
        inter = getattr(cfg, "n_inner", None) or 4 * int(cfg.hidden_size)
    return {
        "architecture": type(model).__name__,
        "model_type": str(cfg.model_type),
        "num_layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "intermediate_size": int(inter),
        "config_hash": config_hash(model.config),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "weights_hash": weights_hash(model),
    }


# Checked in this order: the first mismatch names the most telling difference.
FINGERPRINT_FIELDS = (
    "hidden_size",
    "architecture",
    "model_type",
    "num_layers",
    "intermediate_size",
    "config_hash",
    "tokenizer_hash",
)


def check_fingerprint(expected: Mapping[str, Any], actual: Mapping[str, Any], what: str, ignore: Iterable[str] = ()) -> None:
    """Raise FingerprintError if ``what`` (made for ``expected``) does not fit the ``actual`` model.

    Fields missing from either side are not compared (older artifacts may lack some).
    """
    skip = set(ignore)
    for key in FINGERPRINT_FIELDS:
        if key in skip or key not in expected or key not in actual:
            continue
        e, a = expected[key], actual[key]
        if e == a:
            continue
        if key == "hidden_size":
            raise FingerprintError(
                f"{what} was made for a model of width {e}, this model has width {a}; fit it again for this model"
            )
        if key.endswith("_hash"):
            e, a = str(e)[:12], str(a)[:12]
        raise FingerprintError(
            f"{what} was made for another model ({key} {e} there, {a} here); "
            f"load the model it was made for, or fit it again for this model"
        )
