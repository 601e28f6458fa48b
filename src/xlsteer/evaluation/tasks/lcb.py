"""LCB, the Language Confusion Benchmark (Marchisio et al. 2024): does the model answer in the
language the user wants? Scored by :mod:`xlsteer.evaluation.language_fidelity` (upstream's metric).

Prompts (``lcb/test_sets.zip``, read in place with the csv module, fields hold newlines):
monolingual (aya: en tr ar zh pt; dolly: hi ru fr ar es; okapi: ar de en es fr id it pt vi zh;
native: es fr ja ko; 100 per file) ask in language l for an answer in l; cross-lingual (okapi,
sharegpt: 100 per language, complex_prompts: 99; 14 target languages) ask in English for an
answer in another language, e.g. "Reply in Japanese. ...". The zip, not the unpacked folder, is
read: it is the upstream file ``xlsteer data fetch`` downloads and the one its hash list covers.

One module, four tasks (``SPEC``, ``SPEC_MONO``, ``SPEC_CROSS``, ``SPEC_CROSS_OKAPI``, named in the
task registry's built-ins): ``lcb`` (both sets), ``lcb-mono``, ``lcb-cross`` and ``lcb-cross-okapi``
(the cross-lingual okapi prompts alone: one request per row, the paper's most-cited cross-lingual
source, a third of the cost).
``Item.lang`` is the language the answer is wanted in (the prompt's language for monolingual
rows, the requested one for cross-lingual rows, whose prompt is English): the engine steers each
row toward it, so rows wanted in the anchor language (English) are never steered. The prompt's
own language, the source and the row stay in the item's fields.

Splits (LCB has only a test set): in every file, rows 0-19 are ``dev`` and rows 20 to the end are
``test`` (80 per source and language; 79 for complex_prompts). ``limit`` N takes the first N rows of
each (source, language) file of the split, so every source stays represented. Cross-lingual row i
is the same English request in every target language (checked), so its id
``lcb/cross/<source>/<i>`` is shared across languages; monolingual files are not parallel and
their ids name the language: ``lcb/mono/<source>/<lang>/<i>``.

Per item, the metrics are binary, so every run gets CIs, McNemar against the unsteered model,
Holm and the MDE: ``line_pass`` (main: the response has a line of >= 5 tokens and every such line
is identified as the wanted language; a *skipped* response, with no such line, does not pass),
``word_pass`` (a line pass that, for ar hi ja ko ru zh, holds no English word), ``answered`` (not
skipped) and ``line_acc`` (share of kept lines in the wanted language; 0 when skipped). Upstream's
figures (LPR over answered responses, WPR among line passes, line accuracy, per source and
language, per source, per language and overall) are recomputed exactly from the same verdicts in
the result's ``task_summary`` (see :func:`task_summary`).
"""

from __future__ import annotations

import csv
import functools
import io
import os
import zipfile
from typing import Any, Sequence

from ...errors import DataError, UsageError
from ..sampling import Sampling
from ...validation import check_limit
from .base import Item, check_split, read_json, resolve_lang, root_dir
from .spec import BaselineHints, FewShot, Metric, PromptBaseline, Scored, TaskSpec

ZIP = "lcb/test_sets.zip"
WORDS = "lcb/words"
FEW_SHOT = "lcb/few_shot_examples.json"
DEV_ROWS = 20
#: Per set: source -> (folder in the zip, upstream's ``source`` label, languages).
SOURCES: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "mono": {
        "aya": ("aya_human_annotated", ("ar", "en", "pt", "tr", "zh")),
        "dolly": ("dolly_human_edited", ("ar", "es", "fr", "hi", "ru")),
        "native": ("native_prompts", ("es", "fr", "ja", "ko")),
        "okapi": ("okapi", ("ar", "de", "en", "es", "fr", "id", "it", "pt", "vi", "zh")),
    },
    "cross": {
        src: (src, ("ar", "de", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "ru", "tr", "vi", "zh"))
        for src in ("complex_prompts", "okapi", "sharegpt")
    },
}
FOLDER = {"mono": "monolingual", "cross": "crosslingual"}
UPSTREAM_TASK = {"mono": "monolingual", "cross": "crosslingual"}
#: Rows per file (verified counts of the shared data README).
ROWS = {("cross", "complex_prompts"): 99}
ROWS_DEFAULT = 100
#: The names LCB's own cross-lingual prompts use ("Reply in Chinese.").
LANG_NAMES = {"ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
              "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "pt": "Portuguese",
              "ru": "Russian", "tr": "Turkish", "vi": "Vietnamese", "zh": "Chinese"}
