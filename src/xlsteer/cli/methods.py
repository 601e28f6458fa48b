"""Method commands: fit (any steering method), generate (unsteered vs steered), inspect (an artifact).

Thin wrappers: ``fit`` calls ``xlsteer.interventions.fit.fit`` and saves the intervention (an
atomic write); ``generate`` runs the evaluation engine's greedy generation twice (no
intervention, then the interventions) so both go through the same code path; ``inspect`` reads
the JSON metadata and tensors of an intervention or statistics file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..errors import LanguageError, UsageError, XlsteerError
from .guard import Input, Output
from .options import (compile_option, compile_setting, count, data_dir_option, intervention_plugins,
                      load_model_from, model_options, parse_float, parse_langs, parse_layers, spare_inputs)
from .params import parse_params

_POSITIONS = ["all", "prompt", "generated", "last_prompt"]


class MethodChoice(click.Choice):
    """The registered steering methods, read when a command line is parsed or help is shown (not
    when the CLI is imported: registering them imports torch)."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from ..interventions.registry import method_names

        return tuple(method_names())

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


class FitCommand(click.Command):
    """``xlsteer fit``: the help lists every registered method with its one-line description."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        from ..interventions.registry import get_method, method_names

        with formatter.section("Methods"):
            formatter.write_dl([(name, f"{get_method(name).description} [site {get_method(name).site}]")
                                for name in method_names()])

def _fit_name(iv_method: str, params: dict[str, Any]) -> str:
    """'diffmean'/'learned' for steering vectors (params["fit"]), else the method name."""
    fit_name = params.get("fit")
    return fit_name if isinstance(fit_name, str) else iv_method


def _fmt_layers(layers: list[int]) -> str:
    return ",".join(str(x) for x in layers) if layers else "-"


# ---------------------------------------------------------------------------------------------
# fit


@click.command("fit", cls=FitCommand)
@click.argument("method", metavar="METHOD", type=MethodChoice())
@model_options
@data_dir_option
@click.option("--langs", required=True, help="Comma-separated target languages, e.g. de,sw,zh (the anchor is added).")
@click.option("--anchor", default="en", show_default=True, help="Anchor language (never steered).")
@click.option("--data", "corpus", default="ntrex", show_default=True, type=Input(),
              help="Parallel text: ntrex, xquad (articles 5-9), or a folder of line-aligned <lang>.txt files.")
@click.option("--split", type=click.Choice(["fit", "validation", "all"]), default="fit", show_default=True,
              help="Corpus rows (ntrex: fit = lines 0-1499; folders: fit = first 75%).")
@click.option("--layers", default=None,
              help="Layers: 6, 4-8, 2,5,9, all (default: the method's, see xlsteer.interventions.fit).")
@click.option("--site", default=None, help="Site (default: the method's, listed above; clas acts at mlp_act only, "
                                          "lape/intmu at mlp_gate or mlp_act).")
@click.option("--pooling", type=click.Choice(["mean", "last"]), default="mean", show_default=True)
@click.option("--limit", type=count(1), default=200, show_default=True,
              help="First N corpus rows per language.")
@click.option("--batch-size", type=count(1), default=8, show_default=True)
@click.option("--max-length", type=count(2), default=128, show_default=True)
@click.option("--param", "-p", "params", multiple=True,
              help="Method parameter KEY=VALUE (repeatable; JSON values), e.g. normalize=unit, ridge=0.01, beta=0.4.")
@click.option("--stats-cache", default=None, type=Output(),
              help="Statistics file to reuse when it covers this fit (else written after collection).")
@click.option("--output", "-o", required=True, type=Output(), help="Intervention file (.safetensors).")
def fit_cmd(**kw: Any) -> None:
    """Fit a steering METHOD on parallel text and save it as one intervention file.

    The defaults per method (site, layers, statistics) are listed in xlsteer.interventions.fit.
    """
    from ..data.corpora import load_corpus
    from ..data.langs import normalize_lang
    from ..interventions.fit import fit
    from ..interventions.registry import get_method
    from ..io import check_writable
    from ..models.sites import Site

    t0 = time.perf_counter()
    method = kw.pop("method")
    out = check_writable(kw.pop("output"))
    stats_cache = kw.pop("stats_cache")
    if stats_cache is not None:
        check_writable(stats_cache)
        if Path(stats_cache).resolve() == out.resolve():
            raise UsageError("--stats-cache and -o name the same file; give two different files")
    spare_inputs([out, stats_cache], [kw["corpus"]], model=kw["model"], data_dir=kw["data_dir"])
    anchor = normalize_lang(kw.pop("anchor"))
    targets = [lang for lang in parse_langs(kw.pop("langs")) if lang != anchor]
    if not targets:
        raise UsageError(f"no target languages: --langs must name at least one language other than the anchor {anchor}")
    spec = get_method(method)
    params = parse_params(method, kw.pop("params"))
    site = kw.pop("site")
    if site is not None:
        Site(0, site)  # validates the name
    corpus = load_corpus(kw.pop("corpus"), data_dir=kw.pop("data_dir"), langs=spec.corpus_langs(anchor, targets, params),
                         split=kw.pop("split"), limit=kw.pop("limit"))
    lm = load_model_from(kw)
    layers = parse_layers(kw.pop("layers"), lm.num_layers)
    if spec.check_inputs is not None:
        spec.check_inputs(lm, site or spec.site, len(corpus), params)
    iv = fit(method, lm, corpus, targets, anchor=anchor, layers=layers, site=site, stats_cache=stats_cache,
             pooling=kw.pop("pooling"), batch_size=kw.pop("batch_size"), max_length=kw.pop("max_length"), **params)
    iv.meta.setdefault("model", lm.name)
    iv.save(out)
    for line in spec.summary(iv.params) if spec.summary is not None else []:
        click.echo(line)
    sites = sorted({s.name for s in iv.sites})
    fit_s = iv.meta.get("fit_seconds", time.perf_counter() - t0)
    click.echo(f"fit {method}: layers {_fmt_layers(iv.layers)}, site {','.join(sites)}, "
               f"languages {','.join(iv.languages)} (anchor {iv.anchor}), {len(corpus)} texts from {corpus.name}, "
               f"{fit_s:.1f} s -> {out}")


# ---------------------------------------------------------------------------------------------
# generate


def _row_langs(spec: str, n: int) -> list[str]:
    """--lang: auto, one code for every prompt, or one per prompt (comma-separated)."""
    from ..data.langs import normalize_lang

    parts = [p.strip() for p in spec.split(",")]
    if any(not p for p in parts):
        raise UsageError(f"cannot parse --lang '{spec}'; give auto, a code (de) or one code per prompt (de,en)")
    codes = [p if p == "auto" else normalize_lang(p) for p in parts]
    if len(codes) == 1:
        return codes * n
    if len(codes) != n:
        raise UsageError(f"--lang gives {len(codes)} languages for {n} prompts; give one, or one per prompt")
    return codes


def _identify(prompts: list[str], candidates: list[str] | None) -> list[str]:
    from ..data.langs import identify_language, langid_languages

    if candidates is not None:
        known = set(langid_languages())
        candidates = [c for c in candidates if c in known] or None
    return identify_language(prompts, candidates)


def _anchor(given: str | None, ivs: list[Any]) -> str:
    """--anchor, else the interventions' (they must agree), else en."""
    from ..data.langs import normalize_lang

    anchors = sorted({iv.anchor for iv in ivs})
    if given is not None:
        anchor = normalize_lang(given)
        if anchors and anchors != [anchor]:
            raise UsageError(f"the intervention was fitted with anchor {', '.join(anchors)}, not {anchor}; "
                             "drop --anchor or fit it for that anchor")
        return anchor
    if len(anchors) > 1:
        raise UsageError(f"the interventions have different anchors ({', '.join(anchors)}); use one anchor")
    return anchors[0] if anchors else "en"


