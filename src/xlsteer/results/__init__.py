"""One results schema for every file xlsteer writes (eval, paired comparison, methods comparison,
sweep, analysis, setup, lm-eval, positive control).

Why: the report and ``xlsteer table`` read what the commands write; with one typed schema they
read one shape per file format, named by the file's ``format`` and ``version``, instead of
guessing. This module holds only the names (standard library only, so writers on the GPU path
can stamp them); :mod:`xlsteer.results.schema` has the types, :mod:`xlsteer.results.read` the
reader (older formats are converted by name, see :mod:`xlsteer.results.legacy`), and
``schema.json`` beside this file is the JSON Schema generated from the types.
"""

from __future__ import annotations

from typing import Any

#: Version of the results schema every writer stamps (version 1: the untyped formats before it).
VERSION = 2
#: The positive control's file keeps its own version (written as specified by the demo).
CONTROL_VERSION = 1

EVAL = "xlsteer.eval"  # one evaluation (steered or not); a steered one embeds its baseline and paired test
PAIRED = "xlsteer.paired"  # two evaluations paired item by item (compare_runs)
COMPARE = "xlsteer.methods"  # xlsteer compare: every method paired with zero-shot
SWEEP = "xlsteer.sweep"  # layer x alpha grid on dev and the selection
ANALYSIS = "xlsteer.analysis"  # one analysis of xlsteer analyze
SETUP = "xlsteer.setup"  # what a run was set up with
LM_EVAL = "xlsteer.lm-eval"  # lm-evaluation-harness results of xlsteer lm-eval
CONTROL = "xlsteer.control"  # the positive control: does steering change the output language?

FORMATS = (EVAL, PAIRED, COMPARE, SWEEP, ANALYSIS, SETUP, LM_EVAL, CONTROL)
#: The command that converts files of the formats before version 2.
CONVERTER = "xlsteer results upgrade FILE"


def stamp(fmt: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with its format and version first (writers call this at their serialisation point)."""
    version = CONTROL_VERSION if fmt == CONTROL else VERSION
    return {"format": fmt, "version": version, **{k: v for k, v in doc.items() if k not in ("format", "version")}}