MAX_SHOTS = 5
MAX_NEW_TOKENS = 100
MAX_MEMBER_BYTES = 16 << 20  # a CSV of the archive larger than this is refused (the largest is 24 kB)
#: Upstream's decoding: nucleus sampling, p = 0.75, T = 0.3, each item from its own stream
#: seeded by (seed, its key), so unsteered and steered outputs are paired and a re-run repeats
#: them; greedy with ``--temperature 0`` (``EvalConfig(sampling={"temperature": 0})``).
UPSTREAM_SAMPLING = Sampling(temperature=0.3, top_p=0.75, seed=0)


def set_langs(sets: Sequence[str], sources: Sequence[str] | None = None) -> tuple[str, ...]:
    return tuple(sorted({lang for s in sets for src, (_, langs) in SOURCES[s].items() for lang in langs
                         if sources is None or src in sources}))


# ---------------------------------------------------------------------------------------------
# reading the archive


def parse_csv(data: bytes, where: str) -> list[dict[str, str]]:
    """The rows of one LCB CSV (header with ``prompt`` and ``language``); DataError naming ``where``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where} is not UTF-8 (offset {e.start}); restore lcb/test_sets.zip") from None
    try:
        rows = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline="")))
    except csv.Error as e:
        raise DataError(f"{where} is not a readable CSV ({e}); restore lcb/test_sets.zip") from None
    for n, row in enumerate(rows, 2):
        prompt, lang = row.get("prompt"), row.get("language")
        if not isinstance(prompt, str) or not isinstance(lang, str) or not prompt.strip() or None in row:
            raise DataError(f"{where} record {n - 1}: expected the columns prompt and language with a non-empty "
                            "prompt; restore lcb/test_sets.zip")
    return rows


@functools.lru_cache(maxsize=2)
def _archive(path: str, mtime_ns: int, size: int) -> dict[str, list[dict[str, str]]]:
    """Every CSV of the archive by its name inside it (read once per file version)."""
    out: dict[str, list[dict[str, str]]] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".csv"):
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    raise DataError(f"{path}: {info.filename} unpacks to {info.file_size:,} bytes, more than a "
                                    "test set holds; restore lcb/test_sets.zip")
                out[info.filename] = parse_csv(z.read(info), f"{path}:{info.filename}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as e:
        raise DataError(f"{path} is not a readable zip archive ({type(e).__name__}); restore it with "
                        "`xlsteer data fetch --only lcb --accept-nc`") from None
    return out


def read_file(data_dir: Any, set_name: str, source: str, lang: str) -> list[dict[str, str]]:
    """All rows of ``test_sets/<monolingual|crosslingual>/<source>/<lang>.csv``, checked."""
    path = root_dir(data_dir) / ZIP
    if not path.is_file():
        raise DataError(f"{path} does not exist; fetch LCB with `xlsteer data fetch --only lcb --accept-nc` "
                        "(or pass --data-dir)")
    st = path.stat()
    member = f"test_sets/{FOLDER[set_name]}/{source}/{lang}.csv"
    rows = _archive(str(path.resolve()), st.st_mtime_ns, st.st_size).get(member)
    expected = ROWS.get((set_name, source), ROWS_DEFAULT)
    if rows is None or len(rows) != expected:
        got = "no such file" if rows is None else f"{len(rows)} rows"
        raise DataError(f"{path}:{member}: {got}, expected {expected} rows; restore lcb/test_sets.zip")
    for n, row in enumerate(rows, 1):
        if row["language"] != lang:
            raise DataError(f"{path}:{member} record {n} is in language {row['language']!r}, not {lang!r}; "
                            "restore lcb/test_sets.zip")
    return rows


def split_rows(split: str, n_rows: int, limit: int | None) -> range:
    """The row indices of ``split`` in a file of ``n_rows`` rows, the first ``limit`` of them."""
    rows = range(0, DEV_ROWS) if split == "dev" else range(DEV_ROWS, n_rows)
    return rows if limit is None else rows[:limit]


def _item(data_dir: Any, set_name: str, source: str, lang: str, split: str, i: int, row: dict[str, str]) -> Item:
    upstream, _ = SOURCES[set_name][source]
    ident = f"lcb/cross/{source}/{i}" if set_name == "cross" else f"lcb/mono/{source}/{lang}/{i}"
    fields = {"prompt": row["prompt"], "set": set_name, "source": source, "upstream_source": upstream,
              "prompt_lang": "en" if set_name == "cross" else lang, "row": i,
              "words_file": str(root_dir(data_dir) / WORDS)}
    if set_name == "cross":
        fields.update(location=row.get("location", ""), phrasing=row.get("phrasing", ""))
    return Item(id=ident, lang=lang, split=split, fields=fields, answer=lang)


def make_loader(sets: tuple[str, ...], name: str, langs: tuple[str, ...], sources: tuple[str, ...] | None = None):
    def load_items(data_dir: str | os.PathLike | None, lang: str, split: str, limit: int | None = None) -> list[Item]:
        """The prompts wanted in ``lang``: per set and source, the split's rows (first ``limit`` of each file)."""
        lang = resolve_lang(name, lang, langs)
        check_split(name, split, ("dev", "test"))
        check_limit(limit)
        items = []
        for set_name in sets:
            for source, (_, src_langs) in SOURCES[set_name].items():
                if lang in src_langs and (sources is None or source in sources):
                    rows = read_file(data_dir, set_name, source, lang)
                    items += [_item(data_dir, set_name, source, lang, split, i, rows[i])
                              for i in split_rows(split, len(rows), limit)]
        return items

    return load_items


