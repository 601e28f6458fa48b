"""How numbers and tables are shown: one place for the command line's tables, the report and the
printed summaries.

Why one place: the same p-value read in the terminal, in a Markdown file and in the HTML report
must look the same, and a missing value must be the same mark everywhere. Before, p-values were
written three ways (three significant digits in the tables, three decimals in the report, two
significant digits in the positive control) with two different dashes for "none".
"""

from __future__ import annotations

from typing import Any, Sequence

#: The mark of a value that does not exist (the anchor's agreement with itself, a test not run).
MISSING = "–"
#: p-values below this are written as "< 0.001": more digits would claim a resolution the tests
#: do not have (the paired bootstrap resolves 1 / n_boot).
P_FLOOR = 0.001
#: Table styles: GitHub Markdown (files, ``xlsteer table``) or plain columns (the terminal).
STYLES = {"markdown": "github", "text": "simple"}


def p_value(p: float | None) -> str:
    """``< 0.001`` or three decimals (``0.012``, ``1.000``); :data:`MISSING` when there is none."""
    if p is None:
        return MISSING
    return f"< {P_FLOOR:g}" if p < P_FLOOR else f"{p:.3f}"


def p_inline(p: float | None) -> str:
    """A p-value in running text: ``p = 0.012``, ``p < 0.001``."""
    text = p_value(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def number(x: Any, digits: int = 3) -> str:
    """A score with ``digits`` decimals (scientific notation for very small or large values)."""
    if x is None:
        return MISSING
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 3) -> str:
    """A difference with its sign (``+0.012``)."""
    return MISSING if x is None else f"{x:+.{digits}f}"


def percent(x: float | None, digits: int = 0) -> str:
    """A share as a percentage (``42%``)."""
    return MISSING if x is None else f"{100 * x:.{digits}f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], style: str = "markdown") -> str:
    """The one table formatter of the command line (tabulate; cells are shown as given)."""
    from tabulate import tabulate

    return tabulate([list(map(str, r)) for r in rows], headers=list(headers), tablefmt=STYLES[style],
                    disable_numparse=True)
