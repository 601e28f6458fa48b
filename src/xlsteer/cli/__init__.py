"""The ``xlsteer`` command line: thin wrappers over the API (parse, call, print).

Each area registers its commands from its own module; errors users can cause are printed as
one line (``error: ...``) with exit code 1 (runtime) or 2 (usage); ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings

import click

from .. import signals
from ..errors import Terminated, XlsteerError, XlsteerWarning

_COMMAND_MODULES = ("core", "data", "methods", "evaluate", "tasks", "analysis", "export", "baselines", "lmeval", "demo",
                    "results")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--plugin", "plugins", multiple=True, metavar="FILE_OR_MODULE",
              help="Load a plugin (a .py file or a module) that registers methods, tasks, architectures or sites "
                   "(repeatable; also XLSTEER_PLUGINS and installed 'xlsteer.plugins' entry points; docs/plugins.md).")
@click.version_option(package_name="xlsteer")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, plugins: tuple[str, ...]) -> None:
    """Steer multilingual language models toward an anchor language, and measure honestly whether it helps."""
    from ..plugins import load_plugins

    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    if debug:
        os.environ["XLSTEER_DEBUG"] = "1"
    if quiet:
        os.environ["XLSTEER_QUIET"] = "1"
    load_plugins(plugins)  # before the subcommand parses its options (method and task names, help)


for _name in _COMMAND_MODULES:
    for _cmd in importlib.import_module(f"{__name__}.{_name}").COMMANDS:
        cli.add_command(_cmd)

from . import guard as _guard  # noqa: E402

_guard.install(cli)  # every command checks its outputs against its inputs before it runs


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space or write elsewhere",
    errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
    errno.EACCES: "permission denied; check the permissions or choose another path",
    errno.EPERM: "operation not permitted; check the permissions or choose another path",
    errno.EROFS: "read-only file system; write elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EISDIR: "is a directory; give a file",
    errno.ENOENT: "no such file or directory; check the path",
    errno.EIO: "input/output error; check the disk",
}


def os_error_line(e: OSError) -> str:
    """One line for a file-system fault that reached the CLI (full disk, permissions, ...)."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    hint = _OS_HINTS.get(e.errno or -1, f"{e.strerror or _one_line(e)}; check the path and the disk")
    if where:
        return f"{where}: {hint}"
    return f"{_one_line(e)[:200]}; {hint.split('; ', 1)[-1]}"


def _library_io_error(e: BaseException) -> str | None:
    """One line for the I/O errors of libraries that do not subclass OSError (safetensors, datasets)."""
    name = type(e).__name__
    module = type(e).__module__ or ""
    if name == "SafetensorError" or module.split(".")[0] in ("safetensors", "datasets", "fsspec", "huggingface_hub"):
        return f"{name}: {_one_line(e)[:300]}; check the file (it may be truncated or the disk full)"
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if issubclass(category, XlsteerWarning):
        click.echo(f"warning: {_one_line(message)}", err=True)
    else:
        _DEFAULT_SHOWWARNING(message, category, filename, lineno, file, line)


_DEFAULT_SHOWWARNING = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn user-caused errors into one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("XLSTEER_DEBUG") == "1"
    previous = signals.install()  # SIGINT -> 130, SIGTERM -> 143, one line, temp files removed
    warnings.showwarning = _show_warning
    try:
        return _run(argv, debug)
    finally:
        warnings.showwarning = _DEFAULT_SHOWWARNING
        signals.restore(previous)


def _run(argv: list[str] | None, debug: bool) -> int:
    try:
        cli.main(args=argv, prog_name="xlsteer", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        return 130
    except Terminated:
        click.echo("error: terminated", err=True)
        return 143
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
    except OSError as e:
        if debug:
            raise
        click.echo(f"error: {os_error_line(e)}", err=True)
        return 1
    except Exception as e:
        line = _library_io_error(e)
        if debug or line is None:
            raise
        click.echo(f"error: {line}", err=True)
        return 1
    return 0


def torch_oom_error() -> type[BaseException]:
    try:
        import torch

        return torch.OutOfMemoryError
    except (ImportError, AttributeError):  # pragma: no cover
        return MemoryError
