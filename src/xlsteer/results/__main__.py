"""``python -m xlsteer.results upgrade FILE... | schema [OUT]``: the same as ``xlsteer results ...``
(kept for the command lines of older docs)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from ..cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    return cli_main(["results", *args])


if __name__ == "__main__":
    sys.exit(main())
