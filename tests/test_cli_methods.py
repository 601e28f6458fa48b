"""xlsteer fit / generate / inspect, in-process on a tiny random Llama saved to a folder."""

from __future__ import annotations

import json
import re

import pytest
import torch

from xlsteer.cli import main
from xlsteer.interventions import load_intervention, method_names
from xlsteer.io import load_tensors
from xlsteer.models.loading import load_model
from xlsteer.testing import tiny_model

EN = ["the cat sat on the mat", "it is raining today", "we went to the market", "the house is big",
      "my brother reads a book", "the sun is hot", "she drinks water", "the dog runs fast",
      "we eat bread", "the car is red", "he writes a letter", "the tree is tall"]
DE = ["die Katze saß auf der Matte", "es regnet heute", "wir gingen zum Markt", "das Haus ist groß",
      "mein Bruder liest ein Buch", "die Sonne ist heiß", "sie trinkt Wasser", "der Hund läuft schnell",
      "wir essen Brot", "das Auto ist rot", "er schreibt einen Brief", "der Baum ist hoch"]
SW = ["paka alikaa kwenye mkeka", "leo kunanyesha mvua", "tulienda sokoni", "nyumba ni kubwa",
      "kaka yangu anasoma kitabu", "jua ni kali", "anakunywa maji", "mbwa anakimbia haraka",
      "tunakula mkate", "gari ni jekundu", "anaandika barua", "mti ni mrefu"]

