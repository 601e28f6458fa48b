"""What every artifact records about where it came from."""

from __future__ import annotations

import platform
import sys
from datetime import datetime, timezone
from typing import Any

from . import __version__


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "xlsteer": __version__, "platform": platform.platform()}
    for pkg in ("torch", "transformers", "numpy", "safetensors", "accelerate", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(**extra: Any) -> dict[str, Any]:
    """Versions and creation time; callers add model fingerprint, data hash, parameters, seed."""
    return {"versions": versions(), "created": now_utc(), **extra}
