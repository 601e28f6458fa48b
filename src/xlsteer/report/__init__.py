"""One self-contained HTML page that leads with the answer, from a run directory or a result file.

The page (Jinja2 templates with autoescaping in ``templates/``, CSS inline from
``templates/style.css``): a summary first (task, model, items; the methods x languages table with
▲/▼ for changes significant after Holm; the MDE; the positive control where the run has one; one
plain sentence), then scores with their figures, the full table of an ``xlsteer compare``
directory, sweeps, analysis, other figures, and provenance last inside ``<details>``. Every PNG is
embedded as a data URI with alt text and a caption, and also written beside the page in
``<stem>_figures/``; the page loads nothing from anywhere.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError


#: What marks a page this command wrote (so a re-run may replace it inside the run directory).
GENERATOR = '<meta name="generator" content="xlsteer report">'


def figure_dir(page: str | Path) -> Path:
    """The folder the page's figures are also written to: ``<stem>_figures`` beside it."""
    p = Path(page)
    return p.parent / f"{p.stem}_figures"


def is_report_page(path: str | Path) -> bool:
    """Whether ``path`` is a page written by ``xlsteer report`` (its head carries :data:`GENERATOR`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2048)
    except OSError:
        return False
    return GENERATOR.encode() in head


def own_output(path: str | Path) -> bool:
    """A file an earlier ``xlsteer report`` wrote: its page, or a PNG in that page's figure folder
    (what a re-run into the run directory may replace; any other file there is an input)."""
    p = Path(path)
    if p.suffix == ".html":
        return is_report_page(p)
    folder = p.parent.name
    return p.suffix == ".png" and folder.endswith("_figures") and \
        is_report_page(p.parent.parent / (folder[: -len("_figures")] + ".html"))


def page_companions(page: str | Path) -> list[Path]:
    """The figure files a report written to ``page`` would replace."""
    folder = figure_dir(page)
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def _environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    from ..formats import MISSING
    from . import filters

    env = Environment(loader=PackageLoader("xlsteer.report", "templates"), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(filters.FILTERS, id=id)
    env.globals["MISSING"] = MISSING  # the mark of a value that does not exist
    return env


def build_report(source: str | Path, output_html: str | Path | None = None, *, alpha: float = 0.05,
                 title: str | None = None) -> Path:
    """Write the page for a run directory or one result file (default: ``DIR/report.html`` or
    ``FILE.html`` beside the file). Returns the page's path."""
    from .. import __version__
    from ..filenames import confined
    from ..io import atomic_write_bytes, atomic_write_text, check_writable
    from ..provenance import now_utc
    from ..results import ANALYSIS, CONTROL, SWEEP
    from ..results.rows import score_tables
    from . import page as P
    from .load import load_run
    from .summary import mde_text, summarize

    if not 0.0 < alpha < 1.0:
        raise UsageError(f"alpha={alpha} must lie in (0, 1); e.g. 0.05")
    src = Path(source)
    run = load_run(src)
    default = src.with_suffix(".html") if src.is_file() else src / "report.html"
    out = check_writable(Path(output_html) if output_html is not None else default)

    figures = [P.Figure(name, data, P.caption_of(name), P.section_of(name)) for name, data in run.figures]
    by_section: dict[str, list[P.Figure]] = {}
    for fig in figures:
        by_section.setdefault(fig.section, []).append(fig)
    tables = score_tables(run.files, alpha=alpha)
    controls = run.of(CONTROL)
    summary = summarize(tables, controls[0].doc if controls else None, len(run.problems))
    score_figs = {id(t): fig for t in tables if t.main and (fig := P.drawn(P.score_figure, t)) is not None}
    sweeps = [P.sweep_view(f) for f in run.of(SWEEP)]
    analysis = P.analysis_sections(run, by_section)
    drawn = list(score_figs.values()) + [s.figure for s in sweeps if s.figure] + [
        fig for sec in analysis for part in sec.parts for fig in part.figures] + [
        fig for sec in analysis for fig in sec.loose]
    all_figures = list({fig.name: fig for fig in figures + drawn}.values())

    heading = title or f"xlsteer report — {src.resolve().name}"
    html = _environment().get_template("page.html").render(
        heading=heading, source=str(src), alpha=alpha, summary=summary, tables=tables, score_figs=score_figs,
        score_extra=by_section.get("scores", []), sweeps=sweeps, sweep_extra=by_section.get("sweeps", []),
        analysis=analysis, has_analysis=bool(run.of(ANALYSIS)) or any(s.loose for s in analysis),
        other_figures=by_section.get("other", []), provenance=P.provenance(run), n_files=len(run.files),
        n_figures=len(all_figures), version=__version__, created=now_utc(), summary_mde=mde_text)
    fig_dir = figure_dir(out)
    for fig in all_figures:  # names from records are slugs; confined() is the last defence
        atomic_write_bytes(confined(fig_dir, fig.name), fig.png)
    atomic_write_text(out, html, validate=_page_ok)
    return out


def _page_ok(path: Path) -> None:
    """The page just written is whole: UTF-8, marked as ours, and closed."""
    from ..errors import ArtifactError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"the report page cannot be read back ({type(e).__name__})") from None
    if GENERATOR not in text[:2048] or not text.rstrip().endswith("</html>"):
        raise ArtifactError("the report page is incomplete")
