"""The ``xlsteer`` command line: thin wrappers over the API (parse, call, print).

Each area registers its commands from its own module; errors users can cause are printed as
one line (``error: ...``) with exit code 1 (runtime) or 2 (usage); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ..errors import UsageError, XlsteerError

_COMMAND_MODULES = ("core", "data", "methods", "evaluate", "analysis", "export", "baselines", "lmeval", "demo")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.version_option(package_name="xlsteer")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Steer multilingual language models toward an anchor language, and measure honestly whether it helps."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        os.environ["XLSTEER_DEBUG"] = "1"
    if quiet:
        os.environ["XLSTEER_QUIET"] = "1"


for _name in _COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _e:  # an area not built yet
        if _e.name != f"{__name__}.{_name}":
            raise
        continue
    for _cmd in getattr(_mod, "COMMANDS", []):
        cli.add_command(_cmd)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn user-caused errors into one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("XLSTEER_DEBUG") == "1"
    try:
        cli.main(args=argv, prog_name="xlsteer", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        return 2
    except XlsteerError as e:
        if debug:
            raise
        click.echo(f"error: {_one_line(e)}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except MemoryError:
        if debug:
            raise
        click.echo("error: out of memory; use a smaller --batch-size or --max-length", err=True)
        return 1
    except torch_oom_error() as e:  # type: ignore[misc]
        if debug:
            raise
        click.echo(f"error: out of memory on the device ({_one_line(e)[:120]}); use a smaller --batch-size", err=True)
        return 1
    return 0


def torch_oom_error() -> type[BaseException]:
    try:
        import torch

        return torch.OutOfMemoryError
    except (ImportError, AttributeError):  # pragma: no cover
        return MemoryError


def usage(message: str) -> UsageError:
    return UsageError(message)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
