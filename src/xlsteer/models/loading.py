"""Load models (shipped GGUF packages, local folders, .gguf files, hub ids) as a :class:`LoadedModel`.

Fingerprints live in :mod:`xlsteer.models.fingerprint`, the shipped models and their conversion
cache in :mod:`xlsteer.models.shipped`, the device and dtype options in
:mod:`xlsteer.models.devices`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import ModelError
from .devices import resolve_device_map, resolve_dtype
from .fingerprint import fingerprint_of
from .shipped import SHIPPED, _dist_version, _ensure_converted, _first_line, _read_record
from .sites import text_config


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where they came from."""

    model: Any
    tokenizer: Any
    name: str
    fingerprint: dict
    source: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (with a device map, layers may live elsewhere)."""
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def num_layers(self) -> int:
        return int(text_config(self.model.config).num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(text_config(self.model.config).hidden_size)

    @property
    def model_type(self) -> str:
        return str(text_config(self.model.config).model_type)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _unknown(name: str) -> ModelError:
    return ModelError(
        f"unknown model {name!r}: use a shipped model ({', '.join(SHIPPED)}), a local folder, or --allow-download for a hub id"
    )


def _resolve(name_or_path: str, allow_download: bool) -> tuple[str, str, dict]:
    """(name, where to load from, source record) for a shipped name, a folder, a .gguf or a hub id."""
    if name_or_path in SHIPPED:
        spec = SHIPPED[name_or_path]
        if not spec.installed():
            raise ModelError(f"shipped model {spec.name!r} is not installed; run: {spec.install}")
        sha = spec.sha256()
        record = {"source_package": spec.distribution, "source_version": _dist_version(spec.distribution)}
        folder, converted = _ensure_converted(spec.gguf_path, spec.name, sha, record)
        source = {"kind": "shipped", "path": str(folder), "converted_now": converted, **_read_record(folder)}
        return spec.name, str(folder), source

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"folder {path} has no config.json; give a folder written by save_pretrained")
        full = str(path.resolve())
        return full, full, {"kind": "local", "path": full}
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelError(f"{path} is a file; give a model folder, a .gguf file or a shipped model name")
        from ..io import sha256_file

        sha = sha256_file(path)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-") or "model"
        folder, converted = _ensure_converted(lambda: path, stem, sha, {"source_file": str(path.resolve())})
        source = {"kind": "gguf", "path": str(folder), "converted_now": converted, **_read_record(folder)}
        return str(path.resolve()), str(folder), source

    if not allow_download:
        raise _unknown(name_or_path)
    if _hub_offline():
        raise ModelError(
            f"cannot download {name_or_path!r}: HF_HUB_OFFLINE is set; unset it, or use a local folder or a shipped model"
        )
    return name_or_path, name_or_path, {"kind": "hub", "repo_id": name_or_path}


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    device_map: str | Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    allow_download: bool = False,
    attn_implementation: str | None = None,
) -> LoadedModel:
    """Load a shipped model, a local transformers folder, a local .gguf file or (when allowed) a hub id.

    The tokenizer pads on the left (with EOS when it has no pad token); the model is in eval
    mode. Remote code is never run unless ``trust_remote_code`` is set. ``attn_implementation``
    ("eager", "sdpa", ...) is passed on when given (None: transformers' default).
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # xlsteer shows its own progress; weight loading is quick
    torch_dtype = resolve_dtype(dtype)
    dmap = resolve_device_map(device_map, device)  # checks devices before any slow work
    name, where, source = _resolve(str(name_or_path), allow_download)
    local_only = source["kind"] != "hub"
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    from safetensors import SafetensorError

    try:
        tokenizer = _load_tokenizer(where, **kwargs)
        extra: dict[str, Any] = {}
        if dmap is not None:
            extra["device_map"] = dmap
        if attn_implementation is not None:
            extra["attn_implementation"] = attn_implementation
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **extra, **kwargs)
    except ImportError as e:
        raise ModelError(f"cannot load {name!r}: a required package is missing ({_first_line(e)}); install it") from e
    except SafetensorError as e:  # a truncated or damaged weights file
        raise ModelError(f"cannot load {name!r}: its weights file is corrupted or truncated ({_first_line(e)}); "
                         "save or download the model again") from None
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
        msg = _first_line(e)
        if "trust_remote_code" in msg and not trust_remote_code:
            raise ModelError(
                f"{name!r} needs its own code from the hub; pass --trust-remote-code only if you trust its authors"
            ) from e
        hint = "check the id and your network" if source["kind"] == "hub" else "check that it is a causal language model"
        raise ModelError(f"cannot load {name!r} ({msg}); {hint}") from e

    _prepare_tokenizer(tokenizer, name)
    model.eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if source["kind"] == "hub":
        source["revision"] = getattr(model.config, "_commit_hash", None)
    source["dtype"] = str(model.dtype).removeprefix("torch.")
    if dmap is not None:
        source["device_map"] = dmap if isinstance(dmap, str) else {k: str(v) for k, v in dmap.items()}
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=fingerprint_of(model, tokenizer), source=source)


def _load_tokenizer(where: str, **kwargs: Any) -> Any:
    """AutoTokenizer, except for folders whose tokenizer_config declares the generic class.

    Why: for some model types (qwen2, phi3, ...) transformers 5 ignores a declared generic
    ``TokenizersBackend`` and rebuilds the tokenizer with the family's own pre-tokenizer, which
    silently changes the ids of any tokenizer.json that is not the family's own (the tiny test
    tokenizers, custom vocabularies). The generic class loads tokenizer.json exactly as saved.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(where)
    cfg_file = folder / "tokenizer_config.json"
    if folder.is_dir() and cfg_file.is_file() and (folder / "tokenizer.json").is_file():
        try:
            declared = json.loads(cfg_file.read_text(encoding="utf-8")).get("tokenizer_class")
        except (OSError, json.JSONDecodeError):
            declared = None
        if declared in ("TokenizersBackend", "PreTrainedTokenizerFast"):
            return PreTrainedTokenizerFast.from_pretrained(where, **kwargs)
    return AutoTokenizer.from_pretrained(where, **kwargs)


def _prepare_tokenizer(tokenizer: Any, name: str) -> None:
    """Left padding (generation continues right after the prompt); pad with EOS when unset."""
    if tokenizer.pad_token is None:
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
        else:
            raise ModelError(f"the tokenizer of {name!r} has no pad, EOS, UNK or BOS token to pad with; add one to it")
    tokenizer.padding_side = "left"