def _route(prompts: list[str], langs_spec: list[str], anchor: str, paths: list[str],
           ivs: list[Any]) -> tuple[list[str], list[str]]:
    """Each prompt's routing language (``auto`` ones identified) and how it was decided; every
    non-anchor language must be one the interventions have statistics for."""
    known = sorted({lang for iv in ivs for lang in iv.languages})
    auto_rows = [i for i, code in enumerate(langs_spec) if code == "auto"]
    routed = list(langs_spec)
    notes = [""] * len(prompts)
    if auto_rows:
        # routing can only use the languages the interventions know (plus the anchor): identify
        # among those, and show the open-set guess where it disagrees
        texts = [prompts[i] for i in auto_rows]
        candidates = [anchor, *known] if ivs else None
        ids = _identify(texts, candidates)
        open_ids = _identify(texts, None) if candidates is not None else ids
        for i, code, guess in zip(auto_rows, ids, open_ids):
            routed[i] = code
            notes[i] = (f"identified among {', '.join(candidates)}" if candidates else "identified") + (
                f"; open-set guess {guess}" if guess != code else "")
    for i, lang in enumerate(routed):
        if lang == anchor or not ivs:
            continue
        for path, iv in zip(paths, ivs):
            if lang not in iv.languages:
                how = "identified as" if i in auto_rows else "given as"
                raise LanguageError(
                    f"prompt {i + 1} is {how} '{lang}', but {path} has no statistics for it (it has "
                    f"{', '.join(iv.languages)}); pass --lang with one of them or the anchor, or fit it for {lang}"
                )
    return routed, notes


