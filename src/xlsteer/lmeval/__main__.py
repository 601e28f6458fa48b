"""``python -m xlsteer.lmeval <lm-eval CLI arguments>``: lm-eval's own command line, with the
``xlsteer`` model registered first (lm-eval's CLI only knows models already imported)."""

from __future__ import annotations

import importlib
from typing import Sequence

from . import harness


def main(argv: Sequence[str] | None = None) -> None:
    importlib.import_module(f"{__package__}.model")  # registers lm-eval's model "xlsteer"
    harness.run_cli(argv)


if __name__ == "__main__":  # pragma: no cover
    main()
