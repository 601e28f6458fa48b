"""Export commands: interventions to formats other runtimes serve (llama.cpp control vectors)."""

from __future__ import annotations

from typing import Any

import click

from .guard import Input, Output


def load_any_intervention(path: str) -> Any:
    """``Intervention.load`` of a file of any method (the intervention registry imports its kind),
    so a non-vector one gets a clear "cannot export" message."""
    from ..interventions import load_intervention

    return load_intervention(path)


@click.group("export")
def export_group() -> None:
    """Export an intervention for serving outside xlsteer."""


@export_group.command("gguf")
@click.argument("file", type=Input(dir_okay=False))
@click.option("--lang", "-l", default=None,
              help="Target language whose vector to export (optional when the vector has one language).")
@click.option("--output", "-o", required=True, type=Output(), help="Control-vector file to write (.gguf).")
@click.option("--model-hint", default=None, help="controlvector.model_hint (default: the fitted model's type).")
def export_gguf_cmd(file: str, lang: str | None, output: str, model_hint: str | None) -> None:
    """Write a resid_post steering vector as a llama.cpp control vector.

    Serve it with: llama-server -m MODEL.gguf --control-vector-scaled OUT.gguf:ALPHA
    (ALPHA is xlsteer's alpha; the file holds the vector at strength 1).
    """
    from ..data.langs import normalize_lang
    from ..errors import UsageError
    from ..export.gguf import export_control_vector, read_control_vector
    from ..io import check_writable

    from .options import spare_inputs

    check_writable(output)
    spare_inputs([output], [file])
    iv = load_any_intervention(file)
    if lang is None:
        if len(iv.languages) != 1:
            raise UsageError(
                f"this intervention covers {len(iv.languages)} languages ({', '.join(iv.languages)}); "
                "choose one with --lang (llama.cpp applies one control vector to every request)"
            )
        lang = iv.languages[0]
    path = export_control_vector(iv, lang, output, model_hint=model_hint)
    layers = sorted(read_control_vector(path))
    click.echo(
        f"wrote {path}: control vector for '{normalize_lang(lang)}' at layer(s) {', '.join(map(str, layers))} "
        f"(strength 1; xlsteer strength {iv.strength:g}); "
        f"serve with --control-vector-scaled {path}:{iv.strength:g}"
    )


COMMANDS = [export_group]
