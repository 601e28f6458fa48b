"""Fuzz tests of every reader of user files (hypothesis): a file either loads or fails with one line.

Valid files of each kind (intervention, statistics, results, per-item cache, parallel corpus,
control vector) are mutated -- a JSON value swapped for another type, huge or non-finite
numbers, deep nesting, truncation at any offset, flipped bytes, another text encoding -- and
the reader must return normally or raise :class:`xlsteer.errors.XlsteerError` whose message is
one line naming the file. Any other exception (KeyError, TypeError, RecursionError, ...) is a
bug. The normal run tries a bounded number of examples per reader; ``-m fuzz`` runs many more.
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlsteer.errors import XlsteerError

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LONG = settings(max_examples=1500, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---- mutations ----------------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "resid_post@1", "mlp_act@-1", "x@y", "@", "de", "\x00", "é" * 3]),
)
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=8)


def _nested(depth: int) -> Any:
    doc: Any = 1
    for i in range(depth):
        doc = [doc] if i % 2 else {"a": doc}
    return doc


_VALUES = st.one_of(_JSON, st.integers(min_value=2, max_value=900).map(_nested))


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) to a value inside ``doc``."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_json(draw: Callable, doc: Any) -> Any:
    """``doc`` with one to three values replaced, removed, or given another type."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            return draw(_VALUES)
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(_VALUES)
    return doc


@st.composite
def mutated_bytes(draw: Callable, data: bytes) -> bytes:
    """Truncated at any offset, bytes flipped or inserted, or re-encoded."""
    how = draw(st.sampled_from(["truncate", "truncate_header", "flip", "insert", "utf16", "latin1", "empty"]))
    if how == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "truncate_header":  # the offset class that cuts a header or the first record
        return data[: draw(st.integers(0, min(len(data) - 1, 200)))]
    if how == "flip":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        return bytes(buf)
    if how == "insert":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]
    if how == "empty":
        return b""
    text = data.decode("utf-8", errors="replace") + "é"
    return text.encode("utf-16") if how == "utf16" else text.encode("latin-1", errors="replace")


def _one_line(exc: XlsteerError, path: Path | None) -> None:
    msg = str(exc)
    assert msg.strip() and "\n" not in msg.strip(), repr(msg)
    assert len(msg) < 1000, msg
    assert path is None or path.name in msg, f"the message does not name the file: {msg}"


def _loads_or_one_line(reader: Callable[[Path], Any], path: Path, names_file: bool = True) -> None:
    try:
        reader(path)
    except XlsteerError as e:
        _one_line(e, path if names_file else None)


# ---- valid files ---------------------------------------------------------------------------------


class Files(dict):
    """The valid files (a short repr, so a falsifying example prints readably)."""

    def __repr__(self) -> str:
        return "<valid files>"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Any]:
    return make_valid_files(tmp_path_factory.mktemp("fuzz_valid"), tmp_path_factory.mktemp("fuzz_examples"))


def make_valid_files(root: Path, work: Path) -> dict[str, Any]:
    """One valid file of each kind, made with the tiny model (seconds); examples are written under ``work``."""
    from xlsteer.stats import collect_statistics
    from xlsteer.cli import main
    from xlsteer.interventions.clas import fit_clas
    from xlsteer.interventions.vector import fit_diffmean
    from xlsteer.io import load_tensors
    from xlsteer.models.sites import Site
    from xlsteer.testing import tiny_model

    _WORK[:] = [work]
    torch.manual_seed(0)
    lm = tiny_model("llama")
    texts = {"en": ["the cat sat", "it rains today", "we went home", "a big house"],
             "de": ["die Katze saß", "es regnet heute", "wir gingen heim", "ein großes Haus"],
             "sw": ["paka alikaa", "leo kunanyesha", "tulienda nyumbani", "nyumba kubwa"]}
    corpus = root / "corpus"
    corpus.mkdir()
    for lang, lines in texts.items():
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    sites = [Site(1, "resid_post"), Site(1, "mlp_act"), Site(0, "mlp_act")]
    stats = collect_statistics(lm, langs=list(texts), sites=sites, corpus=str(corpus), limit=4, keep_items=True)
    out: dict[str, Any] = Files(root=root, corpus=corpus)
    out["stats"] = stats.save(root / "stats.safetensors")
    vec = fit_diffmean(stats, [1], ["de", "sw"], anchor="en", meta={"model_fingerprint": lm.fingerprint})
    out["vector"] = vec.save(root / "vector.safetensors")
    out["clas"] = fit_clas(stats, ["de", "sw"], anchor="en", layers=[0, 1]).save(root / "clas.safetensors")
    for kind in ("stats", "vector", "clas"):
        out[kind + "_parts"] = load_tensors(out[kind])
    model_dir = root / "tiny"
    lm.model.save_pretrained(model_dir)
    lm.tokenizer.save_pretrained(model_dir)
    results = root / "results.json"
    assert main(["eval", "--model", str(model_dir), "--task", "xcopa", "--langs", "sw", "--limit", "3",
                 "--intervention", str(out["vector"]), "--cache-dir", str(root / "cache"), "-o", str(results)]) == 0
    out["results"] = json.loads(results.read_text(encoding="utf-8"))
    caches = sorted((root / "cache").glob("*.jsonl"))
    assert caches
    out["cache"] = caches[0].read_bytes()
    from xlsteer.export.gguf import export_control_vector

    out["gguf"] = export_control_vector(vec, "de", root / "vec.gguf").read_bytes()
    return out


_WORK: list[Path] = []  # the folder under pytest's tmp dir that holds every example's files


def _work() -> Path:
    return Path(tempfile.mkdtemp(prefix="ex-", dir=_WORK[0]))


# ---- readers ----------------------------------------------------------------------------------