@click.command("generate")
@model_options
@click.argument("prompts", nargs=-1, required=True)
@click.option("--intervention", "-i", "interventions", multiple=True, type=Input(dir_okay=False),
              callback=intervention_plugins,
              help="Intervention file (.safetensors); repeatable (all are applied together).")
@click.option("--alpha", default=None, help="Strength of every intervention (default: as saved).")
@click.option("--lang", default="auto", show_default=True,
              help="Language of each prompt for routing: auto (identified among the anchor and the interventions' "
                   "languages), one code, or one code per prompt (de,en).")
@click.option("--anchor", default=None, help="Anchor language, never steered (default: the interventions', else en).")
@click.option("--max-new-tokens", type=count(1), default=32, show_default=True)
@click.option("--positions", type=click.Choice(_POSITIONS), default=None,
              help="Token positions steered (default: the policy the intervention recommends, e.g. all).")
@click.option("--batch-size", type=count(1), default=8, show_default=True)
@click.option("--max-length", type=count(8), default=2048, show_default=True)
@compile_option
def generate_cmd(**kw: Any) -> None:
    """Greedy continuations of PROMPTS, unsteered and steered, with the language each prompt is routed as."""
    from ..evaluation.engine import Engine
    from ..interventions import check_compatible
    from ..interventions.base import Intervention

    prompts = list(kw.pop("prompts"))
    if any(not p.strip() for p in prompts):
        raise UsageError("a prompt is empty; give non-empty prompts")
    raw_alpha = kw.pop("alpha")
    alpha = parse_float(raw_alpha, "--alpha") if raw_alpha is not None else None
    paths = list(kw.pop("interventions"))
    if alpha is not None and not paths:
        raise UsageError("--alpha needs --intervention FILE")
    langs_spec = _row_langs(kw.pop("lang"), len(prompts))
    ivs = [Intervention.load(p) for p in paths]  # validates (corruption, NaN/Inf) before the model loads
    anchor = _anchor(kw.pop("anchor"), ivs)
    from ..interventions.base import default_positions

    positions = default_positions(ivs, kw.pop("positions"))
    if alpha is not None:
        ivs = [iv.with_strength(alpha) for iv in ivs]

    lm = load_model_from(kw)
    for path, iv in zip(paths, ivs):
        try:
            check_compatible(iv, lm)
        except XlsteerError as e:  # name the file in the one-line message
            raise type(e)(f"{path}: {e}") from None
    routed, notes = _route(prompts, langs_spec, anchor, paths, ivs)

    engine = Engine(lm, batch_size=kw.pop("batch_size"), max_length=kw.pop("max_length"), progress_desc="generate",
                    compile=compile_setting(kw))
    max_new = kw.pop("max_new_tokens")
    base = engine.generate(prompts, routed, max_new, anchor=anchor)
    steered = engine.generate(prompts, routed, max_new, interventions=ivs, positions=positions,
                              anchor=anchor) if ivs else None
    if ivs:
        desc = " + ".join(f"{_fit_name(iv.method, iv.params)}@{_fmt_layers(iv.layers)} strength {iv.strength:g}"
                          for iv in ivs)
        click.echo(f"model {lm.name}; steering: {desc}; positions {positions}; anchor {anchor}; greedy, "
                   f"{max_new} new tokens")
    else:
        click.echo(f"model {lm.name}; no intervention (unsteered only); greedy, {max_new} new tokens")
    for i, prompt in enumerate(prompts):
        click.echo(f"[{i + 1}] language {routed[i]} ({notes[i] or 'given'})")
        click.echo(f"  prompt:    {prompt!r}")
        click.echo(f"  unsteered: {base[i]!r}")
        if steered is None:
            continue
        if routed[i] == anchor:
            click.echo(f"  steered:   (not steered: {routed[i]} is the anchor language)")
        else:
            same = " (identical)" if steered[i] == base[i] else ""
            click.echo(f"  steered:   {steered[i]!r}{same}")


