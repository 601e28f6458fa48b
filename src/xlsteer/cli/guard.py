"""The one output guard of the command line, declared on the options themselves.

Why: each command used to list its inputs and outputs by hand before calling the overwrite
check, and a command that forgot one (``report FILE -o FILE``) destroyed its input. Now every
option or argument that names something a command writes has the type :class:`Output`, every
one that names something it reads has the type :class:`Input`, and :func:`install` wraps every
command so that, before its body runs, :func:`xlsteer.io.check_outputs_spare_inputs` compares
all of them: an output may not be an input file (through a symlink, ``..`` or a hard link),
nor replace an existing file inside an input folder (unless the output declares that file
``replaceable``, e.g. ``report``'s own earlier page), and an output folder may not be or lie
inside an input folder. A refusal is one line, exit 2, before any work. Commands still pass
inputs known only after parsing (a task's data files) to ``spare_inputs`` themselves.

The same declarations tell the tests which commands write (:func:`writing_commands`), so the
list of writers is derived from the CLI, not kept by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click


class Output(click.Path):
    """A path the command writes: a file, or (``folder=True``) a folder it writes ``writes`` into.

    ``replaceable(path)``: whether an existing file inside an input folder may be replaced anyway
    (the command's own earlier output there). ``companions(path)``: the other files the command
    writes beside this one (report: its figure folder), checked like the output itself.
    """

    def __init__(self, *, folder: bool = False, writes: Sequence[str] = (),
                 replaceable: Callable[[Path], bool] | None = None,
                 companions: Callable[[Path], list[Path]] | None = None) -> None:
        super().__init__(file_okay=not folder, dir_okay=folder)
        self.folder = folder
        self.writes = tuple(writes)
        self.replaceable = replaceable
        self.companions = companions


class Input(click.Path):
    """A file or folder the command reads (or a name that may also be a local path: ``--model``,
    ``--data``, ``--task``); ``data_dir=True``: the data directory, found by the lookup order
    when the option is not given; ``reads``: for a folder, the files in it the command reads
    (named in a refusal as the input files they are)."""

    def __init__(self, *, file_okay: bool = True, dir_okay: bool = True, data_dir: bool = False,
                 reads: Sequence[str] = ()) -> None:
        super().__init__(file_okay=file_okay, dir_okay=dir_okay)
        self.data_dir = data_dir
        self.reads = tuple(reads)


def model_input(name: str | None) -> str | None:
    """The local folder or .gguf file a --model names (shipped names and hub ids read no user file)."""
    if name and Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    return None


def data_input(explicit: str | None) -> str | None:
    """The data dir a command reads (None when none is found: the command says so itself later)."""
    from ..data.paths import data_dir
    from ..errors import XlsteerError

    try:
        return str(data_dir(explicit))
    except XlsteerError:
        return None


@dataclass
class _Declared:
    outputs: list[Path]
    folders: list[Path]
    inputs: list[str]
    replaceable: list[Callable[[Path], bool]]


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v) != ""]
    return [str(value)] if str(value) != "" else []


def declared(ctx: click.Context) -> _Declared:
    """The outputs, output folders and inputs ``ctx``'s command was given, by their types."""
    from ..io import files_written_into
    out = _Declared([], [], [], [])
    for param in ctx.command.params:
        kind, values = param.type, _values(ctx.params.get(param.name))
        if isinstance(kind, Output):
            for v in values:
                path = Path(v)
                if kind.folder:
                    out.folders.append(path)
                    out.outputs.extend(files_written_into(path, kind.writes))
                else:
                    out.outputs.append(path)
                if kind.companions is not None:
                    out.outputs.extend(kind.companions(path))
            if kind.replaceable is not None:
                out.replaceable.append(kind.replaceable)
        elif isinstance(kind, Input):
            if kind.data_dir and not values:
                out.inputs.extend(_values(data_input(None)))
            found = [p for p in (model_input(v) for v in values) if p is not None]
            out.inputs.extend(str(f) for p in found for f in files_written_into(p, kind.reads))
            out.inputs.extend(found)
    return out


def check(ctx: click.Context) -> None:
    """Refuse, before the command runs, an output that would overwrite or write into an input."""
    from ..io import check_outputs_spare_inputs

    d = declared(ctx)
    if not d.outputs and not d.folders:
        return
    rules = d.replaceable

    def replaceable(path: Path) -> bool:
        return any(rule(path) for rule in rules)

    check_outputs_spare_inputs(d.outputs, d.inputs, replaceable=replaceable if rules else None, folders=d.folders)


def _guarded(callback: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        check(click.get_current_context())
        return callback(*args, **kwargs)

    run.__xlsteer_guarded__ = True  # type: ignore[attr-defined]
    return run


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command under ``group`` with its words (``("export", "gguf")``)."""
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def install(group: click.Group) -> None:
    """Wrap every command under ``group`` so the guard runs before its body."""
    for _, cmd in commands(group):
        if cmd.callback is not None and not getattr(cmd.callback, "__xlsteer_guarded__", False):
            cmd.callback = _guarded(cmd.callback)


def writing_commands(group: click.Group) -> list[tuple[tuple[str, ...], click.Command, list[click.Parameter],
                                                        list[click.Parameter]]]:
    """``(words, command, output parameters, input parameters)`` of every command that writes."""
    rows = []
    for words, cmd in commands(group):
        outs = [p for p in cmd.params if isinstance(p.type, Output)]
        if outs:
            rows.append((words, cmd, outs, [p for p in cmd.params if isinstance(p.type, Input)]))
    return rows