# learned: a few steps only; incline: 9 fit rows < width 64, so it needs a ridge
FIT_ARGS = {
    "diffmean": ["-p", "normalize=unit"],
    "learned": ["-p", "steps=2", "-p", "eval_every=1"],
    "clas": ["-p", "beta=0.4"],
    "incline": ["-p", "ridge=0.01"],
    "lape": [],
    "intmu": [],
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Saved tiny models (4 layers, so CLAS has candidate bridge layers) and a parallel corpus folder."""
    root = tmp_path_factory.mktemp("cli_methods")
    for name, arch in (("tiny", "llama"), ("other", "qwen2")):
        lm = tiny_model(arch, layers=4)
        lm.model.save_pretrained(root / name)
        lm.tokenizer.save_pretrained(root / name)
    corpus = root / "corpus"
    corpus.mkdir()
    for lang, lines in (("en", EN), ("de", DE), ("sw", SW)):
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"root": root, "model": str(root / "tiny"), "other": str(root / "other"), "corpus": str(corpus)}


def _fit(env, method, out, *extra, langs="de,sw"):
    return main(["fit", method, "--model", env["model"], "--langs", langs, "--data", env["corpus"],
                 *extra, "-o", str(out)])


@pytest.fixture(scope="module")
def vec(env):
    out = env["root"] / "vec.safetensors"
    assert _fit(env, "diffmean", out, "--layers", "1") == 0
    return out


def _error(capsys, code, expected):
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert code == expected, cap.err + cap.out
    assert len(lines) == 1 and lines[0].startswith("error: "), cap.err
    assert "Traceback" not in cap.err
    return lines[0]


def _generations(text):
    """[(language, unsteered, steered-or-note)] from generate's output."""
    blocks = re.split(r"^\[\d+\] ", text, flags=re.M)[1:]
    out = []
    for b in blocks:
        lang = b.split()[1]
        unsteered = re.search(r"^  unsteered: (.*)$", b, re.M).group(1)
        m = re.search(r"^  steered:   (.*)$", b, re.M)
        out.append((lang, unsteered, m.group(1) if m else None))
    return out


@pytest.mark.parametrize("method", method_names())
def test_fit_each_method_loads_and_inspects(env, method, tmp_path, capsys):
    out = tmp_path / f"{method}.safetensors"
    code = _fit(env, method, out, *FIT_ARGS[method])
    text = capsys.readouterr().out
    assert code == 0, text
    summary = text.strip().splitlines()[-1]
    assert summary.startswith(f"fit {method}: layers ") and "de,sw (anchor en)" in summary and str(out) in summary
    lm = load_model(env["model"])
    iv = load_intervention(out, lm)
    assert iv.languages == ["de", "sw"] and iv.anchor == "en"
    if method == "clas":
        assert "CLAS neuron categories" in text and "bridge layers: " in text and "<- bridge" in text
        assert iv.params["beta"] == 0.4 and iv.layers == iv.params["bridge_layers"]
    if method == "diffmean":
        assert iv.params["normalize"] == "unit"
    if method == "incline":
        assert iv.params["ridge"] == 0.01

    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"method: {iv.method}" in shown and "tensors (" in shown and ("norm" in shown or " set" in shown)
    assert "LlamaForCausalLM" in shown and "anchor: en" in shown and "created: " in shown
    for name in iv.tensors:
        assert name in shown
    assert main(["inspect", "--json", str(out)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["format"] == "xlsteer.intervention" and meta["data_hash"] and meta["provenance"]["versions"]


def test_inspect_statistics_file_and_stats_cache_reuse(env, tmp_path, capsys):
    cache = tmp_path / "stats.safetensors"
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert _fit(env, "diffmean", a, "--layers", "1", "--stats-cache", str(cache)) == 0
    assert cache.is_file()
    assert _fit(env, "diffmean", b, "--layers", "1", "--stats-cache", str(cache)) == 0
    assert load_tensors(b)[1]["statistics_source"].startswith("cache ")
    assert torch.equal(load_tensors(a)[0]["vectors@1"], load_tensors(b)[0]["vectors@1"])
    capsys.readouterr()
    assert main(["inspect", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "xlsteer.statistics" in text and "statistics: 3 languages" in text and "en|resid_post@1|" in text


def test_generate_alpha_zero_equals_unsteered_and_anchor_is_not_steered(env, vec, capsys):
    prompts = ["die Katze ist", "the cat is", "paka ni"]
    capsys.readouterr()
    code = main(["generate", "--model", env["model"], "-i", str(vec), "--alpha", "0", "--lang", "de,en,sw",
                 "--max-new-tokens", "6", *prompts])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = _generations(text)
    assert [r[0] for r in rows] == ["de", "en", "sw"]
    assert rows[0][2] == rows[0][1] + " (identical)" and rows[2][2] == rows[2][1] + " (identical)"
    assert rows[1][2] == "(not steered: en is the anchor language)"

    # a strong alpha changes the steered rows, never the anchor row; the unsteered text is the same
    assert main(["generate", "--model", env["model"], "-i", str(vec), "--alpha", "50", "--lang", "de,en,sw",
                 "--max-new-tokens", "6", *prompts]) == 0
    strong = _generations(capsys.readouterr().out)
    assert [r[1] for r in strong] == [r[1] for r in rows]
    assert strong[1][2] == "(not steered: en is the anchor language)"
    assert "(identical)" not in strong[0][2]


def test_generate_auto_language_and_no_intervention(env, vec, capsys):
    capsys.readouterr()
    assert main(["generate", "--model", env["model"], "-i", str(vec), "--max-new-tokens", "3",
                 "the cat sat on the mat and the dog ran away"]) == 0
    text = capsys.readouterr().out
    assert "language en (identified among en, de, sw" in text and "not steered: en is the anchor" in text
    assert main(["generate", "--model", env["model"], "--max-new-tokens", "3", "--lang", "de", "Hallo"]) == 0
    text = capsys.readouterr().out
    assert "no intervention" in text and "steered:" not in text.replace("unsteered:", "")


# ---- bad inputs: one line on stderr, the right exit code, nothing written ----------------------


def _bad_file(env, vec, kind):
    tensors, meta = load_tensors(vec)
    path = env["root"] / f"bad-{kind}.safetensors"
    if kind == "truncated":
        path.write_bytes(vec.read_bytes()[: vec.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    else:
        from safetensors.torch import save_file

        t = tensors["vectors@1"].clone()
        t[0, 0] = float("nan") if kind == "nan" else float("inf")
        save_file({"vectors@1": t}, str(path), metadata={"xlsteer": json.dumps(meta)})
    return path


@pytest.mark.parametrize("kind", ["truncated", "garbage", "nan", "inf"])
def test_bad_intervention_files(env, vec, kind, capsys):
    path = _bad_file(env, vec, kind)
    capsys.readouterr()
    line = _error(capsys, main(["inspect", str(path)]), 1)
    assert ("NaN or Inf" in line) if kind in ("nan", "inf") else ("corrupted or truncated" in line)
    code = main(["generate", "--model", env["model"], "-i", str(path), "--lang", "de", "Hallo"])
    _error(capsys, code, 1)


def test_bad_generate_inputs(env, vec, tmp_path, capsys):
    before = sorted(p.name for p in env["root"].iterdir())
    capsys.readouterr()
    # an intervention fitted for another model
    line = _error(capsys, main(["generate", "--model", env["other"], "-i", str(vec), "--lang", "de", "Hallo"]), 1)
    assert "another model" in line
    # a language the intervention has no vector for
    line = _error(capsys, main(["generate", "--model", env["model"], "-i", str(vec), "--lang", "fr", "Bonjour"]), 2)
    assert "fr" in line and "no statistics" in line
    # alpha not a number, NaN, infinite
    for alpha in ("abc", "nan", "inf"):
        line = _error(capsys, main(["generate", "--model", env["model"], "-i", str(vec), "--alpha", alpha,
                                    "--lang", "de", "Hallo"]), 2)
        assert "--alpha" in line
    # alpha without an intervention; a missing file
    _error(capsys, main(["generate", "--model", env["model"], "--alpha", "1", "Hallo"]), 2)
    _error(capsys, main(["generate", "--model", env["model"], "-i", str(tmp_path / "nope.safetensors"), "x"]), 2)
    assert sorted(p.name for p in env["root"].iterdir()) == before


@pytest.mark.parametrize("case", ["unknown_method", "clas_one_language", "incline_no_ridge", "unknown_param",
                                  "param_type", "lang_not_in_corpus", "output_is_dir", "output_parent_is_file"])
def test_bad_fit_inputs(env, case, tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    args = {
        "unknown_method": ("nosuch", []),
        "clas_one_language": ("clas", ["--langs", "en"]),
        "incline_no_ridge": ("incline", ["-p", "ridge=0"]),
        "unknown_param": ("diffmean", ["-p", "nosuch=1"]),
        "param_type": ("clas", ["-p", "beta=high"]),
        "lang_not_in_corpus": ("diffmean", ["--langs", "zh"]),
        "output_is_dir": ("diffmean", []),
        "output_parent_is_file": ("diffmean", []),
    }[case]
    method, extra = args
    target = out
    if case == "output_is_dir":
        target = tmp_path
    elif case == "output_parent_is_file":
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "out.safetensors"
    langs = [] if "--langs" in extra else ["--langs", "de"]
    code = main(["fit", method, "--model", env["model"], *langs, "--data", env["corpus"], *extra, "-o", str(target)])
    expected = 1 if case == "lang_not_in_corpus" else 2
    line = _error(capsys, code, expected)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == (["file"] if case == "output_parent_is_file" else [])
    if case == "incline_no_ridge":
        assert "ridge=0.01" in line and "64" in line
    if case == "clas_one_language":
        assert "language" in line


# ---- the shipped model ------------------------------------------------------------------------


@pytest.mark.slow
def test_fit_then_generate_on_gemma(tmp_path, capsys):
    out = tmp_path / "de.safetensors"
    code = main(["fit", "diffmean", "--model", "gemma3-270m", "--langs", "de", "--limit", "20", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "fit diffmean: layers 9, site resid_post, languages de (anchor en), 20 texts from ntrex" in text
    code = main(["generate", "--model", "gemma3-270m", "-i", str(out), "--alpha", "8", "--lang", "de",
                 "--max-new-tokens", "12", "Die Hauptstadt von Deutschland ist", "Ich gehe heute"])
    text = capsys.readouterr().out
    assert code == 0, text
    rows = _generations(text)
    assert len(rows) == 2 and all(lang == "de" for lang, _, _ in rows)
    assert any(steered != unsteered and "(identical)" not in steered for _, unsteered, steered in rows), text
