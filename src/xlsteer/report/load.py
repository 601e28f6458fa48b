"""What a report shows: the result files of a run directory (or one result file) and its figures.

Run directory layout::

    RUN_DIR/
      *.json          result files (xlsteer.results schema: eval, paired, methods, sweep, analysis,
                      setup, lm-eval, control); files of older formats are converted by name
      figures/*.png   figures (analyze writes them; any other PNG placed here is shown too)

Files that cannot be read are listed with the reason; nothing in the directory makes the report
fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError, XlsteerError
from ..results.read import Loaded, typed

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Run:
    root: Path
    files: list[Loaded] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file name, why it was skipped)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, PNG bytes)

    def of(self, fmt: str) -> list[Loaded]:
        return [f for f in self.files if f.format == fmt]


def _read(path: Path, run: Run) -> None:
    """One result file (bounded, depth-checked, finite: :func:`xlsteer.io.read_json`), typed; a
    file that cannot be read is listed with the reason instead."""
    from ..io import read_json

    try:
        raw = read_json(path, "result file")
        doc, old, notes = typed(raw, path.name)
    except XlsteerError as e:
        run.problems.append((path.name, str(e)))
        return
    run.files.append(Loaded(path, doc, old, notes))


def load_run(source: str | Path) -> Run:
    """A run directory's result files and figures, or a single result file."""
    root = Path(source)
    if root.is_file():
        run = Run(root.parent)
        _read(root, run)
        if run.problems:
            raise UsageError(f"cannot report {root.name}: {run.problems[0][1]}")
        return run
    if not root.is_dir():
        raise UsageError(f"{root} does not exist; give a run directory or a result file written by xlsteer")
    run = Run(root)
    for path in sorted(root.glob("*.json")):
        _read(path, run)
    from ..bounded import read_bytes

    fig_dir = root / "figures"
    for path in sorted(fig_dir.glob("*.png")) if fig_dir.is_dir() else []:
        try:
            data = read_bytes(path, "json", "figure")
        except XlsteerError as e:
            run.problems.append((f"figures/{path.name}", f"unreadable figure ({e})"))
            continue
        if not data.startswith(PNG_MAGIC):
            run.problems.append((f"figures/{path.name}", "not a PNG file"))
            continue
        run.figures.append((path.name, data))
    return run
