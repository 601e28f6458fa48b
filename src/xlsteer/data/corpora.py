"""Line-aligned parallel text for fitting steering vectors and statistics.

Row i of every language is the same sentence. Corpora are read in place from the data dir
(NTREX by default, XQuAD articles 5-9, or the user's own ``<lang>.txt`` files) and carry a
``data_hash`` of the files actually read, so artifacts can record exactly which text they saw.

Splits (METHODS.md section 5): ``fit`` and ``validation`` are fixed by position. NTREX: fit =
lines 0-1499, validation = lines 1500-1996. XQuAD paragraphs: all ``fit``. User files: the
first 75% of lines (rounded down, at least 1) are ``fit``, the rest ``validation``.
``all`` is every line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import DataError, LanguageError, UsageError
from ..validation import check_limit
from .langs import normalize_lang, normalize_langs
from .paths import data_dir as _resolve_data_dir, files_hash

SPLITS = ("fit", "validation", "all")
NTREX_FIT = range(0, 1500)
NTREX_VALIDATION = range(1500, 1997)
NTREX_LINES = 1997
USER_FIT_FRACTION = 0.75
# ISO 639-1 -> NTREX file code (the 21 files present in shared/data/ntrex128).
NTREX_CODES = {
    "en": "eng", "ar": "arb", "bn": "ben", "de": "deu", "el": "ell", "fr": "fra", "hi": "hin",
    "id": "ind", "it": "ita", "ja": "jpn", "ko": "kor", "pt": "por", "ro": "ron", "ru": "rus",
    "es": "spa", "sw": "swa", "te": "tel", "th": "tha", "tr": "tur", "vi": "vie", "zh": "zho-CN",
}


def ntrex_file(lang: str) -> str:
    """Path of the NTREX file for an ISO 639-1 code, relative to the data dir."""
    code = NTREX_CODES[lang]
    kind = "src" if code == "eng" else "ref"
    return f"ntrex128/newstest2019-{kind}.{code}.txt"


@dataclass
class ParallelCorpus:
    """Aligned text: ``texts[lang][i]`` is row ``i`` (id ``ids[i]``) in language ``lang``.

    Validated on construction: languages normalised and unique, every language the same number
    of lines, at least one line. Empty strings are allowed (see :meth:`empty_counts`).
    """

    langs: list[str]
    texts: dict[str, list[str]]
    ids: list[str]
    name: str = "corpus"
    data_hash: str = ""
    row_splits: list[str] | None = None  # split name per row ("fit"/"validation"), None = no splits
    files: list[str] = field(default_factory=list)  # the files read (for provenance)

    def __post_init__(self) -> None:
        if not self.langs:
            raise DataError(f"parallel corpus {self.name} has no languages; give at least one language")
        langs = normalize_langs(self.langs)
        texts: dict[str, list[str]] = {}
        for k, v in self.texts.items():
            n = normalize_lang(k)
            if n in texts:
                raise DataError(f"parallel corpus {self.name} has language {n} twice; keep one text list per language")
            if isinstance(v, str) or not all(isinstance(t, str) for t in v):
                raise DataError(f"parallel corpus {self.name}: texts for {n} must be a list of strings")
            texts[n] = list(v)
        if set(texts) != set(langs):
            raise DataError(
                f"parallel corpus {self.name}: langs ({' '.join(langs)}) do not match the texts' languages "
                f"({' '.join(texts)}); give texts for exactly the listed languages"
            )
        self.langs = langs
        self.texts = {lang: texts[lang] for lang in langs}
        lengths = {lang: len(t) for lang, t in self.texts.items()}
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{lang} has {n} lines" for lang, n in lengths.items())
            raise DataError(
                f"misaligned parallel data: {detail}; every language needs the same lines in the same order"
            )
        n = next(iter(lengths.values()))
        if n == 0:
            raise DataError(f"parallel corpus {self.name} is empty (0 lines); give at least one line per language")
        self.ids = [str(i) for i in self.ids]
        if len(self.ids) != n:
            raise DataError(f"parallel corpus {self.name}: {len(self.ids)} ids for {n} lines; give one id per line")
        if len(set(self.ids)) != n:
            raise DataError(f"parallel corpus {self.name}: ids are not unique; give each line its own id")
        if self.row_splits is not None:
            self.row_splits = list(self.row_splits)
            if len(self.row_splits) != n:
                raise DataError(f"parallel corpus {self.name}: {len(self.row_splits)} split labels for {n} lines")

    def __len__(self) -> int:
        return len(self.ids)

    def empty_counts(self) -> dict[str, int]:
        """Number of empty (or whitespace-only) lines per language."""
        return {lang: sum(not t.strip() for t in ts) for lang, ts in self.texts.items()}

    def _replace(self, **kw) -> "ParallelCorpus":
        base = dict(langs=self.langs, texts=self.texts, ids=self.ids, name=self.name,
                    data_hash=self.data_hash, row_splits=self.row_splits, files=list(self.files))
        base.update(kw)
        return ParallelCorpus(**base)

    def select(self, langs: Sequence[str] | str) -> "ParallelCorpus":
        """The same rows in a subset (or reordering) of the languages."""
        wanted = normalize_langs([langs] if isinstance(langs, str) else langs)
        missing = [lang for lang in wanted if lang not in self.texts]
        if missing:
            raise LanguageError(
                f"corpus {self.name} has no language {missing[0]!r}; available: {' '.join(self.langs)}"
            )
        return self._replace(langs=wanted, texts={lang: self.texts[lang] for lang in wanted})

    def subset(self, indices: Iterable[int]) -> "ParallelCorpus":
        """The rows at ``indices`` (positions, in the given order), in every language."""
        idx = list(indices)
        n = len(self)
        for i in idx:
            if not isinstance(i, int) or isinstance(i, bool) or not -n <= i < n:
                raise UsageError(f"row index {i!r} is out of range for corpus {self.name} with {n} lines")
        return self._replace(
            texts={lang: [ts[i] for i in idx] for lang, ts in self.texts.items()},
            ids=[self.ids[i] for i in idx],
            row_splits=None if self.row_splits is None else [self.row_splits[i] for i in idx],
        )

    def head(self, limit: int | None) -> "ParallelCorpus":
        """The first ``limit`` rows (all when None)."""
        if limit is None:
            return self
        check_limit(limit)
        return self.subset(range(min(limit, len(self))))

    def split(self, name: str) -> "ParallelCorpus":
        """Rows of split ``name``: "fit", "validation", or "all"."""
        if name not in SPLITS:
            raise UsageError(f"unknown split {name!r}; use one of: {' '.join(SPLITS)}")
        if name == "all":
            return self
        if self.row_splits is None:
            raise DataError(f"corpus {self.name} has no splits; use split='all'")
        idx = [i for i, s in enumerate(self.row_splits) if s == name]
        if not idx:
            have = " ".join(sorted(set(self.row_splits)))
            raise DataError(f"corpus {self.name} has no lines in split {name!r}; available splits: {have} (or all)")
        return self.subset(idx)

# ---------------------------------------------------------------------------------------------
# reading


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a UTF-8 text file: split on \\n, strip \\r, drop a BOM and the final empty line."""
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p} is a directory, not a text file; give the path of a line-aligned UTF-8 file")
    if not p.exists():
        raise DataError(f"file {p} does not exist; check the path or the data dir")
    from ..bounded import iter_lines

    lines = []
    for n, raw in iter_lines(p, "lines", "file"):  # streamed, each line bounded
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"file {p} is not UTF-8 (byte 0x{raw[e.start]:02x} on line {n}); re-save it as UTF-8") \
                from None
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    return lines