# ---------------------------------------------------------------------------------------------
# prompts: upstream's base-model format, the chat template, and the explicit instruction


def instruction(lang: str) -> str:
    """The explicit instruction of the ``explicit`` option: "Answer in German." (English names,
    as LCB's own cross-lingual prompts phrase it, the same words for every language)."""
    return f"Answer in {LANG_NAMES[lang]}."


def load_shots(template: Any, lang: str, data_dir: Any) -> tuple[list[Item], str | None]:
    """Upstream's few-shot turns for answers wanted in ``lang`` (5 user/answer pairs in *other*
    languages, one list for monolingual and one for cross-lingual prompts)."""
    k = int(template.options.get("k", 0))
    if k == 0:
        return [], None
    if k > MAX_SHOTS:
        raise UsageError(f"template '{template.name}': k must be 0..{MAX_SHOTS} (upstream has 5 exemplars), got {k}")
    path = root_dir(data_dir) / FEW_SHOT
    doc = read_json(path)
    out: list[Item] = []
    for set_name, key in (("mono", "few_shot_examples_monolingual"), ("cross", "few_shot_examples_crosslingual")):
        turns = (doc.get(key) or {}).get(lang) if isinstance(doc, dict) else None
        if turns is None:
            continue
        try:
            roles = [t["role"] for t in turns]
            msgs = [t["message"] for t in turns]
        except (KeyError, TypeError):
            raise DataError(f"{path}: {key}[{lang}] is not a list of {{role, message}}; restore it") from None
        alternating = roles == ["User", "Chatbot"] * (len(turns) // 2) and not len(turns) % 2
        if not alternating or not all(isinstance(m, str) for m in msgs):
            raise DataError(f"{path}: {key}[{lang}] does not alternate User and Chatbot turns; restore it")
        out += [Item(id=f"lcb/shot/{set_name}/{lang}/{j}", lang=lang, split="train",
                     fields={"set": set_name, "user": msgs[2 * j], "answer": msgs[2 * j + 1]}, answer=lang)
                for j in range(len(turns) // 2)]
    return out, "other languages (upstream few_shot_examples.json)"


def conversation(t: Any, item: Any, exemplars: Sequence[Any]) -> list[tuple[str, str]]:
    """The turns of one request: k exemplar pairs of the item's set, then the prompt (with the
    explicit instruction after it when the template asks for one)."""
    k, explicit = t.options["k"], t.options["explicit"]
    if not isinstance(explicit, bool):
        raise UsageError(f"template '{t.name}': explicit must be true or false, got {explicit!r}")
    if k > MAX_SHOTS:
        raise UsageError(f"template '{t.name}': k must be 0..{MAX_SHOTS} (upstream has 5 exemplars), got {k}")
    fields = getattr(item, "fields", {})
    if not isinstance(fields.get("prompt"), str) or "set" not in fields:
        raise UsageError(f"template '{t.name}' needs an LCB item (fields prompt and set); item {item.id!r} is not one")
    shots = [e for e in exemplars if e.fields.get("set") == fields["set"]][:k]
    if len(shots) < k:
        raise UsageError(f"template '{t.name}' with k={k} found {len(shots)} exemplars for {item.lang}; lower k")
    prompt = fields["prompt"]
    if explicit:
        prompt = f"{prompt.rstrip()}\n{instruction(item.lang)}"
    turns = [turn for e in shots for turn in (("user", e.fields["user"]), ("assistant", e.fields["answer"]))]
    return [*turns, ("user", prompt)]


def qa_prompt(turns: Sequence[tuple[str, str]]) -> str:
    """Upstream's base-model prompt (``turns_to_prompt`` of few_shot_prompting.py): ``Q: <user>``
    lines, ``A: <answer>`` lines each followed by a blank line, ``A:`` after the last question,
    newlines stripped at both ends."""
    text = ""
    for role, msg in turns:
        text += f"Q: {msg}\n" if role == "user" else f"A: {msg}\n\n"
    if turns and turns[-1][0] == "user":
        text += "A:"
    return text.strip("\n")


def _render_qa(t: Any, item: Any, exemplars: Sequence[Any]) -> Any:
    from ..templates import Request

    return Request(kind="generate", prompt=qa_prompt(conversation(t, item, exemplars)),
                   max_new_tokens=int(t.options["max_new_tokens"]), stop=("\nQ:",), sampling=UPSTREAM_SAMPLING)


def _render_chat(t: Any, item: Any, exemplars: Sequence[Any]) -> Any:
    from ..templates import Request

    return Request(kind="generate", messages=tuple(conversation(t, item, exemplars)),
                   max_new_tokens=int(t.options["max_new_tokens"]), sampling=UPSTREAM_SAMPLING)


def templates(task: str) -> tuple[Any, ...]:
    from ..templates import Template

    opts = {"k": 0, "explicit": False, "max_new_tokens": MAX_NEW_TOKENS}
    return (
        Template("lcb-qa", task, "1", "generate",
                 "upstream's base-model format 'Q: <prompt>\\nA:' after k upstream exemplars (0-5); "
                 "explicit: 'Answer in <Language>.' after the prompt; <= 100 new tokens, stop at '\\nQ:'; "
                 "nucleus sampling p 0.75, T 0.3, seeded per item",
                 dict(opts), _render_qa),
        Template("lcb-chat", task, "1", "generate",
                 "the tokenizer's chat template: k exemplar turns, then the prompt as the user turn; "
                 "explicit: 'Answer in <Language>.' after the prompt; <= 100 new tokens; "
                 "nucleus sampling p 0.75, T 0.3, seeded per item",
                 dict(opts), _render_chat),
    )


# ---------------------------------------------------------------------------------------------
# scoring


def _score(item: Item, text: str) -> Scored:
    from .. import language_fidelity as LF

    v = LF.score_response(text, item.lang, LF.english_words(item.fields["words_file"]))
    details = {"set": item.fields["set"], "source": item.fields["source"],
               "upstream_source": item.fields["upstream_source"], "prompt_lang": item.fields["prompt_lang"],
               "line_errors": v.line_errors, "english_words": list(v.english[:LF.MAX_ENGLISH_SHOWN])}
    return Scored(prediction=list(v.labels), correct=v.line_pass, scores=v.scores(), details=details)


def task_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Upstream's figures for the scored records, per set (monolingual, cross-lingual), and the
    language-ID model that made them."""
    from .. import language_fidelity as LF

    groups: dict[str, dict[tuple[str, str], list[Any]]] = {}
    for r in records:
        d = r["details"]
        verdict = LF.Verdict(lang=r["lang"], labels=tuple(r["prediction"]), english=tuple(d["english_words"]))
        groups.setdefault(d["set"], {}).setdefault((d["upstream_source"], r["lang"]), []).append(verdict)
    out: dict[str, Any] = {"kind": "lcb", "lid_model": LF.current_lid_model().describe(),
                           "note": "upstream's compute_metrics.py figures: LPR over answered responses, WPR among "
                                   "line-level passes (ar hi ja ko ru zh), acc = line accuracy; means per source, "
                                   "per language, and over the per-language means"}
    tables = []
    for set_name in ("mono", "cross"):
        if set_name in groups:
            report = LF.upstream_report(groups[set_name])
            out[UPSTREAM_TASK[set_name]] = report
            tables.append(_upstream_table(UPSTREAM_TASK[set_name], report))
    out["tables"] = tables
    return out


def _upstream_table(task: str, report: dict[str, Any]) -> dict[str, Any]:
    """Upstream's printout of one task as a table, with the counts behind each group."""
    from .. import language_fidelity as LF

    counts = {tuple(k.rsplit("/", 1)): v for k, v in report["per_source_lang"].items()}
    rows = []
    for source, lang, lpr, wpr in LF.printed_rows(report):
        c = counts.get((source, lang), {})
        acc = report["per_source_lang"].get(f"{source}/{lang}") or (
            report["overall"] if source == lang == "all" else
            report["per_lang"].get(lang) if source == "all" else report["per_source"].get(source))
        rows.append([source, lang, c.get("n", ""), c.get("answered", ""), lpr, wpr, LF.percent(acc["acc"])])
    return {"title": f"LCB {task}, as upstream's compute_metrics.py reports it (LPR over answered responses; "
                     f"'all': means)", "headers": ["source", "lang", "n", "answered", "LPR", "WPR", "line acc"],
            "rows": rows}


#: The prompt-level baselines of ``xlsteer compare`` (methods ``instruct`` and ``few-shot``): an explicit
#: instruction, and upstream's own mitigation, its 5-shot prompt (exemplars answered in other languages).
PROMPT_BASELINES = {
    "instruct": PromptBaseline({"explicit": True}, "the prompt followed by the line 'Answer in <Language>.' (English "
                               "language names, as LCB's cross-lingual prompts ask)"),
    "few-shot": PromptBaseline({"k": MAX_SHOTS}, f"upstream's {MAX_SHOTS}-shot prompt (few_shot_examples.json: "
                               "user/answer pairs in other languages before the prompt; the paper's mitigation)"),
}


def _spec(name: str, sets: tuple[str, ...], description: str, sources: tuple[str, ...] | None = None) -> TaskSpec:
    langs = set_langs(sets, sources)
    files = [ZIP, WORDS]
    test = f"rows {DEV_ROWS}- of every file ({ROWS_DEFAULT - DEV_ROWS} per source and language"
    with_complex = "cross" in sets and (sources is None or "complex_prompts" in sources)
    test += f"; {ROWS[('cross', 'complex_prompts')] - DEV_ROWS} for complex_prompts)" if with_complex else ")"
    return TaskSpec(
        name=name, description=description, langs=langs,
        splits={"dev": f"rows 0-{DEV_ROWS - 1} of every file (per source and language)", "test": test},
        load_items=make_loader(sets, name, langs, sources),
        data_files=lambda lang, split: list(files),
        templates=templates(name),
        metrics=(Metric("line_pass", "binary"), Metric("word_pass", "binary"), Metric("answered", "binary"),
                 Metric("line_acc", "continuous")),
        main="line_pass", tie_break="line_acc", score=_score, comparable_predictions=False,
        few_shot=FewShot(load_shots, (FEW_SHOT,)), task_summary=task_summary, quality_guard=True,
        # cross-lingual rows share ids across languages (pairs by id); monolingual files do not pair at all
        pairing="id" if "cross" in sets else "none",
        baselines=BaselineHints(icl_split=None, train_split=None,
                                translate_unsupported="LCB asks for an answer in a language; translating the "
                                                      "prompt to English changes the task",
                                steer_toward="wanted", prompt_baselines=PROMPT_BASELINES),
    )


SPEC = _spec("lcb", ("mono", "cross"), "Language Confusion Benchmark, monolingual and cross-lingual prompts: is the "
             "answer in the wanted language (upstream's line-level pass)")
SPEC_MONO = _spec("lcb-mono", ("mono",),
                  "Language Confusion Benchmark, monolingual prompts (aya, dolly, okapi, native)")
SPEC_CROSS = _spec("lcb-cross", ("cross",), "Language Confusion Benchmark, cross-lingual prompts (English, asking "
                   "for another language: okapi, sharegpt, complex_prompts)")
SPEC_CROSS_OKAPI = _spec("lcb-cross-okapi", ("cross",), "Language Confusion Benchmark, cross-lingual okapi prompts "
                         "only (English, asking for another language)", sources=("okapi",))
SPECS = (SPEC, SPEC_MONO, SPEC_CROSS, SPEC_CROSS_OKAPI)
