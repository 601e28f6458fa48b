"""What every artifact records about where it came from."""

from __future__ import annotations

import os
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
    """The current UTC time, or $SOURCE_DATE_EPOCH when set (the reproducible-builds convention),
    so that two runs on the same inputs can write byte-identical artifacts."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(**extra: Any) -> dict[str, Any]:
    """Versions and creation time; callers add model fingerprint, data hash, parameters, seed."""
    return {"versions": versions(), "created": now_utc(), **extra}
