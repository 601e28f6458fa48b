"""Local lm-evaluation-harness task configs for XCOPA, read offline from xlsteer's data dir.

Why: lm-eval's own ``xcopa_<lang>`` tasks load ``cambridgeltl/xcopa`` from the hub, which is
unavailable offline, and they take the cause/effect ``question`` from each language's file,
which is wrong for many th/tr/sw/id/it items (shared/data/README.md). The configs written
here keep lm-eval's prompt *exactly* (its own ``doc_to_text_<lang>`` / ``doc_to_choice``
functions from ``lm_eval/tasks/xcopa/utils.py``; English uses its COPA connectors
"because"/"therefore") and differ only in where the documents come from:

* ``dataset_path: json`` with ``data_files`` pointing at the files in the data dir, in place
  (``xcopa/data/<lang>/{test,val}.<lang>.jsonl``; ``xcopa_en`` reads the Google-MT English of
  the Estonian items, ``xcopa/data-gmt/et/...``, as xlsteer's ``lang="en"`` does). Nothing is
  copied into the project; the ``datasets`` arrow cache goes into the task dir (a temp dir).
* ``process_docs`` replaces ``question`` by the value xlsteer's own XCOPA loader gives the same
  ``idx`` (taken from the zh file; the file's own value is kept as ``question_file``), so lm-eval
  through these configs and ``xlsteer eval --task xcopa`` score the very same prompts.

The task names are lm-eval's (``xcopa_et`` ... ``xcopa_zh``, plus ``xcopa_en``): passed as
``include_path`` they override the hub-backed built-ins, so lm-eval's ``xcopa`` group runs
offline as well. The YAML files are generated at run time (:func:`write_xcopa_tasks`, or the
:func:`local_task_dir` context manager) because they hold the absolute data paths; a small
generated ``utils.py`` beside them binds the data dir into ``process_docs``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..data.langs import normalize_lang
from ..errors import DataError, LanguageError, UsageError
from ..io import atomic_write_text
from . import harness

#: Languages of the local XCOPA tasks (lm-eval's 11, plus English from data-gmt).
XCOPA_TASK_LANGS: tuple[str, ...] = ("et", "ht", "id", "it", "qu", "sw", "ta", "th", "tr", "vi", "zh", "en")
#: lm-eval's ``xcopa`` group: its 11 languages (not the English added here).
GROUP = "xcopa"
GROUP_LANGS: tuple[str, ...] = XCOPA_TASK_LANGS[:-1]
#: Bumped whenever the generated configs would give other prompts or documents.
TASK_VERSION = 1.0
_UTILS = "utils.py"


def task_name(lang: str) -> str:
    return f"xcopa_{lang}"


# ---------------------------------------------------------------------------------------------
# the functions the generated configs call


def doc_to_text_for(lang: str) -> Callable[[dict], str]:
    """lm-eval's own XCOPA ``doc_to_text`` for ``lang`` (COPA's English connectors for "en")."""
    xu = harness.xcopa_functions()
    if lang == "en":
        from ..evaluation.templates import XCOPA_CONNECTORS

        return partial(xu.doc_to_text, connector=dict(XCOPA_CONNECTORS["en"]))
    fn = getattr(xu, f"doc_to_text_{lang}", None)
    if fn is None:
        raise LanguageError(f"lm-eval's xcopa has no language {lang!r}; available: {' '.join(XCOPA_TASK_LANGS)}")
    return fn


def doc_to_choice(doc: dict) -> list[str]:
    """lm-eval's own XCOPA ``doc_to_choice`` (first character lower-cased)."""
    return harness.xcopa_functions().doc_to_choice(doc)


def process_docs(dataset: Any, *, lang: str, data_dir: str) -> Any:
    """The split's documents with ``question`` from xlsteer's XCOPA loader (same ``idx``).

    The split is recognised by content (idx set and premises equal to xlsteer's items of that
    split), so one function serves ``test`` and ``validation``. Raises DataError when the
    documents match neither split (a config generated for another data dir, or edited files).
    The documents come out in xlsteer's item order (ascending ``idx``), so lm-eval's ``--limit N``
    takes the same first N items as xlsteer's ``limit=N``.
    """
    import datasets

    from ..evaluation.tasks import xcopa

    recs = [dict(r) for r in dataset]
    if all(isinstance(r.get("idx"), int) for r in recs):  # else the match below fails with a DataError
        recs.sort(key=lambda r: r["idx"])
    for split in ("test", "dev"):
        if len(recs) != xcopa.COUNTS[xcopa.UPSTREAM[split]]:
            continue
        items = {it.fields["idx"]: it for it in xcopa.load_items(data_dir, lang, split)}
        if len(items) == len(recs) and all(
            r.get("idx") in items and items[r["idx"]].fields["premise"] == r.get("premise") for r in recs
        ):
            break
    else:
        raise DataError(
            f"the xcopa_{lang} documents match neither xlsteer's test nor val items in {data_dir}; "
            "regenerate the task configs (xlsteer lm-eval --write-tasks DIR) for this data dir"
        )
    out = []
    for r in recs:
        it = items[r["idx"]]
        if int(r["label"]) != int(it.answer):
            raise DataError(f"xcopa_{lang} idx {r['idx']}: label {r['label']} differs from xlsteer's {it.answer}; "
                            "restore the data from the shared data")
        out.append({**r, "question_file": r["question"], "question": it.fields["question"]})
    return datasets.Dataset.from_list(out)


