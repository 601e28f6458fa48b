"""``python -m xlsteer.results upgrade FILE...`` converts older result files in place;
``python -m xlsteer.results schema [OUT]`` writes the JSON Schema generated from the types."""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from ..errors import XlsteerError
    from ..io import atomic_write_json, read_json
    from .legacy import upgrade

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("upgrade", "schema"):
        print("usage: python -m xlsteer.results upgrade FILE... | schema [OUT.json]", file=sys.stderr)
        return 2
    if args[0] == "schema":
        from .schema import json_schema

        out = Path(args[1]) if len(args) > 1 else Path(__file__).with_name("schema.json")
        atomic_write_json(out, json_schema())
        print(f"wrote {out}")
        return 0
    try:
        for name in args[1:]:
            doc, notes = upgrade(read_json(name, "result file"), name)
            atomic_write_json(name, doc)
            print(f"upgraded {name} to {doc['format']} v{doc['version']}" + "".join(f"; {n}" for n in notes))
    except XlsteerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