def _resolve_langs(langs: Sequence[str] | str | None, available: Iterable[str], what: str) -> list[str]:
    avail = list(available)
    if langs is None:
        return avail
    wanted = normalize_langs([langs] if isinstance(langs, str) else langs)
    if not wanted:
        raise UsageError(f"no languages given for {what}; list at least one language")
    for lang in wanted:
        if lang not in avail:
            raise LanguageError(f"{what} has no language {lang!r}; available: {' '.join(avail)}")
    return wanted


def _fraction_splits(n: int) -> list[str]:
    n_fit = max(1, int(n * USER_FIT_FRACTION))
    return ["fit"] * n_fit + ["validation"] * (n - n_fit)


def load_ntrex(
    data_dir: str | os.PathLike | None = None, langs: Sequence[str] | str | None = None,
    split: str = "fit", limit: int | None = None,
) -> ParallelCorpus:
    """NTREX-128 (1,997 news sentences): fit = lines 0-1499, validation = 1500-1996; ids "ntrex/<line>"."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of: {' '.join(SPLITS)}")
    check_limit(limit)
    root = _resolve_data_dir(data_dir)
    wanted = _resolve_langs(langs, NTREX_CODES, "ntrex")
    texts: dict[str, list[str]] = {}
    paths = []
    for lang in wanted:
        p = root / ntrex_file(lang)
        lines = read_lines(p)
        if len(lines) != NTREX_LINES:
            raise DataError(f"file {p} has {len(lines)} lines, expected {NTREX_LINES}; restore it from the shared data")
        texts[lang] = lines
        paths.append(p)
    row_splits = ["fit" if i in NTREX_FIT else "validation" for i in range(NTREX_LINES)]
    corpus = ParallelCorpus(
        langs=wanted, texts=texts, ids=[f"ntrex/{i}" for i in range(NTREX_LINES)], name="ntrex",
        data_hash=files_hash(paths, root), row_splits=row_splits,
        files=[p.relative_to(root).as_posix() for p in paths],
    )
    return corpus.split(split).head(limit)


def load_xquad_paragraphs(
    data_dir: str | os.PathLike | None = None, langs: Sequence[str] | str | None = None,
    articles: Iterable[int] | None = None, limit: int | None = None,
    allow_eval_articles: bool = False,
) -> ParallelCorpus:
    """XQuAD paragraph contexts as parallel text; ids "xquad/<article>/<paragraph>".

    The default articles (5-9) are the ones the xquad task keeps out of evaluation
    (``xquad.RESERVED_ARTICLES``). Other articles are evaluated (dev 0-4, test 10-47), so using
    them needs ``allow_eval_articles=True``. The languages and article ranges are the task's.
    """
    from ..evaluation.tasks import xquad as task

    check_limit(limit)
    arts = sorted(set(task.RESERVED_ARTICLES if articles is None else articles))
    evaluated = {a for split in task.ARTICLES.values() for a in split}
    if not arts:
        raise UsageError("no XQuAD articles given; use e.g. range(5, 10)")
    overlap = [a for a in arts if a in evaluated]
    if overlap and not allow_eval_articles:
        raise UsageError(
            f"XQuAD articles {overlap} are evaluation items (dev 0-4, test 10-47); use articles 5-9 "
            "for parallel text, or pass allow_eval_articles=True knowingly"
        )
    root = _resolve_data_dir(data_dir)
    wanted = _resolve_langs(langs, task.LANGS, "xquad")
    texts: dict[str, list[str]] = {}
    ids: list[str] | None = None
    paths = []
    for lang in wanted:
        p = root / f"xquad/xquad.{lang}.json"
        data = _read_xquad(p)
        if arts[-1] >= len(data) or arts[0] < 0:
            raise UsageError(f"XQuAD article {arts[-1] if arts[-1] >= len(data) else arts[0]} does not exist; "
                             f"{p} has articles 0-{len(data) - 1}")
        lang_ids, lang_texts = [], []
        for a in arts:
            for j, para in enumerate(data[a]["paragraphs"]):
                lang_ids.append(f"xquad/{a}/{j}")
                lang_texts.append(para["context"].lstrip("\ufeff"))  # a few contexts start with a BOM
        if ids is not None and lang_ids != ids:
            raise DataError(f"misaligned parallel data: {p} has a different paragraph structure than {wanted[0]}")
        ids = lang_ids
        texts[lang] = lang_texts
        paths.append(p)
    assert ids is not None
    corpus = ParallelCorpus(
        langs=wanted, texts=texts, ids=ids, name="xquad", data_hash=files_hash(paths, root),
        row_splits=["fit"] * len(ids), files=[p.relative_to(root).as_posix() for p in paths],
    )
    return corpus.head(limit)


def _read_xquad(p: Path) -> list[dict]:
    if not p.is_file():
        raise DataError(f"file {p} does not exist; check the data dir")
    try:
        from ..bounded import read_bytes

        d = json.loads(read_bytes(p, "json", "file").decode("utf-8"))
        data = d["data"]
        for art in data:
            for para in art["paragraphs"]:
                if not isinstance(para["context"], str):
                    raise TypeError("context")
    except UnicodeDecodeError:
        raise DataError(f"file {p} is not UTF-8; restore it from the shared data") from None
    except json.JSONDecodeError as e:
        raise DataError(f"file {p} is malformed JSON (line {e.lineno}: {e.msg}); restore it from the shared data") from None
    except (KeyError, TypeError):
        raise DataError(f"file {p} is not SQuAD v1.1 JSON (data/paragraphs/context); restore it from the shared data") from None
    return data


def load_parallel_files(
    paths: Mapping[str, str | os.PathLike], name: str | None = None, split: str = "all",
    limit: int | None = None,
) -> ParallelCorpus:
    """User-provided line-aligned UTF-8 text files, ``{lang: path}``; ids "<name>/<line>".

    Splits: the first 75% of lines are "fit", the rest "validation" (default: all lines).
    """
    if not paths:
        raise UsageError("no parallel files given; pass {language: path}")
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of: {' '.join(SPLITS)}")
    check_limit(limit)
    langs = normalize_langs(list(paths))
    texts: dict[str, list[str]] = {}
    files = []
    for lang, (_, path) in zip(langs, paths.items()):
        texts[lang] = read_lines(path)
        files.append(Path(path))
    if name is None:
        parents = {f.resolve().parent for f in files}
        name = parents.pop().name if len(parents) == 1 else "parallel"
    n = max(len(t) for t in texts.values())
    common_root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    corpus = ParallelCorpus(
        langs=langs, texts=texts, ids=[f"{name}/{i}" for i in range(n)], name=name,
        data_hash=files_hash(files, common_root), row_splits=_fraction_splits(n) if n else None,
        files=[str(f) for f in files],
    )
    return corpus.split(split).head(limit)


def _dir_files(d: Path) -> dict[str, Path]:
    """Normalised language -> file for ``<lang>.txt`` files in a directory."""
    out: dict[str, Path] = {}
    for f in sorted(d.glob("*.txt")):
        try:
            lang = normalize_lang(f.stem)
        except LanguageError:
            continue
        if lang in out:
            raise DataError(f"directory {d} has two files for {lang} ({out[lang].name}, {f.name}); keep one")
        out[lang] = f
    return out


def load_corpus(
    spec: str | os.PathLike = "ntrex", data_dir: str | os.PathLike | None = None,
    langs: Sequence[str] | str | None = None, split: str = "fit", limit: int | None = None,
) -> ParallelCorpus:
    """Resolve a corpus spec: "ntrex", "xquad" (articles 5-9), or a directory of ``<lang>.txt`` files."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of: {' '.join(SPLITS)}")
    s = str(spec)
    if s.lower() == "ntrex":
        return load_ntrex(data_dir, langs, split=split, limit=limit)
    if s.lower() == "xquad":
        return load_xquad_paragraphs(data_dir, langs).split(split).head(limit)
    d = Path(s).expanduser()
    if not d.exists():
        raise DataError(f"unknown corpus {s!r}: not 'ntrex' or 'xquad' and no such directory; "
                        "use ntrex, xquad, or a directory of <lang>.txt files")
    if not d.is_dir():
        raise DataError(f"corpus {s!r} is a file; give a directory of line-aligned <lang>.txt files (de.txt, en.txt, ...)")
    found = _dir_files(d)
    if not found:
        raise DataError(f"directory {d} has no <lang>.txt files; add line-aligned files such as en.txt and de.txt")
    if langs is None:
        wanted = list(found)
    else:
        wanted = normalize_langs([langs] if isinstance(langs, str) else langs)
        for lang in wanted:
            if lang not in found:
                raise DataError(
                    f"directory {d} has no file for language {lang!r} (expected {lang}.txt); "
                    f"it has: {' '.join(found)}"
                )
    return load_parallel_files({lang: found[lang] for lang in wanted}, name=d.resolve().name, split=split, limit=limit)
