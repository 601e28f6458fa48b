"""``xlsteer data check``: every file against SHA256SUMS, and the items of every built-in task and
parallel corpus counted by their own loaders.

Why the loaders: a task's languages, splits and file sizes are declared once, in its TaskSpec and
its module (MGSM's 250 problems, XNLI's 2,490 lines, XQuAD's 48 articles, LCB's rows per source
and language); a second table of languages and counts here would drift from them. So the check
loads every split of every language through the task itself: its checks of the file are the
check, and the counts are reported as read. The task registry is imported when the check runs,
not when this module is, so the data layer does not load the evaluation package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import DataError, LanguageError
from .paths import data_dir as resolve_data_dir, file_status, hash_lines, read_sums

#: Folder of the parallel corpus in the data dir (checked besides the tasks).
NTREX_FOLDER = "ntrex128"


def _folders(paths: Iterable[str]) -> set[str]:
    return {str(p).replace("\\", "/").split("/", 1)[0] for p in paths}


def _counted(load: Callable[[], list[Any]], where: str, problems: list[str]) -> int | None:
    """How many items ``load`` gives; None (and the loader's own line among ``problems``) when it fails."""
    try:
        return len(load())
    except (DataError, LanguageError, OSError) as e:
        problems.append(f"{where}: {' '.join(str(e).split())}")
        return None


def _task_counts(root: Path, spec: Any, counts: dict[str, dict[str, int | None]], problems: list[str]) -> None:
    """Items per split and language of one task (and of its English reference, where it ships one)."""
    hints = spec.baselines
    for split in spec.splits:
        key = f"{spec.name}/{split}"
        counts[key] = {lang: _counted(lambda lang=lang: spec.load_items(root, lang, split), f"{key} {lang}", problems)
                       for lang in spec.langs}
        if hints.english_reference is not None:
            counts[f"{key} (English reference)"] = {
                lang: _counted(lambda lang=lang: hints.english_reference(root, lang, split),
                               f"{key} English reference of {lang}", problems)
                for lang in hints.english_reference_langs}


def _corpus_counts(root: Path, counts: dict[str, dict[str, int | None]], problems: list[str]) -> None:
    from .corpora import NTREX_CODES, load_ntrex

    counts["ntrex"] = {lang: _counted(lambda lang=lang: load_ntrex(root, [lang], split="all").texts[lang],
                                      f"ntrex {lang}", problems) for lang in NTREX_CODES}


def check_data(data_dir: str | os.PathLike | None = None, verify_hashes: bool = True,
               datasets: Iterable[str] | None = None) -> dict[str, Any]:
    """Verify every file against SHA256SUMS and count the items of every built-in task and corpus.

    Never raises for bad data (it reports it): ``ok`` is False when any file is missing or
    mismatched or a loader refuses its file. Raises
    DataError only when the data dir or SHA256SUMS cannot be found. ``datasets`` (top-level
    folders such as ``mgsm``, ``xnli``) limits the check to what a partial ``xlsteer data fetch
    --only`` brought; a task whose files are not listed in SHA256SUMS is not this data dir's.
    """
    from ..evaluation.tasks.spec import get_task, task_names

    root = resolve_data_dir(data_dir)
    wanted = None if datasets is None else set(datasets)
    all_sums = read_sums(root)
    sums = {rel: sha for rel, sha in all_sums.items() if wanted is None or _folders([rel]) <= wanted}
    present = _folders(sums)
    files = file_status(root, sums, verify_hashes)
    counts: dict[str, dict[str, int | None]] = {}
    problems: list[str] = []
    for name in task_names():
        spec = get_task(name)
        if spec.source.get("kind") != "builtin":
            continue
        used = _folders(f for lang in spec.langs for split in spec.splits for f in spec.data_files(lang, split))
        if used and used <= present:
            _task_counts(root, spec, counts, problems)
    if NTREX_FOLDER in present:
        _corpus_counts(root, counts, problems)
    missing = sorted(k for k, v in files.items() if v == "missing")
    mismatch = sorted(k for k, v in files.items() if v == "mismatch")
    return {
        "data_dir": str(root),
        "data_hash": hash_lines(all_sums.items()),
        "files": files,
        "n_files": len(files),
        "n_ok": sum(v == "ok" for v in files.values()),
        "missing": missing,
        "mismatch": mismatch,
        "counts": counts,
        "problems": problems,
        "ok": not missing and not mismatch and not problems,
    }
