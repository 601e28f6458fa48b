"""``xlsteer results upgrade|schema``: convert result files of older formats; write the JSON Schema.

Why a command of its own: files written before the typed schema (version 1) stay readable by
name (:mod:`xlsteer.results.legacy`), and ``upgrade`` rewrites them once in the current format,
checked by the same readers ``table`` and ``report`` use before anything is replaced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .guard import Input, Output


@click.group("results")
def results_group() -> None:
    """Convert result files of older formats, or write the results JSON Schema."""


def _converted(path: str) -> tuple[Any, list[str], str | None]:
    """``(current document, notes, old format or None)`` of one file, checked with the readers."""
    from ..errors import DataError
    from ..io import read_json
    from ..results.legacy import describe, is_current
    from ..results.read import typed

    name = Path(path).name
    raw = read_json(path, "result file")
    old = None if is_current(raw) or not isinstance(raw, dict) else describe(raw)
    typed(raw, name)  # the file's reader accepts the conversion (raises one line if not)
    from ..results.legacy import upgrade

    doc, notes = upgrade(raw, name)
    if not isinstance(doc, dict):  # pragma: no cover - upgrade returns objects only
        raise DataError(f"{name} did not convert to a JSON object")
    return doc, notes, old


def _readable(tmp: Path) -> None:
    """What upgrade writes must load with the results reader (validated before the rename)."""
    from ..results.read import load_result

    load_result(tmp)


@results_group.command("upgrade")
@click.argument("files", nargs=-1, required=True, type=Input(dir_okay=False))
@click.option("--output", "-o", default=None, type=Output(),
              help="Write the converted file here instead of in place (one FILE only).")
def upgrade_cmd(files: tuple[str, ...], output: str | None) -> None:
    """Convert result files of older formats (version 1) to the current one, in place or to -o.

    Every file is converted and checked with the readers of ``xlsteer table`` and ``report``
    first; only then is any file replaced (atomically). Files already current are left alone;
    files of a newer version are refused (read them with the newer xlsteer).
    """
    from ..errors import UsageError
    from ..io import atomic_write_json, check_writable

    if output is not None and len(files) != 1:
        raise UsageError(f"-o names one output, but {len(files)} files were given; convert them in place "
                         "(without -o) or one at a time")
    if output is not None:
        check_writable(output)
    done = [(f, *_converted(f)) for f in files]  # every file checked before any is written
    for path, doc, notes, old in done:
        target = Path(output) if output is not None else Path(path)
        if old is None and output is None:
            click.echo(f"{path} is already {doc['format']} v{doc['version']}; left as it is")
            continue
        atomic_write_json(target, doc, validate=_readable)
        what = f"from {old} " if old else ""
        click.echo(f"upgraded {path} {what}to {doc['format']} v{doc['version']}" +
                   (f" -> {target}" if output is not None else "") + "".join(f"; {n}" for n in notes))


@results_group.command("schema")
@click.argument("output", required=False, type=Output())
def schema_cmd(output: str | None) -> None:
    """Write the JSON Schema of every result format (default: the schema.json shipped in the package)."""
    import xlsteer.results as pkg

    from ..io import atomic_write_json, read_json
    from ..results.schema import json_schema

    out = Path(output) if output else Path(pkg.__file__).with_name("schema.json")
    atomic_write_json(out, json_schema(), validate=lambda p: read_json(p, "JSON Schema"))
    click.echo(f"wrote {out}")


COMMANDS = [results_group]
