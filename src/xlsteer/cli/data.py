"""``xlsteer data check|fetch``: verify the data in use, or download it from its upstream sources."""

from __future__ import annotations

import click

from .guard import Output
from .options import FiniteRange, data_dir_option

ONLY_HELP = ("Comma-separated datasets: mgsm, xcopa, xquad, ntrex128, xnli, lcb (default: all; xnli and lcb need "
             "--accept-nc).")


class _MirrorUrl(click.ParamType):
    """--mirror / XLSTEER_DATA_MIRROR: an http(s) URL, checked when the command line is parsed."""

    name = "url"

    def convert(self, value: object, param: object, ctx: object) -> str:
        from ..data.download import check_base_url
        from ..errors import UsageError

        try:
            return check_base_url(str(value))
        except UsageError as e:
            self.fail(str(e), param, ctx)  # type: ignore[arg-type]


@click.group("data")
def data_group() -> None:
    """Verify or download the evaluation and parallel data."""


def _only(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    from ..data.fetch import load_manifest, parse_only

    return parse_only(text, load_manifest())


@data_group.command("check")
@data_dir_option
@click.option("--only", default=None, help="Comma-separated datasets to check, e.g. mgsm,xcopa (default: all).")
def data_check_cmd(data_dir: str | None, only: str | None) -> None:
    """Verify every data file against SHA256SUMS and count items per language."""
    from ..data.check import check_data
    from ..data.paths import data_dir_origin
    from ..errors import DataError

    root, origin = data_dir_origin(data_dir)
    report = check_data(root, datasets=_only(only))
    click.echo(f"data dir: {root} ({origin})")
    click.echo(f"ok: {report['n_ok']} of {report['n_files']} files")
    for key in ("mismatch", "missing"):
        click.echo(f"{key}: {len(report[key])}")
    for dataset, counts in sorted(report["counts"].items()):
        click.echo(f"{dataset}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    bad = report["mismatch"] + report["missing"]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{len(bad)} data file(s) missing or failing the checksum ({', '.join(bad[:3])}{more}); "
                        f"run `xlsteer data fetch --dest {root}` to restore them")
    if report["problems"]:
        raise DataError(f"{len(report['problems'])} data problem(s): {report['problems'][0]}")


@data_group.command("fetch")
@click.option("--only", default=None, help=ONLY_HELP)
@click.option("--dest", default=None, type=Output(folder=True),
              help="Folder to fill (default: $XLSTEER_DATA_DIR, else the per-user data dir).")
@click.option("--accept-nc", is_flag=True,
              help="Accept the non-commercial terms of the XNLI copy (CC BY-NC 4.0) and of LCB's Okapi and ShareGPT "
                   "prompts (research use), and fetch them.")
@click.option("--mirror", default=None, envvar="XLSTEER_DATA_MIRROR", type=_MirrorUrl(),
              help="Base URL with the raw.githubusercontent.com layout <owner>/<repo>/<commit>/<path> "
                   "(default: $XLSTEER_DATA_MIRROR, else GitHub).")
@click.option("--timeout", type=FiniteRange(0, 86400), default=30.0, show_default=True,
              help="Seconds to wait for the server (a download slower than 1 KiB/s over a minute is stopped).")
def data_fetch_cmd(only: str | None, dest: str | None, accept_nc: bool, mirror: str | None, timeout: float) -> None:
    """Download the data from their upstream repositories at pinned commits, verified by SHA256.

    Resumable: a re-run fetches only what is missing or bad. States each dataset's license first.
    """
    from ..data.fetch import FetchOptions, license_lines, plan_fetch, run_fetch
    from ..errors import DataError

    plan = plan_fetch(FetchOptions(dest=dest, only=_only(only), accept_nc=accept_nc, mirror=mirror, timeout=timeout))
    click.echo(f"destination: {plan.dest}")
    click.echo(f"source: {plan.base_url}")
    click.echo("licenses (by fetching you accept them):")
    for line in license_lines(plan):
        click.echo(f"  {line}")
    report = run_fetch(plan, timeout=timeout)
    for path, why in sorted(report.refused.items()):
        click.echo(f"refused {path}: {why}; not kept", err=True)
    for path, why in sorted(report.failed.items()):
        click.echo(f"failed {path}: {why}", err=True)
    click.echo(f"fetched {len(report.fetched)}, already present {len(report.kept)}, refused {len(report.refused)}, "
               f"failed {len(report.failed)}: {report.bytes:,} bytes in {report.seconds:.1f} s -> {plan.dest}")
    if not report.ok:
        bad = sorted(report.refused) + sorted(report.failed)
        raise DataError(f"{len(bad)} file(s) not fetched ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
                        "run the command again, or check the mirror")


COMMANDS = [data_group]