# ---------------------------------------------------------------------------------------------
# writing the configs


def _langs(langs: Sequence[str] | None) -> list[str]:
    if langs is None:
        return list(XCOPA_TASK_LANGS)
    out: list[str] = []
    for code in langs:
        c = normalize_lang(code)
        if c not in XCOPA_TASK_LANGS:
            raise LanguageError(f"xcopa has no language {c!r}; available: {' '.join(XCOPA_TASK_LANGS)}")
        if c not in out:
            out.append(c)
    return out


def data_files(lang: str, data_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """lm-eval split name -> absolute path of the file in the data dir (checked to exist)."""
    from ..data.paths import data_dir as resolve
    from ..evaluation.tasks import xcopa

    root = resolve(data_dir)
    out = {}
    for lm_split, split in (("test", "test"), ("validation", "dev")):
        rel = xcopa.data_files(lang, split)[0]  # the language's own file (en: data-gmt of et)
        path = root / rel
        if not path.is_file():
            raise DataError(f"file {path} does not exist; check the data dir (--data-dir / XLSTEER_DATA_DIR)")
        out[lm_split] = str(path)
    return out


def _yaml(lang: str, files: dict[str, str], cache_dir: Path) -> str:
    import yaml

    plain = {
        "task": task_name(lang),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files, "cache_dir": str(cache_dir)},
        "output_type": "multiple_choice",
        "validation_split": "validation",
        "test_split": "test",
        "doc_to_target": "label",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": TASK_VERSION, "source": "xlsteer (local data dir, question from the zh file by idx)"},
    }
    text = "# generated by xlsteer.lmeval.xcopa; regenerate rather than edit\n"
    text += yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
    text += (f"process_docs: !function utils.process_docs_{lang}\n"
             f"doc_to_text: !function utils.doc_to_text_{lang}\n"
             "doc_to_choice: !function utils.doc_to_choice\n")
    return text


def _group_yaml(members: list[str]) -> str:
    """lm-eval's ``xcopa`` group (its _xcopa.yaml), over the local tasks written here."""
    import yaml

    group = {
        "group": GROUP,
        "task": members,
        "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
        "metadata": {"version": TASK_VERSION},
    }
    return "# generated by xlsteer.lmeval.xcopa; regenerate rather than edit\n" + yaml.safe_dump(
        group, sort_keys=False)


def _utils(langs: list[str], data_dir: Path) -> str:
    lines = [
        '"""Generated by xlsteer.lmeval.xcopa: binds the data dir into process_docs."""',
        "from functools import partial",
        "",
        "from xlsteer.lmeval import xcopa as _x",
        "",
        f"DATA_DIR = {str(data_dir)!r}",
        "doc_to_choice = _x.doc_to_choice",
    ]
    for lang in langs:
        lines.append(f"doc_to_text_{lang} = _x.doc_to_text_for({lang!r})")
        lines.append(f"process_docs_{lang} = partial(_x.process_docs, lang={lang!r}, data_dir=DATA_DIR)")
    return "\n".join(lines) + "\n"


def write_xcopa_tasks(dest: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                      langs: Sequence[str] | None = None) -> list[str]:
    """Write ``xcopa_<lang>.yaml`` (+ ``utils.py``) into ``dest``; returns the task names.

    Pass ``dest`` to lm-eval as ``include_path`` (``TaskManager(include_path=dest)``).
    """
    from ..data.paths import data_dir as resolve

    root = resolve(data_dir)
    chosen = _langs(langs)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest} is a file; give a directory for the task configs")
    dest.mkdir(parents=True, exist_ok=True)
    files = {lang: data_files(lang, root) for lang in chosen}  # all checked before anything is written
    for lang in chosen:
        atomic_write_text(dest / f"{task_name(lang)}.yaml", _yaml(lang, files[lang], dest / ".hf_datasets_cache"))
    atomic_write_text(dest / _UTILS, _utils(chosen, root))
    members = [task_name(lang) for lang in chosen if lang in GROUP_LANGS]
    if members:
        atomic_write_text(dest / "_xcopa.yaml", _group_yaml(members))
    return [task_name(lang) for lang in chosen]


def local_names(langs: Sequence[str] | None = None) -> set[str]:
    """Task and group names the local configs define."""
    return {task_name(lang) for lang in _langs(langs)} | {GROUP}


@contextlib.contextmanager
def local_task_dir(data_dir: str | os.PathLike | None = None, langs: Sequence[str] | None = None) -> Iterator[Path]:
    """A temporary include dir holding the XCOPA configs (and the datasets cache); removed on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="xlsteer-lm-eval-tasks-"))
    try:
        write_xcopa_tasks(tmp, data_dir, langs)
        yield tmp
    finally:
        harness.forget_task_managers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
