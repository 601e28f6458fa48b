"""One way to show a p-value, a missing value and a table, in the terminal, in Markdown and in the report."""

from __future__ import annotations

from xlsteer import formats
from xlsteer.formats import MISSING, p_inline, p_value


def test_p_values_have_three_decimals_and_a_floor():
    assert [p_value(p) for p in (0.0123, 0.05, 1.0, 0.001, 0.00049, 0.0)] == \
        ["0.012", "0.050", "1.000", "0.001", "< 0.001", "< 0.001"]
    assert p_value(None) == MISSING == "–"
    assert p_inline(0.0123) == "p = 0.012" and p_inline(1e-9) == "p < 0.001"


def test_the_report_and_the_tables_use_the_same_formats():
    from xlsteer.report.filters import FILTERS

    assert FILTERS["pval"] is p_value and FILTERS["num"] is formats.number and FILTERS["pct"] is formats.percent
    assert formats.number(None) == formats.signed(None) == formats.percent(None) == MISSING


def test_one_table_formatter_in_two_styles():
    md = formats.table(["a", "b"], [[1, "x"], [22, None]])
    assert md.splitlines()[0].startswith("| a ") and "| 22 " in md and "None" in md
    text = formats.table(["a", "b"], [[1, "x"]], style="text")
    assert "|" not in text and text.splitlines()[1].startswith("---")
