"""Analysis and report commands: ``xlsteer analyze`` and ``xlsteer report``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .guard import Input, Output, model_input
from .options import (FINITE, MAX_COUNT, SEED, count, data_dir_option, intervention_plugins, load_model_from,
                      model_options, parse_langs, parse_layers, spare_inputs)

# what analyze writes into its run directory (xlsteer.analysis.run)
_ANALYZE_WRITES = ("setup_analysis.json", "analysis_*.json", "figures/*.png")
# what report reads from a run directory (xlsteer.report.load)
_REPORT_READS = ("*.json", "figures/*.png")


@click.command("analyze")
@model_options
@data_dir_option
@click.option("--langs", required=True, help="Comma-separated languages, e.g. en,de,sw (the anchor is added if missing).")
@click.option("--anchor", default="en", show_default=True, help="Anchor language.")
@click.option("--intervention", "intervention_files", multiple=True, type=Input(dir_okay=False),
              callback=intervention_plugins,
              help="Intervention file (.safetensors); repeat for several. None: unsteered analysis only.")
@click.option("--layers", default="all", show_default=True, help="Layers: all, 6, 4-8, 2,5,9.")
@click.option("--data", "corpus", default="ntrex", show_default=True, type=Input(),
              help="Parallel text: ntrex, xquad, or a folder of <lang>.txt.")
@click.option("--split", default="validation", show_default=True,
              help="Corpus split (ntrex: fit | validation | all; xquad: fit). Default: text not used for fitting.")
@click.option("--limit", type=count(2), default=100, show_default=True, help="Parallel texts per language.")
@click.option("--compare-model", default=None, type=Input(), help="Second model of the same family (e.g. the base of an instruct model).")
@click.option("--eval", "eval_files", multiple=True, type=Input(dir_okay=False),
              help="Evaluation results JSON for the gain-vs-similarity regression; repeatable.")
@click.option("--stats", "stats_file", default=None, type=Input(dir_okay=False),
              help="Statistics with mlp_act sites (xlsteer collect) for CLAS categories and LAPE counts.")
@click.option("--categories", "categories_file", default=None, type=Input(dir_okay=False),
              help="CLAS categories JSON ({layer: {category: percent}}, see xlsteer.analysis.neuron_map).")
@click.option("--projection-layer", type=click.IntRange(-MAX_COUNT, MAX_COUNT), default=None, help="Layer for PCA/t-SNE (default: penultimate).")
@click.option("--pooling", type=click.Choice(["mean", "last"]), default="mean", show_default=True)
@click.option("--top-k", "k", type=count(1), default=10, show_default=True, help="Logit-lens top-k.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="random_state of t-SNE/PCA.")
@click.option("--batch-size", type=count(1), default=8, show_default=True)
@click.option("--max-length", type=count(2), default=128, show_default=True)
@click.option("--output", "-o", required=True, type=Output(folder=True, writes=_ANALYZE_WRITES),
              help="Run directory to write into.")
def analyze_cmd(**kw) -> None:
    """Similarity to the anchor, logit lens, projections, neuron map and regression, into a run directory."""
    from ..analysis.run import AnalysisConfig, AnalysisInputs, analyze
    from ..data.corpora import load_corpus
    from ..data.langs import normalize_lang
    from ..errors import UsageError
    from ..interventions.base import Intervention
    from ..models.loading import load_model

    out = Path(kw.pop("output"))
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} is a file; give a directory for the run (it is created if missing)")
    from ..io import files_written_into

    spare_inputs(files_written_into(out, _ANALYZE_WRITES),
                 [*kw["intervention_files"], *kw["eval_files"], kw["stats_file"], kw["categories_file"], kw["corpus"],
                  kw["compare_model"] and model_input(kw["compare_model"])], model=kw["model"], data_dir=kw["data_dir"])
    anchor = normalize_lang(kw.pop("anchor"))
    langs = parse_langs(kw.pop("langs"))
    if anchor not in langs:
        langs = [anchor] + langs
        click.echo(f"note: added the anchor {anchor} to the languages")
    if len(langs) < 2:
        raise UsageError("give at least one language besides the anchor, e.g. --langs en,de,sw")
    ivs = {}
    for path in kw.pop("intervention_files"):
        iv = Intervention.load(path)
        name = Path(path).name.removesuffix(".safetensors")
        base, i = name, 2
        while name in ivs:
            name, i = f"{base}-{i}", i + 1
        ivs[name] = iv
    compare_name = kw.pop("compare_model")
    model_kw = {k: kw[k] for k in ("dtype", "device", "device_map", "trust_remote_code", "allow_download")}
    lm = load_model_from(kw)
    from ..interventions import check_compatible

    for iv in ivs.values():
        check_compatible(iv, lm)  # fingerprint, layers and widths, before the run dir is created
    layers = parse_layers(kw.pop("layers"), lm.num_layers)
    corpus, split, limit = kw.pop("corpus"), kw.pop("split"), kw.pop("limit")
    par = load_corpus(corpus, data_dir=kw.pop("data_dir"), langs=langs, split=split, limit=limit)
    texts = {lang: par.texts[lang] for lang in par.langs}
    stats = None
    if kw.get("stats_file"):
        from ..stats import Statistics

        stats = Statistics.load(kw["stats_file"], fingerprint=lm.fingerprint)
    categories = _read_categories(kw["categories_file"]) if kw.get("categories_file") else None
    other = load_model(compare_name, **model_kw) if compare_name else None
    t0 = time.perf_counter()
    inputs = AnalysisInputs(stats=stats, categories=categories, eval_results=list(kw.pop("eval_files")) or None,
                            compare_with=other, meta={"corpus": par.name, "split": split, "limit": limit,
                                                      "data_hash": par.data_hash, "n_texts": len(par)})
    cfg = AnalysisConfig(anchor=anchor, pooling=kw.pop("pooling"), k=kw.pop("k"),
                         projection_layer=kw.pop("projection_layer"), random_state=kw.pop("seed"),
                         batch_size=kw.pop("batch_size"), max_length=kw.pop("max_length"))
    result = analyze(lm, out, texts, layers, ivs, cfg, inputs)
    for note in result["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {len(result['files'])} JSON files and {len(result['figures'])} figures to {out} "
               f"in {time.perf_counter() - t0:.1f} s; render them with: xlsteer report {out}")


def _read_categories(path: str) -> object:
    """The CLAS categories JSON, checked where it enters (not after the model has run)."""
    from ..analysis.neuron_map import category_table
    from ..errors import DataError
    from ..io import read_json

    doc = read_json(path, "categories file")
    try:
        category_table(doc)
    except DataError as e:
        raise DataError(f"categories file {path}: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise DataError(f"categories file {path} is malformed ({' '.join(str(e).split())[:160]}); give "
                        "{layer: {category: percent}} (see xlsteer.analysis.neuron_map)") from None
    return doc


def _own_report(path: Path) -> bool:
    from ..report import own_output

    return own_output(path)


def _report_figures(page: Path) -> list[Path]:
    from ..report import page_companions

    return page_companions(page)


@click.command("report")
@click.argument("run_dir", type=Input(reads=_REPORT_READS))
@click.option("--output", "-o", default=None, type=Output(replaceable=_own_report, companions=_report_figures),
              help="HTML file to write (default: RUN_DIR/report.html, or FILE.html for a result file).")
@click.option("--alpha", type=FINITE, default=0.05, show_default=True, help="Significance level for verdicts.")
@click.option("--title", default=None, help="Page title.")
def report_cmd(run_dir: str, output: str | None, alpha: float, title: str | None) -> None:
    """Render every result and figure in RUN_DIR (or one result file) as one self-contained HTML page,
    the answer first."""
    from ..io import check_outputs_spare_inputs, files_written_into
    from ..report import build_report, figure_dir, own_output, page_companions

    source = Path(run_dir)
    html = Path(output) if output is not None else (source.with_suffix(".html") if source.is_file()
                                                    else source / "report.html")
    reads = files_written_into(run_dir, _REPORT_READS) if source.is_dir() else []
    check_outputs_spare_inputs([html, *page_companions(html)], [*reads, run_dir], replaceable=own_output)
    path = build_report(run_dir, html, alpha=alpha, title=title)
    fig_dir = figure_dir(path)
    n = path.read_text(encoding="utf-8").count('src="data:image/png;base64,')
    click.echo(f"wrote {path} ({n} figures embedded; PNGs also in {fig_dir})")


COMMANDS = [analyze_cmd, report_cmd]