# ---------------------------------------------------------------------------------------------
# inspect


def _tensor_line(name: str, t: Any, width: int) -> str:
    import torch

    shape = "x".join(str(s) for s in t.shape) or "scalar"
    if t.dtype == torch.bool:
        stat = f"{int(t.sum())} set"
    else:
        stat = f"norm {float(t.double().norm()):.6g}"
    return f"  {name:<{width}}  ({shape})  {str(t.dtype).removeprefix('torch.')}  {stat}"


def _scalar_params(params: dict[str, Any]) -> str:
    parts = []
    for k in sorted(params):
        v = params[k]
        if isinstance(v, (dict, list)):
            text = json.dumps(v, sort_keys=True, default=str)
            if len(text) > 60:
                text = f"<{type(v).__name__} of {len(v)}>"
            parts.append(f"{k}={text}")
        else:
            text = str(v)
            parts.append(f"{k}={text if len(text) <= 60 else text[:57] + '...'}")
    return ", ".join(parts)


def _fingerprint_line(fp: dict[str, Any] | None) -> str:
    if not fp:
        return "(none recorded)"
    return (f"{fp.get('architecture', '?')} ({fp.get('model_type', '?')}), {fp.get('num_layers', '?')} layers, "
            f"width {fp.get('hidden_size', '?')}, d_ff {fp.get('intermediate_size', '?')}, "
            f"config {str(fp.get('config_hash', ''))[:12]}, tokenizer {str(fp.get('tokenizer_hash', ''))[:12]}")


