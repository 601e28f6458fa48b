"""``xlsteer demo``: the whole pipeline on the shipped model (the README's main command)."""

from __future__ import annotations

import click

from .guard import Output
from .options import count, data_dir_option


@click.command("demo")
@click.option("--output", "-o", default="runs/demo", show_default=True, type=Output(folder=True, writes=("**/*",)),
              help="Run directory (stages already there are reused).")
@click.option("--quick", is_flag=True, help="Reduced sizes (what CI runs): a smoke test of every stage.")
@click.option("--langs", default="zh,vi,sw", show_default=True, help="Three (or more) XCOPA languages besides en.")
@click.option("--test-limit", type=count(1), default=None, help="Test items per language.")
@data_dir_option
def demo_cmd(output: str, quick: bool, langs: str, test_limit: int | None, data_dir: str | None) -> None:
    """Collect, fit DiffMean + CLAS, sweep on dev, evaluate on test, analyse, write the report."""
    from ..demo import DemoConfig, format_summary, run_demo
    from .options import parse_langs

    from ..io import files_written_into
    from .options import spare_inputs

    spare_inputs(files_written_into(output, ["**/*"]), [], data_dir=data_dir)  # stages there are reused or replaced
    codes = tuple(c for c in parse_langs(langs) if c != "en")
    kw = {"langs": codes}
    if test_limit is not None:
        kw["test_limit"] = test_limit
    cfg = DemoConfig.quick(**kw) if quick else DemoConfig(**kw)
    summary = run_demo(output, cfg, log=lambda s: click.echo(s, err=True), data_dir=data_dir)
    click.echo(format_summary(summary))


COMMANDS = [demo_cmd]
