"""The language of an lm-eval task, from its name: used by both directions of the bridge.

Why: lm-eval pools the requests of all tasks by request type, so the model adapter
(:mod:`.model`) must know each request's language from its task's name to steer it; and an
``lmeval:T_en,T_sw`` reference (:mod:`.tasks`) is one xlsteer task whose languages come from the
same names. One rule for both: an explicit ``task_langs`` entry, else the name's trailing
language code (``xcopa_sw`` -> sw, ``belebele_swh_Latn`` -> sw, ``mgsm_direct_zh`` -> zh,
``..._jp`` -> ja), else :data:`TASK_LANGS` for English benchmarks without a code
(``copa``, ``hellaswag_*`` -> en).
"""

from __future__ import annotations

import re

from ..data.langs import normalize_lang
from ..errors import LanguageError, UsageError

#: Tasks without a trailing language code, by name or name prefix ("hellaswag" covers
#: "hellaswag_*" unless that name ends in a language code). Extend per run with ``task_langs``.
TASK_LANGS: dict[str, str] = {
    "arc_challenge": "en", "arc_easy": "en", "boolq": "en", "copa": "en", "gsm8k": "en", "hellaswag": "en",
    "lambada": "en", "lambada_openai": "en", "lambada_standard": "en", "mmlu": "en", "openbookqa": "en",
    "piqa": "en", "sciq": "en", "social_iqa": "en", "triviaqa": "en", "truthfulqa": "en", "wikitext": "en",
    "winogrande": "en", "wsc273": "en",
}

#: The trailing language code of a task name: ``_sw``, ``_swh``, ``_zho_Hans``, ``_zh-CN``.
_LANG_SUFFIX = re.compile(r"[_-]([a-z]{2,3})(?:[_-]([A-Z][a-z]{3}|[A-Z]{2}))?$")


def parse_task_langs(spec: str | dict[str, str] | None) -> dict[str, str]:
    """``"copa:en;my_task:de"`` (commas separate lm-eval's model_args, so ';' here) -> dict."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(";"):
            if not part.strip():
                continue
            name, sep, code = part.partition(":")
            if not sep or not name.strip() or not code.strip():
                raise UsageError(f"cannot parse task_langs entry {part!r}; write task:code;task:code, e.g. copa:en")
            items.append((name.strip(), code.strip()))
    return {name: normalize_lang(code) for name, code in items}


def task_language(task: str | None, task_langs: dict[str, str] | None = None) -> str:
    """The language of a task from its name (see the module docstring); LanguageError if unknown."""
    name = (task or "").strip()
    if task_langs and name in task_langs:
        return task_langs[name]
    m = _LANG_SUFFIX.search(name)
    if m:
        code = m.group(1) + (f"-{m.group(2)}" if m.group(2) else "")
        try:
            return normalize_lang(code)
        except LanguageError as e:
            if m.group(2) and "Traditional" in str(e):
                raise
    for prefix, lang in sorted(TASK_LANGS.items(), key=lambda kv: -len(kv[0])):
        if name == prefix or name.startswith(prefix + "_"):
            return lang
    raise LanguageError(
        f"cannot tell the language of task {name or '(unnamed)'!r} from its name; pass lang=<code> in the "
        f"model args (all requests), or task_langs={name or 'TASK'}:<code>"
    )
