"""Foundation commands: models, sites, collect."""

from __future__ import annotations

import time

import click

from .guard import Input, Output
from .options import (FINITE, count, data_dir_option, load_model_from, model_options, parse_langs, parse_layers,
                      spare_inputs)


@click.command("models")
def models_cmd() -> None:
    """List shipped and cached models."""
    from ..models.shipped import list_models

    rows = list_models()
    if not rows:
        click.echo("no models found")
    for row in rows:
        flags = ", ".join(f"{k}={v}" for k, v in row.items() if k != "name")
        click.echo(f"{row['name']:28s} {flags}")


@click.command("sites")
@click.argument("model_name", metavar="MODEL", default="gemma3-270m")
@click.option("--dtype", default="float32", type=click.Choice(["float32", "bfloat16", "float16"]))
@click.option("--trust-remote-code", is_flag=True)
@click.option("--allow-download", is_flag=True)
def sites_cmd(model_name: str, dtype: str, trust_remote_code: bool, allow_download: bool) -> None:
    """Print the model's layers and intervention sites with their widths."""
    from ..formats import table
    from ..models.loading import load_model
    from ..models.sites import describe_sites, site_names

    lm = load_model(model_name, dtype=dtype, trust_remote_code=trust_remote_code, allow_download=allow_download)
    rows = describe_sites(lm.model)
    n_layers = max(r["layer"] for r in rows) + 1
    click.echo(f"{lm.name}: {type(lm.model).__name__}, {n_layers} layers, width {lm.hidden_size}")
    names = site_names()
    by = {(r["layer"], r["site"]): r for r in rows}
    cells = [[layer, *(f"({by[(layer, n)]['width']}) {by[(layer, n)]['hook']}" if (layer, n) in by else "-"
                       for n in names)] for layer in range(n_layers)]
    click.echo(table(["layer", *names], cells, style="text"))


@click.command("collect")
@model_options
@data_dir_option
@click.option("--langs", required=True, help="Comma-separated languages, e.g. en,de,sw,zh.")
@click.option("--data", "corpus", default="ntrex", show_default=True, type=Input(),
              help="ntrex, xquad, or a folder of <lang>.txt.")
@click.option("--split", default="fit", show_default=True, help="Corpus split (ntrex: fit | validation | all).")
@click.option("--limit", type=count(1), default=200, show_default=True, help="Texts per language.")
@click.option("--layers", default="all", show_default=True, help="Layers: all, 6, 4-8, 2,5,9.")
@click.option("--site", "site_names", default="resid_post", show_default=True,
              help="Comma-separated sites: resid_pre,resid_post,attn_out,mlp_out,mlp_act.")
@click.option("--pooling", type=click.Choice(["mean", "last"]), default="mean", show_default=True)
@click.option("--threshold", type=FINITE, default=0.0, show_default=True, help="Also count P(act > threshold).")
@click.option("--keep-items", is_flag=True, help="Store one pooled vector per text (for projections, INCLINE).")
@click.option("--batch-size", type=count(1), default=8, show_default=True)
@click.option("--max-length", type=count(2), default=128, show_default=True)
@click.option("--output", "-o", required=True, type=Output(), help="Statistics file (.safetensors).")
def collect_cmd(**kw) -> None:
    """Collect activation statistics per language on parallel text."""
    from ..stats import collect_statistics
    from ..io import check_writable
    from ..models.sites import Site

    out = check_writable(kw.pop("output"))
    spare_inputs([out], [kw["corpus"]], model=kw["model"], data_dir=kw["data_dir"])
    langs = parse_langs(kw.pop("langs"))
    names = [s.strip() for s in kw.pop("site_names").split(",") if s.strip()]
    for n in names:
        Site(0, n)  # validates the name
    lm = load_model_from(kw)
    layers = parse_layers(kw.pop("layers"), lm.num_layers)
    sites = [Site(layer, n) for layer in layers for n in names]
    t0 = time.perf_counter()
    stats = collect_statistics(lm, langs=langs, sites=sites, corpus=kw.pop("corpus"), **kw)
    from ..distributed import is_main_process

    if not is_main_process():  # data-parallel launch: every process holds the merged result; rank 0 writes
        return
    stats.save(out)
    n_items = stats.counts(langs[0], sites[0])[0]
    click.echo(f"wrote {out} ({len(langs)} languages x {n_items} texts, {len(sites)} sites) "
               f"in {time.perf_counter() - t0:.1f} s")


COMMANDS = [models_cmd, sites_cmd, collect_cmd]