def _save_mutated(kind: str, files: dict[str, Any], meta: Any) -> Path:
    from safetensors.torch import save_file

    tensors, _ = files[kind + "_parts"]
    path = _work() / f"{kind}.safetensors"
    save_file(tensors, str(path), metadata={"xlsteer": json.dumps(meta, allow_nan=True)})
    return path


def _load_intervention(path: Path) -> Any:
    from xlsteer.interventions.base import Intervention

    iv = Intervention.load(path)
    iv.metadata()  # what inspect --json and save read back
    return iv


def _load_statistics(path: Path) -> Any:
    from xlsteer.stats import Statistics

    return Statistics.load(path)


def _check_metadata(kind: str, reader: Callable, files: dict[str, Any], data: Any) -> None:
    _, meta = files[kind + "_parts"]
    path = _save_mutated(kind, files, data.draw(mutated_json(meta)))
    _loads_or_one_line(reader, path)


def _check_bytes(name: str, reader: Callable, raw: bytes, data: Any) -> None:
    path = _work() / name
    path.write_bytes(data.draw(mutated_bytes(raw)))
    _loads_or_one_line(reader, path)


def _table(path: Path) -> Any:
    from xlsteer.cli.evaluate import read_results_tables

    return read_results_tables(str(path))


def _cache(path: Path) -> Any:
    from xlsteer.evaluation.engine_cache import _Store

    return _Store(path, {"format": "xlsteer.eval-cache/1"}).data


def _gguf(path: Path) -> Any:
    from xlsteer.export.gguf import read_control_vector

    return read_control_vector(path)


def _corpus(path: Path) -> Any:
    from xlsteer.data.corpora import load_corpus

    return load_corpus(path.parent, langs=["en", "de"], split="all")


READERS = {"vector": _load_intervention, "clas": _load_intervention, "stats": _load_statistics}


def _fuzz_cases(budget: settings) -> list[Callable]:
    @budget
    @given(data=st.data(), kind=st.sampled_from(sorted(READERS)))
    def metadata(files, data, kind):
        _check_metadata(kind, READERS[kind], files, data)

    @budget
    @given(data=st.data(), kind=st.sampled_from(sorted(READERS)))
    def safetensors_bytes(files, data, kind):
        _check_bytes(f"{kind}.safetensors", READERS[kind], Path(files[kind]).read_bytes(), data)

    @budget
    @given(data=st.data())
    def results_json(files, data):
        path = _work() / "results.json"
        path.write_text(json.dumps(data.draw(mutated_json(files["results"])), allow_nan=True), encoding="utf-8")
        _loads_or_one_line(_table, path)

    @budget
    @given(data=st.data())
    def results_bytes(files, data):
        _check_bytes("results.json", _table, json.dumps(files["results"]).encode("utf-8"), data)

    @budget
    @given(data=st.data())
    def cache_lines(files, data):
        raw = files["cache"]
        lines = raw.split(b"\n")
        i = data.draw(st.integers(0, len(lines) - 1))
        poisoned = json.dumps(data.draw(_VALUES), allow_nan=True).encode() if data.draw(st.booleans()) else \
            json.dumps({"k": "x", "v": data.draw(_VALUES)}, allow_nan=True).encode()
        lines[i] = poisoned
        for variant in (b"\n".join(lines), data.draw(mutated_bytes(raw))):
            path = _work() / "cache.jsonl"
            path.write_bytes(variant)
            _loads_or_one_line(_cache, path)

    @budget
    @given(data=st.data())
    def control_vector(files, data):
        _check_bytes("vec.gguf", _gguf, files["gguf"], data)

    @budget
    @given(data=st.data())
    def corpus_file(files, data):
        folder = _work()
        (folder / "en.txt").write_bytes((Path(files["corpus"]) / "en.txt").read_bytes())
        (folder / "de.txt").write_bytes(data.draw(mutated_bytes((Path(files["corpus"]) / "de.txt").read_bytes())))
        _loads_or_one_line(_corpus, folder / "de.txt", names_file=False)  # names the language

    return [metadata, safetensors_bytes, results_json, results_bytes, cache_lines, control_vector, corpus_file]


_FAST_CASES = {f.__name__: f for f in _fuzz_cases(FAST)}
_LONG_CASES = {f.__name__: f for f in _fuzz_cases(LONG)}


@pytest.mark.parametrize("reader", sorted(_FAST_CASES))
def test_reader_loads_or_fails_with_one_line(files, reader):
    _FAST_CASES[reader](files)


@pytest.mark.slow
@pytest.mark.fuzz
@pytest.mark.parametrize("reader", sorted(_LONG_CASES))
def test_reader_long_fuzz(files, reader):
    _LONG_CASES[reader](files)


def test_the_mutations_reach_the_checks(files):
    """The fuzzing is not vacuous: typical mutations are refused with a line naming the field."""
    _, meta = files["vector_parts"]
    for field, value, expected in [("sites", 3, "'sites' must be a list of a string"),
                                   ("params", [1, 2], "'params' must be an object"),
                                   ("strength", "2", "'strength' must be a finite number"),
                                   ("languages", _nested(200), "nested deeper")]:
        path = _save_mutated("vector", files, {**meta, field: value})
        with pytest.raises(XlsteerError, match=expected):
            _load_intervention(path)
    _, smeta = files["stats_parts"]
    path = _save_mutated("stats", files, {**smeta, "threshold": float("nan")})
    with pytest.raises(XlsteerError, match="'threshold' must be a finite number"):
        _load_statistics(path)
    header = struct.pack("<Q", 10**12)  # a header length far beyond the file
    path = _work() / "huge.safetensors"
    path.write_bytes(header + b"{}")
    with pytest.raises(XlsteerError, match="corrupted or truncated"):
        _load_statistics(path)