@click.command("inspect")
@click.argument("file", type=Input(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the file's metadata as JSON.")
@click.option("--max-tensors", type=count(0), default=60, show_default=True,
              help="List at most N tensors (0: all).")
def inspect_cmd(file: str, as_json: bool, max_tensors: int) -> None:
    """Print an intervention's (or a statistics file's) metadata and tensors."""
    from ..errors import ArtifactError
    from ..io import dumps_json, load_tensors

    tensors, meta = load_tensors(file, what="file")
    fmt = meta.get("format")
    if fmt == "xlsteer.intervention":
        from ..interventions.base import Intervention
        from ..interventions.registry import method_for

        fitted_by = method_for(Intervention.load(file))  # full validation: fields, method, tensor names and shapes
    elif fmt == "xlsteer.statistics":
        from ..stats import Statistics

        Statistics.load(file)
    else:
        raise ArtifactError(f"{file} is not an xlsteer intervention or statistics file (format {fmt!r})")
    if as_json:
        click.echo(dumps_json(meta), nl=False)
        return
    _describe(file, fmt, meta, fitted_by if fmt == "xlsteer.intervention" else None)
    names = sorted(tensors)
    shown = names if max_tensors == 0 else names[:max_tensors]
    click.echo(f"tensors ({len(names)}):")
    width = max((len(n) for n in shown), default=0)
    for name in shown:
        click.echo(_tensor_line(name, tensors[name], width))
    if len(shown) < len(names):
        click.echo(f"  ... and {len(names) - len(shown)} more (--max-tensors 0 lists all)")


def _obj(value: Any) -> dict[str, Any]:
    """A metadata field meant to be an object (another type is shown as absent, not a crash)."""
    return value if isinstance(value, dict) else {}


def _secs(value: Any) -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{value:.2f}" if ok else "?"


def _describe(file: str, fmt: str, meta: dict[str, Any], fitted_by: Any) -> None:
    """The human-readable lines of ``inspect`` (fields of unexpected types print as '?')."""
    from ..errors import ArtifactError

    prov = _obj(meta.get("provenance"))
    versions = _obj(prov.get("versions"))
    size = Path(file).stat().st_size
    click.echo(f"file: {file} ({size / 1024:.1f} KiB), {fmt} v{meta.get('format_version', 1)}")
    if fmt == "xlsteer.intervention":
        params = meta.get("params") or {}
        sites = list(meta.get("sites") or [])
        layers = sorted({int(s.split("@")[1]) for s in sites if "@" in s})
        fit_name = _fit_name(meta["method"], params)
        click.echo(f"method: {meta['method']}" + (f" (fit {fit_name})" if fit_name != meta["method"] else ""))
        click.echo(f"layers: {_fmt_layers(layers)}; site: {', '.join(sorted({s.split('@')[0] for s in sites}))}")
        click.echo(f"languages: {', '.join(meta.get('languages') or [])}; anchor: {meta.get('anchor')}; "
                   f"strength: {meta.get('strength')}; positions: {params.get('positions', 'all')}")
        click.echo(f"parameters: {_scalar_params(params)}")
    else:
        counts = _obj(meta.get("counts"))
        n_items = sorted({str(v[0]) for v in counts.values() if isinstance(v, list) and v})
        click.echo(f"statistics: {len(meta.get('langs', []))} languages ({', '.join(meta.get('langs', []))}), "
                   f"{len(meta.get('sites', []))} sites, pooling {meta.get('pooling')}, "
                   f"threshold {meta.get('threshold')}, keep_items {bool(meta.get('keep_items'))}, "
                   f"texts per language {', '.join(map(str, n_items)) or '?'}")
        click.echo(f"widths: {', '.join(f'{k}={v}' for k, v in sorted(_obj(meta.get('widths')).items()))}")
    name = f"{meta['model']}: " if meta.get("model") else ""
    click.echo(f"model: {name}{_fingerprint_line(_obj(meta.get('model_fingerprint')))}")
    data = _obj(meta.get("data"))
    data_desc = (f"{data.get('corpus')} rows {data.get('first_id')}..{data.get('last_id')} ({data.get('n_items')} items)"
                 if data else str(meta.get("corpus", "?")))
    click.echo(f"data: {data_desc}; hash {str(meta.get('data_hash') or '(none)')[:16]}")
    if "fit_seconds" in meta:
        click.echo(f"fit: {_secs(meta['fit_seconds'])} s (collection {_secs(meta.get('collect_seconds', 0.0))} s), "
                   f"statistics {meta.get('statistics_source', '-')}, fitted at {meta.get('fitted_at', '?')}")
    click.echo(f"created: {prov.get('created', '?')}; versions: "
               + (", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if k != "platform") or "?"))
    if fitted_by is not None and fitted_by.summary is not None:
        try:
            lines = fitted_by.summary(_obj(meta.get("params")))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise ArtifactError(f"{file}: the {meta['method']} parameters cannot be summarised ({type(e).__name__}); "
                                "re-create it with `xlsteer fit`") from None
        for line in lines:
            click.echo(line)


COMMANDS = [fit_cmd, generate_cmd, inspect_cmd]
