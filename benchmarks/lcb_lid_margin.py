"""How close are the language-ID decisions behind LCB's figures? (the .ftz / .bin question)

The paper scored with fastText's full lid.176.bin; xlsteer scores with the quantised lid.176.ftz
by default. Without the .bin the two cannot be compared directly, so this prints, on the published
Command R completions, how many kept lines are decided by a narrow margin: a top probability
within 0.1 of the 0.3 threshold, or a runner-up within 0.2 of the top label that would give the
other verdict. Only those verdicts could plausibly flip with a slightly different model.

    python benchmarks/lcb_lid_margin.py [--data-dir DIR] [--lid-model PATH]
"""

from __future__ import annotations

import argparse
import collections
import csv

from xlsteer.data.paths import data_dir
from xlsteer.evaluation import language_fidelity as LF


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--lid-model", default=None)
    args = ap.parse_args()
    lid = LF.load_lid_model(args.lid_model)
    with open(data_dir(args.data_dir) / "lcb/outputs/command-r.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    lines = near_threshold = close_runner_up = 0
    answered: collections.Counter[str] = collections.Counter()
    at_risk: collections.Counter[str] = collections.Counter()
    for r in rows:
        lang = r["language"]
        kept = [x for x in LF.normalize(r["completion"]).split("\n") if len(LF.tokenize(x, lang)) >= LF.MIN_TOKENS]
        if not kept:
            continue
        answered[r["task"]] += 1
        risky = False
        for line in kept:
            lines += 1
            (top, p_top), (second, p_second) = lid.top(line, 2)
            if abs(p_top - LF.LID_THRESHOLD) < 0.1:
                near_threshold += 1
                risky |= top == lang
            if p_top - p_second < 0.2 and (top == lang) != (second == lang):
                close_runner_up += 1
                risky = True
        at_risk[r["task"]] += risky
    print(f"language-ID model: {lid.origin} ({lid.sha256[:12]})")
    print(f"kept lines: {lines}; top probability within 0.1 of {LF.LID_THRESHOLD}: {near_threshold}; "
          f"runner-up within 0.2 with the other verdict: {close_runner_up}")
    for task in sorted(answered):
        print(f"{task}: {at_risk[task]} of {answered[task]} answered responses hold such a line "
              f"({at_risk[task] / answered[task]:.1%})")


if __name__ == "__main__":
    main()
