"""A catalogue of bad inputs, through the CLI as a user calls it.

Every case must end with exit code 2 (usage) or 1 (runtime), exactly one non-empty line on
stderr (``error: ...``, never a traceback) that names the problem, and nothing (no result, no
temp file) in the output directory. Cases run in-process (``xlsteer.cli.main``) on tiny random
models saved to folders; two also run as real ``xlsteer`` processes to prove that no
traceback reaches the terminal. Out-of-memory is simulated by a forward that raises
``torch.OutOfMemoryError`` for batches larger than one row.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xlsteer.cli import main
from xlsteer.interventions.vector import SteeringVector, fit_diffmean, vector_key
from xlsteer.io import load_tensors
from xlsteer.models.loading import load_model
from xlsteer.models.sites import Site
from xlsteer.testing import tiny_model, tiny_tokenizer

EN = ["the cat sat on the mat", "it is raining today", "we went to the market", "the house is big",
      "my brother reads a book", "the sun is hot", "she drinks water", "the dog runs fast"]
DE = ["die Katze saß auf der Matte", "es regnet heute", "wir gingen zum Markt", "das Haus ist groß",
      "mein Bruder liest ein Buch", "die Sonne ist heiß", "sie trinkt Wasser", "der Hund läuft schnell"]
SW = ["paka alikaa kwenye mkeka", "leo kunanyesha mvua", "tulienda sokoni", "nyumba ni kubwa",
      "kaka yangu anasoma kitabu", "jua ni kali", "anakunywa maji", "mbwa anakimbia haraka"]

GPU = torch.cuda.is_available()
no_gpu = pytest.mark.skipif(GPU, reason="needs a machine without a CUDA GPU")


@pytest.fixture(scope="module", autouse=True)
def _setting(tmp_path_factory):
    """Quiet, an own cache dir, and one torch thread (tiny models; much faster on busy CPUs)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XLSTEER_QUIET", "1")
    mp.setenv("XLSTEER_CACHE_DIR", str(tmp_path_factory.mktemp("xlsteer_cache")))
    mp.delenv("XLSTEER_DEBUG", raising=False)  # a --debug run elsewhere leaves it set for the process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    mp.undo()


def _save(lm, folder: Path) -> str:
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


def _synthetic_data(root: Path, real: Path, name: str, rel: str, lines: list[str]) -> str:
    """A data dir holding SHA256SUMS, the xcopa zh reference file and one replaced file."""
    d = root / name
    (d / rel).parent.mkdir(parents=True)
    shutil.copy(real / "SHA256SUMS", d / "SHA256SUMS")
    zh = "xcopa/data/zh/val.zh.jsonl"
    if rel != zh:
        (d / zh).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real / zh, d / zh)
    (d / rel).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(d)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from safetensors.torch import save_file

    from xlsteer.stats import collect_statistics
    from xlsteer.data.paths import data_dir

    root = tmp_path_factory.mktemp("bad_inputs")
    e: dict[str, str] = {"root": str(root)}
    e["T"] = _save(tiny_model("llama"), root / "tiny")
    e["other"] = _save(tiny_model("qwen2"), root / "other")

    # a folder whose config names an architecture transformers does not know
    unk = root / "unknown_arch"
    shutil.copytree(e["T"], unk)
    cfg = json.loads((unk / "config.json").read_text())
    cfg.update(model_type="nosucharch", architectures=["NoSuchForCausalLM"])
    (unk / "config.json").write_text(json.dumps(cfg))
    e["unknown_arch"] = str(unk)
    # a model of a known family without any decoder layer
    import transformers as tf

    zero = tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=0, num_attention_heads=4,
        num_key_value_heads=2))
    zero.save_pretrained(root / "zero_layers")
    tiny_tokenizer(128).save_pretrained(root / "zero_layers")
    e["zero_layers"] = str(root / "zero_layers")

    # parallel text: good, empty, misaligned, not UTF-8
    for name, files in {
        "corpus": {"en": "\n".join(EN) + "\n", "de": "\n".join(DE) + "\n", "sw": "\n".join(SW) + "\n"},
        "empty": {"en": "", "de": ""},
        "misaligned": {"en": "a\nb\nc\n", "de": "a\nb\n"},
    }.items():
        (root / name).mkdir()
        for lang, text in files.items():
            (root / name / f"{lang}.txt").write_text(text, encoding="utf-8")
        e[name] = str(root / name)
    (root / "latin1").mkdir()
    (root / "latin1" / "en.txt").write_text("hello\nworld\n", encoding="utf-8")
    (root / "latin1" / "de.txt").write_bytes("Grüße\nWelt\n".encode("latin-1"))
    e["latin1"] = str(root / "latin1")

    # statistics and a DiffMean vector (layer 1) of the tiny model
    lm = load_model(e["T"])
    stats = collect_statistics(lm, langs=["en", "de", "sw"], sites=[Site(0, "resid_post"), Site(1, "resid_post")],
                               corpus=e["corpus"], limit=8)
    e["stats"] = str(stats.save(root / "stats.safetensors"))
    vec = fit_diffmean(stats, [1], ["de", "sw"], anchor="en", meta={"model_fingerprint": lm.fingerprint})
    e["vec"] = str(vec.save(root / "vec.safetensors"))
    tensors, meta = load_tensors(e["vec"])

    # broken artifacts
    nan = {k: v.clone() for k, v in tensors.items()}
    nan[vector_key(1)][0, 3] = float("nan")
    save_file(nan, str(root / "nan.safetensors"), metadata={"xlsteer": json.dumps(meta)})
    e["nan"] = str(root / "nan.safetensors")
    inf = {k: v.clone() for k, v in tensors.items()}
    inf[vector_key(1)][1, 0] = float("inf")
    save_file(inf, str(root / "inf.safetensors"), metadata={"xlsteer": json.dumps(meta)})
    e["inf"] = str(root / "inf.safetensors")
    raw = Path(e["vec"]).read_bytes()
    (root / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    e["truncated"] = str(root / "truncated.safetensors")
    (root / "garbage.safetensors").write_bytes(b"this is not a safetensors file")
    e["garbage"] = str(root / "garbage.safetensors")
    partial = {k: v for k, v in meta.items() if k not in ("languages", "anchor")}
    save_file(tensors, str(root / "missing_fields.safetensors"), metadata={"xlsteer": json.dumps(partial)})
    e["missing_fields"] = str(root / "missing_fields.safetensors")
    save_file(tensors, str(root / "no_metadata.safetensors"))
    e["no_metadata"] = str(root / "no_metadata.safetensors")
    # fitted for a width-32 model, without a fingerprint (only the width can tell)
    narrow = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): torch.ones(2, 32)},
                            params={"normalize": "none"}, languages=["de", "sw"], anchor="en")
    e["narrow"] = str(narrow.save(root / "narrow.safetensors"))
    (root / "broken.json").write_text('{"format": "xlsteer.results", "task": ', encoding="utf-8")
    e["broken_json"] = str(root / "broken.json")

    # data dirs with one malformed file each
    real = data_dir()
    sw_val = (real / "xcopa/data/sw/val.sw.jsonl").read_text(encoding="utf-8").splitlines()
    e["data_bad_json"] = _synthetic_data(root, real, "data_bad_json", "xcopa/data/sw/val.sw.jsonl",
                                         sw_val[:4] + ['{"premise": "Mtu alifungua bomba.", "choice1": '] + sw_val[5:])
    rec = json.loads(sw_val[2])
    del rec["choice2"]
    e["data_no_field"] = _synthetic_data(root, real, "data_no_field", "xcopa/data/sw/val.sw.jsonl",
                                         sw_val[:2] + [json.dumps(rec, ensure_ascii=False)] + sw_val[3:])
    xnli = (real / "xnli/dev-sw.tsv").read_text(encoding="utf-8").split("\n")
    xnli = [line[:-1] if line.endswith("\r") else line for line in xnli if line]
    e["data_bad_tsv"] = _synthetic_data(root, real, "data_bad_tsv", "xnli/dev-sw.tsv",
                                        [xnli[0].replace("\t", " ")] + xnli[1:])
    e["data_no_sums"] = e["corpus"]
    (root / "a_file").write_text("not a directory\n")
    e["a_file"] = str(root / "a_file")
    e.update(_malformed_files(root, e, tensors, meta))
    os.mkfifo(root / "fifo")
    e["fifo"] = str(root / "fifo")
    return e


def _nested(depth: int) -> object:
    doc: object = 1
    for _ in range(depth):
        doc = {"a": [doc]}
    return doc


def _malformed_files(root: Path, e: dict[str, str], tensors: dict, meta: dict) -> dict[str, str]:
    """Files of the right kind whose contents have the wrong types, shapes or encodings."""
    from safetensors.torch import save_file

    out: dict[str, str] = {}

    def intervention(name: str, **changes) -> None:
        save_file(tensors, str(root / f"{name}.safetensors"),
                  metadata={"xlsteer": json.dumps({**meta, **changes}, allow_nan=True)})
        out[name] = str(root / f"{name}.safetensors")

    intervention("iv_sites_number", sites=3)
    intervention("iv_params_list", params=[1, 2])
    intervention("iv_strength_text", strength="2")
    intervention("iv_languages_text", languages="de")
    intervention("iv_deep", params=_nested(300))
    intervention("iv_unknown_site", sites=["resid_mid@1"])
    intervention("iv_strength_nan", strength=float("nan"))

    st_tensors, st_meta = load_tensors(e["stats"])

    def statistics(name: str, tensors_: dict | None = None, **changes) -> None:
        save_file(tensors_ or st_tensors, str(root / f"{name}.safetensors"),
                  metadata={"xlsteer": json.dumps({**st_meta, **changes}, allow_nan=True)})
        out[name] = str(root / f"{name}.safetensors")

    statistics("st_widths_list", widths=[64])
    statistics("st_threshold_null", threshold=None)
    statistics("st_counts_text", counts={k: "many" for k in st_meta["counts"]})
    statistics("st_shape", {**st_tensors, "en|resid_post@0|tok_sum": torch.zeros(32, dtype=torch.float64)})

    results = {"format": "xlsteer.results", "task": "xcopa", "split": "test", "langs": ["sw"], "anchor": "en",
               "metrics": {"names": ["acc"], "main": "acc"}, "model": {"name": "tiny"}, "template": {"name": "xcopa"}}
    docs = {"res_missing_lang": {**results, "per_lang": {}}, "res_list": [1, 2],
            "res_type_swap": {**results, "per_lang": {"sw": 5}}, "res_deep": {**results, "per_lang": _nested(300)}}
    for name, doc in docs.items():
        (root / f"{name}.json").write_text(json.dumps(doc), encoding="utf-8")
        out[name] = str(root / f"{name}.json")
    (root / "categories_bad.json").write_text(json.dumps({"0": "x", "1": [1, 2]}), encoding="utf-8")
    out["categories_bad"] = str(root / "categories_bad.json")
    (root / "res_latin1.json").write_bytes(json.dumps({**results, "task": "é"}, ensure_ascii=False).encode("latin-1"))
    out["res_latin1"] = str(root / "res_latin1.json")

    truncated = root / "model_truncated"
    shutil.copytree(e["T"], truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    out["model_truncated"] = str(truncated)
    config_list = root / "model_config_list"
    shutil.copytree(e["T"], config_list)
    (config_list / "config.json").write_text("[1, 2]")
    out["model_config_list"] = str(config_list)
    return out


# id, command line ({placeholders} from env, {out}: an empty output dir), exit code, part of the message
CASES = [
    # models and architectures
    ("unknown_model", "sites nosuch-model", 1, "unknown model"),
    ("unknown_model_eval", "eval --model nosuch/model --task xcopa --langs sw --limit 2 -o {out}/r.json",
     1, "--allow-download"),
    ("unsupported_model_type", "sites {unknown_arch}", 1, "nosucharch"),
    ("langs_all_without_a_task", "collect --model {T} --langs all --data {corpus} -o {out}/s.safetensors",
     2, "--langs all needs a task"),
    ("no_decoder_layers", "sites {zero_layers}", 1, "0 layers"),
    ("no_decoder_layers_collect", "collect --model {zero_layers} --langs en,de --data {corpus} -o {out}/s.safetensors",
     1, "0 layers"),
    ("folder_without_config", "sites {corpus}", 1, "config.json"),
    ("model_path_is_a_file", "sites {vec}", 1, "is a file"),
    # layers and sites
    ("layer_out_of_range", "collect --model {T} --langs en,de --data {corpus} --layers 5 -o {out}/s.safetensors",
     2, "out of range"),
    ("negative_layer", "collect --model {T} --langs en,de --data {corpus} --layers -1 -o {out}/s.safetensors",
     2, "out of range"),
    ("unparsable_layers", "collect --model {T} --langs en,de --data {corpus} --layers x-y -o {out}/s.safetensors",
     2, "cannot parse layers"),
    ("sweep_layer_out_of_range", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {stats} "
     "--layers 7 -o {out}/r.json", 2, "out of range"),
    ("unknown_site", "collect --model {T} --langs en,de --data {corpus} --site resid_mid -o {out}/s.safetensors",
     2, "unknown site"),
    ("site_not_in_statistics", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {stats} "
     "--site mlp_act -o {out}/r.json", 2, "no site named mlp_act"),
    # languages
    ("unknown_language", "collect --model {T} --langs en,xx --data {corpus} -o {out}/s.safetensors",
     2, "unknown language code 'xx'"),
    ("ambiguous_language", "collect --model {T} --langs en,zh-TW --data {corpus} -o {out}/s.safetensors",
     2, "Traditional Chinese"),
    ("unknown_anchor", "eval --model {T} --task xcopa --langs sw --anchor qqq --limit 2 -o {out}/r.json",
     2, "unknown language code 'qqq'"),
    ("language_not_in_corpus", "collect --model {T} --langs en,fr --data {corpus} -o {out}/s.safetensors",
     1, "no file for language 'fr'"),
    ("language_not_in_task", "eval --model {T} --task xcopa --langs de --limit 2 -o {out}/r.json",
     2, "xcopa has no language 'de'"),
    ("language_without_vector", "eval --model {T} --task xcopa --langs zh --limit 2 --intervention {vec} "
     "-o {out}/r.json", 2, "no statistics for language(s) zh"),
    ("language_without_statistics", "sweep --model {T} --task xcopa --langs zh --limit 2 --stats {stats} "
     "-o {out}/r.json", 2, "lack language(s) zh"),
    # data
    ("empty_dataset", "collect --model {T} --langs en,de --data {empty} -o {out}/s.safetensors", 1, "empty"),
    ("misaligned_parallel_files", "collect --model {T} --langs en,de --data {misaligned} -o {out}/s.safetensors",
     1, "misaligned"),
    ("non_utf8_file", "collect --model {T} --langs en,de --data {latin1} -o {out}/s.safetensors", 1, "not UTF-8"),
    ("malformed_jsonl", "eval --model {T} --task xcopa --langs sw --limit 2 --split dev --data-dir {data_bad_json} "
     "-o {out}/r.json", 1, "malformed JSON"),
    ("malformed_tsv", "eval --model {T} --task xnli --langs sw --limit 2 --split dev --data-dir {data_bad_tsv} "
     "-o {out}/r.json", 1, "tab-separated"),
    ("item_lacks_template_field", "eval --model {T} --task xcopa --langs sw --limit 2 --split dev "
     "--data-dir {data_no_field} -o {out}/r.json", 1, "choice2"),
    ("unknown_corpus", "collect --model {T} --langs en,de --data /nonexistent/corpus -o {out}/s.safetensors",
     1, "unknown corpus"),
    ("data_dir_missing", "eval --model {T} --task xcopa --langs sw --limit 2 --data-dir /nonexistent/data "
     "-o {out}/r.json", 1, "not a directory"),
    ("data_dir_is_a_file", "eval --model {T} --task xcopa --langs sw --limit 2 --data-dir {a_file} -o {out}/r.json",
     1, "not a directory"),
    ("data_dir_without_checksums", "data check --data-dir {data_no_sums}", 1, "SHA256SUMS"),
    ("unknown_split", "eval --model {T} --task xcopa --langs sw --limit 2 --split train -o {out}/r.json",
     2, "no split 'train'"),
    # artifacts
    ("intervention_for_another_model", "eval --model {other} --task xcopa --langs sw --limit 2 "
     "--intervention {vec} -o {out}/r.json", 1, "another model"),
    ("statistics_for_another_model", "sweep --model {other} --task xcopa --langs sw --limit 2 --stats {stats} "
     "-o {out}/r.json", 1, "another model"),
    ("width_mismatch", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {narrow} -o {out}/r.json",
     1, "width 32"),
    ("width_mismatch_sweep", "sweep --model {T} --task xcopa --langs sw --limit 2 --intervention {narrow} "
     "-o {out}/r.json", 1, "width 32"),
    ("width_mismatch_analyze", "analyze --model {T} --langs en,de --data {corpus} --limit 4 --intervention {narrow} "
     "-o {out}/run", 1, "width 32"),
    ("width_mismatch_lm_eval", "lm-eval --model {T} --tasks xcopa_sw --limit 2 --intervention {narrow} "
     "-o {out}/r.json", 1, "width 32"),
    ("nan_in_vector", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {nan} -o {out}/r.json",
     1, "NaN or Inf"),
    ("inf_in_vector", "export gguf {inf} --lang de -o {out}/v.gguf", 1, "NaN or Inf"),
    ("truncated_safetensors", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {truncated} "
     "-o {out}/r.json", 1, "corrupted or truncated"),
    ("truncated_statistics", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {truncated} "
     "-o {out}/r.json", 1, "corrupted or truncated"),
    ("not_a_safetensors_file", "analyze --model {T} --langs en,de --data {corpus} --limit 4 --stats {garbage} "
     "-o {out}/run", 1, "corrupted or truncated"),
    ("metadata_missing_fields", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {missing_fields} "
     "-o {out}/r.json", 1, "languages, anchor"),
    ("no_xlsteer_metadata", "export gguf {no_metadata} -o {out}/v.gguf", 1, "no xlsteer metadata"),
    ("statistics_as_intervention", "export gguf {stats} -o {out}/v.gguf", 1, "missing metadata field"),
    ("malformed_results_json", "analyze --model {T} --langs en,de --data {corpus} --limit 4 --eval {broken_json} "
     "-o {out}/run", 1, "malformed JSON"),
    ("missing_intervention_file", "eval --model {T} --task xcopa --langs sw --limit 2 "
     "--intervention {out}/nope.safetensors -o {out}/r.json", 2, "does not exist"),
    # numbers and options
    ("alpha_not_a_number", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {vec} --alpha abc "
     "-o {out}/r.json", 2, "--alpha must be a number"),
    ("alpha_nan", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {vec} --alpha nan "
     "-o {out}/r.json", 2, "finite"),
    ("alphas_not_numbers", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {stats} --alphas 1,x "
     "-o {out}/r.json", 2, "--alphas must be a number"),
    ("alpha_without_intervention", "eval --model {T} --task xcopa --langs sw --limit 2 --alpha 2 -o {out}/r.json",
     2, "--alpha needs --intervention"),
    ("negative_batch_size", "collect --model {T} --langs en,de --data {corpus} --batch-size -1 -o {out}/s.safetensors",
     2, "--batch-size"),
    ("zero_batch_size", "eval --model {T} --task xcopa --langs sw --batch-size 0 -o {out}/r.json", 2, "--batch-size"),
    ("limit_zero", "eval --model {T} --task xcopa --langs sw --limit 0 -o {out}/r.json", 2, "--limit"),
    ("limit_zero_collect", "collect --model {T} --langs en,de --data {corpus} --limit 0 -o {out}/s.safetensors",
     2, "--limit"),
    ("limit_zero_lm_eval", "lm-eval --model {T} --tasks xcopa_sw --limit 0 -o {out}/r.json", 2, "--limit"),
    ("limit_not_a_number", "eval --model {T} --task xcopa --langs sw --limit many -o {out}/r.json", 2, "--limit"),
    ("max_length_too_small", "eval --model {T} --task xcopa --langs sw --limit 2 --max-length 1 -o {out}/r.json",
     2, "--max-length"),
    ("max_new_tokens_over_max_length", "eval --model {T} --task mgsm --langs sw --limit 2 --max-new-tokens 500 "
     "--max-length 64 -o {out}/r.json", 2, "below max_length"),
    ("shots_out_of_range", "eval --model {T} --task mgsm --langs sw --limit 2 --shots 20 -o {out}/r.json",
     2, "k must be an integer 0..8"),
    ("unknown_dtype", "collect --model {T} --langs en,de --data {corpus} --dtype float8 -o {out}/s.safetensors",
     2, "--dtype"),
    # outputs
    ("output_dir_not_writable", "eval --model {T} --task xcopa --langs sw --limit 2 -o {readonly}/r.json",
     2, "not writable"),
    ("output_parent_is_a_file", "eval --model {T} --task xcopa --langs sw --limit 2 -o {a_file}/r.json",
     2, "is a file, not a directory"),
    ("output_is_a_directory", "collect --model {T} --langs en,de --data {corpus} -o {out}", 2, "is a directory"),
    ("run_dir_is_a_file", "analyze --model {T} --langs en,de --data {corpus} -o {a_file}", 2, "is a file"),
    ("compare_output_is_a_file", "compare --model {T} --task xcopa --langs sw --limit 2 -o {a_file}", 2, "is a file"),
    ("demo_output_is_a_file", "demo --quick -o {a_file}", 2, "is a file"),
    ("report_dir_missing", "report {out}/no_such_run", 2, "does not exist"),
    # flags that exclude each other, unknown names
    ("method_and_intervention", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {vec} "
     "--method icl-en -o {out}/r.json", 2, "not both"),
    ("stats_and_intervention", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {stats} "
     "--intervention {vec} -o {out}/r.json", 2, "exactly one of"),
    ("device_and_device_map", "collect --model {T} --langs en,de --data {corpus} --device cuda --device-map auto "
     "-o {out}/s.safetensors", 2, "not both"),
    ("sweep_on_test_split", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {stats} --split test "
     "-o {out}/r.json", 2, "must not see test items"),
    ("calibrate_choice_task", "eval --model {T} --task xcopa --langs sw --limit 2 --calibrate -o {out}/r.json",
     2, "--calibrate"),
    ("unknown_task", "eval --model {T} --task nosuch --langs sw --limit 2 -o {out}/r.json", 2, "--task"),
    ("unknown_template", "eval --model {T} --task xnli --template nosuch --langs sw --limit 2 -o {out}/r.json",
     2, "unknown template"),
    ("template_for_another_task", "eval --model {T} --task xnli --template xcopa --langs sw --limit 2 "
     "-o {out}/r.json", 2, "is for task xcopa"),
    ("unknown_method", "compare --model {T} --task xcopa --langs sw --methods nosuch -o {out}/cmp", 2,
     "unknown method"),
    ("malformed_method_option", "compare --model {T} --task xcopa --langs sw --methods zero-shot -O nonsense "
     "-o {out}/cmp", 2, "METHOD.KEY=VALUE"),
    ("no_lm_eval_tasks", "lm-eval --model {T} -o {out}/r.json", 2, "no tasks"),
    pytest.param("unknown_lm_eval_task", "lm-eval --model {T} --tasks nosuch_task --limit 2 -o {out}/r.json", 2,
                 "unknown lm-eval task", marks=pytest.mark.slow, id="unknown_lm_eval_task"),
    ("export_needs_a_language", "export gguf {vec} -o {out}/v.gguf", 2, "choose one with --lang"),
    ("demo_unknown_language", "demo --quick --langs xx -o {out}/demo", 2, "unknown language code"),
    # devices
    pytest.param("gpu_without_gpu", "collect --model {T} --langs en,de --data {corpus} --device cuda "
                 "-o {out}/s.safetensors", 2, "no CUDA GPU", marks=no_gpu, id="gpu_without_gpu"),
    pytest.param("gpu_without_gpu_eval", "eval --model {T} --task xcopa --langs sw --limit 2 --device cuda:1 "
                 "-o {out}/r.json", 2, "CUDA GPU", marks=no_gpu, id="gpu_without_gpu_eval"),
    ("unknown_device", "eval --model {T} --task xcopa --langs sw --limit 2 --device tpu -o {out}/r.json",
     2, "unknown device"),
]

# the method commands (fit, generate, inspect)
CASES += [pytest.param(*case, id=case[0]) for case in [
    ("fit_without_target_language", "fit diffmean --model {T} --langs en --data {corpus} -o {out}/v.safetensors",
     2, "no target languages"),
    ("fit_layer_out_of_range", "fit diffmean --model {T} --langs de --data {corpus} --layers 9 -o {out}/v.safetensors",
     2, "out of range"),
    ("fit_misaligned", "fit diffmean --model {T} --langs de --data {misaligned} -o {out}/v.safetensors",
     1, "misaligned"),
    ("fit_unknown_param", "fit diffmean --model {T} --langs de --data {corpus} -p nosuch=1 -o {out}/v.safetensors",
     2, "no parameter 'nosuch'"),
    ("inspect_truncated", "inspect {truncated}", 1, "corrupted or truncated"),
    ("inspect_nan", "inspect {nan}", 1, "NaN or Inf"),
    ("inspect_missing_fields", "inspect {missing_fields}", 1, "languages, anchor"),
    ("generate_for_another_model", "generate --model {other} -i {vec} --lang de Hallo", 1, "another model"),
    ("generate_width_mismatch", "generate --model {T} -i {narrow} --lang de Hallo", 1, "width 32"),
    ("generate_language_without_vector", "generate --model {T} -i {vec} --lang fr Bonjour", 2, "no statistics"),
    ("generate_alpha_not_a_number", "generate --model {T} -i {vec} --alpha x --lang de Hallo", 2, "--alpha"),
]]


# round two: readers of every file kind, values at the edges, faults
CASES += [
    # intervention metadata of the wrong JSON types
    ("iv_sites_as_a_number", "inspect {iv_sites_number}", 1, "'sites' must be a list"),
    ("iv_params_as_a_list", "export gguf {iv_params_list} --lang de -o {out}/v.gguf", 1, "'params' must be an object"),
    ("iv_strength_as_text", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {iv_strength_text} "
     "-o {out}/r.json", 1, "'strength' must be a finite number"),
    ("iv_strength_nan", "inspect {iv_strength_nan}", 1, "'strength' must be a finite number"),
    ("iv_deeply_nested_metadata", "inspect {iv_deep}", 1, "nested deeper"),
    ("iv_unknown_site_name", "eval --model {T} --task xcopa --langs sw --limit 2 --intervention {iv_unknown_site} "
     "-o {out}/r.json", 1, "unknown site"),
    # statistics metadata and tensors
    ("stats_widths_as_a_list", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {st_widths_list} "
     "-o {out}/r.json", 1, "'widths' must be"),
    ("stats_threshold_null", "inspect {st_threshold_null}", 1, "'threshold' must be a finite number"),
    ("stats_counts_as_text", "analyze --model {T} --langs en,de --data {corpus} --limit 4 --stats {st_counts_text} "
     "-o {out}/run", 1, "'counts' must be"),
    ("stats_tensor_of_another_width", "inspect {st_shape}", 1, "is not a (64,) vector"),
    # results files read by xlsteer table
    ("table_lacks_a_language", "table {res_missing_lang}", 1, "does not match the xlsteer.eval schema"),
    ("table_of_a_list", "table {res_list}", 1, "not a JSON object"),
    ("table_value_of_another_type", "table {res_type_swap}", 1, "does not match the xlsteer.eval schema"),
    ("table_deeply_nested", "table {res_deep}", 1, "nests JSON deeper"),
    ("table_not_utf8", "table {res_latin1}", 1, "not UTF-8"),
    ("categories_malformed", "analyze --model {T} --langs en,de --data {corpus} --limit 4 "
     "--categories {categories_bad} -o {out}/run", 1, "categories file"),
    # model folders
    ("truncated_model_weights", "sites {model_truncated}", 1, "corrupted or truncated"),
    ("truncated_model_weights_collect", "collect --model {model_truncated} --langs en,de --data {corpus} "
     "-o {out}/s.safetensors", 1, "corrupted or truncated"),
    ("model_config_not_an_object", "sites {model_config_list}", 1, "cannot load"),
    # numbers at the edges, refused when parsed
    ("seed_negative", "eval --model {T} --task xcopa --langs sw --limit 2 --seed -1 -o {out}/r.json", 2, "--seed"),
    ("seed_negative_analyze", "analyze --model {T} --langs en,de --data {corpus} --limit 4 --seed -1 -o {out}/run",
     2, "--seed"),
    ("seed_negative_compare", "compare --model {T} --task xcopa --langs sw --limit 2 --seed -3 -o {out}/cmp",
     2, "--seed"),
    ("seed_too_large_lm_eval", "lm-eval --model {T} --tasks xcopa_sw --limit 2 --seed 99999999999 -o {out}/r.json",
     2, "--seed"),
    ("threshold_nan", "collect --model {T} --langs en,de --data {corpus} --threshold nan -o {out}/s.safetensors",
     2, "finite"),
    ("threshold_infinite", "collect --model {T} --langs en,de --data {corpus} --threshold -inf "
     "-o {out}/s.safetensors", 2, "finite"),
    ("max_length_overflows", "collect --model {T} --langs en,de --data {corpus} --max-length 99999999999999999999 "
     "-o {out}/s.safetensors", 2, "--max-length"),
    ("batch_size_overflows", "eval --model {T} --task xcopa --langs sw --limit 2 --batch-size 99999999999999999999 "
     "-o {out}/r.json", 2, "--batch-size"),
    ("limit_overflows", "eval --model {T} --task xcopa --langs sw --limit 99999999999999999999999 -o {out}/r.json",
     2, "--limit"),
    ("limit_infinite_lm_eval", "lm-eval --model {T} --tasks xcopa_sw --limit inf -o {out}/r.json", 2, "--limit"),
    ("num_fewshot_overflows", "lm-eval --model {T} --tasks xcopa_sw --limit 2 --num-fewshot 99999999999 "
     "-o {out}/r.json", 2, "--num-fewshot"),
    ("max_new_tokens_negative", "eval --model {T} --task mgsm --langs sw --limit 1 --max-new-tokens -3 "
     "-o {out}/r.json", 2, "--max-new-tokens"),
    ("report_alpha_nan", "report {out} --alpha nan", 2, "--alpha"),
    ("alpha_overflows_the_model", "eval --model {T} --task xcopa --langs sw --limit 2 --no-cache --intervention {vec} "
     "--alpha 1e308 -o {out}/r.json", 1, "non-finite"),
    ("table_output_is_a_pipe", "table {res_missing_lang} -o {fifo}", 2, "not a regular file"),
    ("output_is_a_pipe", "export gguf {vec} --lang de -o {fifo}", 2, "not a regular file"),
    # faults of the per-item cache folder, before any work
    ("cache_dir_is_a_file", "eval --model {T} --task xcopa --langs sw --limit 2 --cache-dir {a_file} -o {out}/r.json",
     2, "is a file"),
    ("cache_dir_under_a_file", "eval --model {T} --task xcopa --langs sw --limit 2 --cache-dir {a_file}/sub "
     "-o {out}/r.json", 2, "--cache-dir"),
    ("cache_dir_not_writable", "sweep --model {T} --task xcopa --langs sw --limit 2 --stats {stats} "
     "--cache-dir {readonly}/cache -o {out}/r.json", 2, "--cache-dir"),
]
CASES += [pytest.param(*case, id=case[0]) for case in [
    ("generate_languages_as_text", "generate --model {T} -i {iv_languages_text} --lang de Hallo", 1,
     "'languages' must be a list"),
    ("generate_max_new_tokens_overflows", "generate --model {T} --max-new-tokens 99999999999 Hallo", 2,
     "--max-new-tokens"),
    ("param_negative_ridge", "fit incline --model {T} --langs de --data {corpus} -p ridge=-1 -o {out}/v.safetensors",
     2, "out of range"),
    ("param_nested_infinity", "fit diffmean --model {T} --langs de --data {corpus} -p 'ref_norm={{\"1\": 1e999}}' "
     "-o {out}/v.safetensors", 2, "finite"),
    ("param_integer_overflow", "fit clas --model {T} --langs de,sw --data {corpus} -p k=99999999999999999999 "
     "-o {out}/v.safetensors", 2, "out of range"),
    ("param_fraction_out_of_range", "fit lape --model {T} --langs de,sw --data {corpus} -p top_fraction=2 "
     "-o {out}/v.safetensors", 2, "out of range"),
]]


def _ids(case) -> str:
    return case[0] if isinstance(case, tuple) else case.id


def _one_error_line(capsys, code: int, expected: int) -> str:
    cap = capsys.readouterr()
    assert code == expected, f"exit code {code}, expected {expected}\nstderr: {cap.err}\nstdout: {cap.out}"
    lines = [line for line in cap.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{cap.err}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in cap.err and "Traceback" not in cap.out
    return lines[0]


def _readonly_dir(tmp_path: Path) -> str:
    """A directory the user cannot write to. Root writes through chmod, so then use /proc."""
    if os.geteuid() == 0:
        return "/proc/xlsteer-test-readonly"
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    return str(d)


def test_catalogue_is_large_enough():
    ids = {_ids(c) for c in CASES}
    assert len(ids) == len(CASES) and len(ids) >= 25


@pytest.mark.parametrize("case_id, command, expected, message", CASES, ids=[_ids(c) for c in CASES])
def test_bad_input(env, case_id, command, expected, message, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    values = dict(env, out=str(out), readonly=_readonly_dir(tmp_path) if "{readonly}" in command else "")
    argv = [part.format(**values) for part in shlex.split(command)]
    capsys.readouterr()
    line = _one_error_line(capsys, main(argv), expected)
    assert message.lower() in line.lower(), line
    assert len(line) < 600, "one short line"
    assert sorted(os.listdir(out)) == [], "nothing (no result, no temp file) is left in the output directory"
    assert not any(n.startswith(".") and n.endswith(".tmp") for n in os.listdir(env["root"]))


def test_debug_shows_the_traceback(env, tmp_path, monkeypatch):
    """--debug is the way to see where an error came from: the exception propagates."""
    from xlsteer.errors import ArtifactError

    monkeypatch.setenv("XLSTEER_DEBUG", "0")  # --debug sets it to 1 for the process; removed again afterwards
    with pytest.raises(ArtifactError, match="corrupted or truncated"):
        main(["--debug", "eval", "--model", env["T"], "--task", "xcopa", "--langs", "sw", "--limit", "2",
              "--intervention", env["truncated"], "-o", str(tmp_path / "r.json")])


# ---- out of memory ----------------------------------------------------------------------------


def _oom_forward(monkeypatch, max_rows: int) -> list[int]:
    """Make the tiny Llama raise torch.OutOfMemoryError for batches of more than ``max_rows`` rows."""
    from transformers.models.llama.modeling_llama import LlamaForCausalLM

    original = LlamaForCausalLM.forward
    refused: list[int] = []

    def forward(self, input_ids=None, *args, **kwargs):
        if input_ids is not None and input_ids.shape[0] > max_rows:
            refused.append(int(input_ids.shape[0]))
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 20.00 GiB (simulated for {input_ids.shape[0]} rows)")
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", forward)
    return refused


def _eval_argv(env, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", env["T"], "--task", "xnli", "--langs", "sw,de", "--split", "dev", "--limit", "6",
            "--no-cache", *extra, "-o", str(out)]


def test_out_of_memory_halves_the_batch_and_finishes(env, tmp_path, capsys, monkeypatch):
    reference = tmp_path / "ref" / "r.json"
    assert main(_eval_argv(env, reference, "--batch-size", "1")) == 0
    refused = _oom_forward(monkeypatch, max_rows=1)
    out = tmp_path / "oom" / "r.json"
    capsys.readouterr()
    assert main(_eval_argv(env, out, "--batch-size", "4")) == 0, capsys.readouterr().err
    assert refused and refused[0] == 4 and 2 in refused, refused  # 4 rows failed, then 2, then it ran one by one
    assert out.read_bytes() == reference.read_bytes()


def test_out_of_memory_at_batch_size_one_is_one_clear_line(env, tmp_path, capsys, monkeypatch):
    _oom_forward(monkeypatch, max_rows=0)
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    line = _one_error_line(capsys, main(_eval_argv(env, out / "r.json", "--batch-size", "4")), 1)
    assert "out of memory even with batch size 1" in line and "--max-length" in line
    assert os.listdir(out) == []


def test_out_of_memory_outside_the_engine_is_one_line(env, tmp_path, capsys, monkeypatch):
    _oom_forward(monkeypatch, max_rows=0)
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["collect", "--model", env["T"], "--langs", "en,de", "--data", env["corpus"],
                 "-o", str(out / "s.safetensors")])
    line = _one_error_line(capsys, code, 1)
    assert "out of memory" in line and "--batch-size" in line
    assert os.listdir(out) == []


# ---- stale temp files -------------------------------------------------------------------------


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(env, tmp_path, capsys):
    out = tmp_path / "r.json"
    dead = tmp_path / f".{out.name}.999999999.abcd1234.tmp"  # pid far above any pid_max: not running
    alive = tmp_path / f".{out.name}.{os.getppid()}.abcd1234.tmp"  # a running process: left alone
    dead.write_text("half a file")
    alive.write_text("being written")
    assert main(["eval", "--model", env["T"], "--task", "xcopa", "--langs", "sw", "--limit", "2", "--no-cache",
                 "-o", str(out)]) == 0
    assert out.is_file() and not dead.exists() and alive.exists()
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask(), "results get the usual permissions, not 0600"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- real processes: nothing but one line reaches the terminal ---------------------------------


def _xlsteer() -> list[str]:
    script = Path(sys.executable).parent / "xlsteer"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "xlsteer"]


@pytest.mark.parametrize("case", ["usage", "runtime"])
def test_real_process_prints_one_line(env, case, tmp_path):
    if case == "usage":  # refused by the option parser
        args = ["eval", "--model", env["T"], "--task", "nosuch", "--langs", "sw", "-o", str(tmp_path / "r.json")]
        expected = 2
    else:  # raised deep inside the library (safetensors parsing)
        args = ["eval", "--model", env["T"], "--task", "xcopa", "--langs", "sw", "--limit", "2",
                "--intervention", env["truncated"], "-o", str(tmp_path / "r.json")]
        expected = 1
    proc_env = dict(os.environ, XLSTEER_QUIET="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc_env.pop("XLSTEER_DEBUG", None)
    proc = subprocess.run(_xlsteer() + args, capture_output=True, text=True, env=proc_env, timeout=300)
    assert proc.returncode == expected, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert os.listdir(tmp_path) == []


# ---- no command may destroy its input -----------------------------------------------------------

# id, setup (links and copies inside the work folder), command ({w}: the work folder holding copies of
# vec, stats, r.json, the corpus, the model and a data dir), part of the message
COLLISIONS = [
    ("export_over_its_input", "", "export gguf {w}/vec.safetensors --lang de -o {w}/vec.safetensors", "input file"),
    ("eval_over_its_intervention", "", "eval --model {w}/model --task xcopa --langs sw --limit 2 "
     "--intervention {w}/vec.safetensors -o {w}/vec.safetensors", "input file"),
    ("sweep_over_its_statistics", "", "sweep --model {w}/model --task xcopa --langs sw --limit 2 "
     "--stats {w}/stats.safetensors -o {w}/stats.safetensors", "input file"),
    ("sweep_best_file_over_its_intervention", "copy vec.safetensors r.best.safetensors",
     "sweep --model {w}/model --task xcopa --langs sw --limit 2 --intervention {w}/r.best.safetensors "
     "-o {w}/r.json", "input file"),
    ("table_over_its_input", "", "table {w}/r.json -o {w}/r.json", "input file"),
    ("lm_eval_over_its_intervention", "", "lm-eval --model {w}/model --tasks xcopa_sw --limit 2 "
     "--intervention {w}/vec.safetensors -o {w}/vec.safetensors", "input file"),
    ("report_over_a_results_file", "copy r.json run/r.json", "report {w}/run -o {w}/run/r.json", "input file"),
    ("report_over_a_figure", "copy r.json run/figures/a.png", "report {w}/run -o {w}/run/figures/a.png", "input file"),
    ("analyze_over_its_eval_file", "copy r.json run/analysis_similarity_de.json",
     "analyze --model {w}/model --langs en,de --data {w}/corpus --limit 4 "
     "--eval {w}/run/analysis_similarity_de.json -o {w}/run", "input file"),
    ("collect_over_its_corpus", "", "collect --model {w}/model --langs en,de --data {w}/corpus "
     "-o {w}/corpus/de.txt", "input directory"),
    ("collect_over_the_model_weights", "", "collect --model {w}/model --langs en,de --data {w}/corpus "
     "-o {w}/model/model.safetensors", "input directory"),
    ("fit_over_its_corpus", "", "fit diffmean --model {w}/model --langs de --data {w}/corpus -o {w}/corpus/en.txt",
     "input directory"),
    ("fit_stats_cache_over_its_corpus", "", "fit diffmean --model {w}/model --langs de --data {w}/corpus "
     "--stats-cache {w}/corpus/de.txt -o {w}/v.safetensors", "input directory"),
    ("eval_into_the_data_dir", "", "eval --model {w}/model --task xcopa --langs sw --limit 2 --split dev "
     "--data-dir {w}/data -o {w}/data/xcopa/data/sw/val.sw.jsonl", "input directory"),
    ("demo_over_the_data_dir", "", "demo --quick --data-dir {w}/data -o {w}/data", "input directory"),
    ("symlink_to_the_input", "symlink vec.safetensors link.json", "eval --model {w}/model --task xcopa --langs sw "
     "--limit 2 --intervention {w}/vec.safetensors -o {w}/link.json", "input file"),
    ("hard_link_to_the_input", "hardlink vec.safetensors hard.json", "eval --model {w}/model --task xcopa --langs sw "
     "--limit 2 --intervention {w}/vec.safetensors -o {w}/hard.json", "input file"),
    ("hard_link_into_the_model_folder", "hardlink model/config.json cfg.json", "collect --model {w}/model "
     "--langs en,de --data {w}/corpus -o {w}/cfg.json", "hard link"),
    ("dotdot_to_the_input", "", "export gguf {w}/vec.safetensors --lang de -o {w}/corpus/../vec.safetensors",
     "input file"),
    ("symlinked_input_named_by_its_target", "symlink vec.safetensors alias.safetensors",
     "export gguf {w}/alias.safetensors --lang de -o {w}/vec.safetensors", "input file"),
]


def _work_folder(env, w: Path, setup: str) -> None:
    shutil.copy(env["vec"], w / "vec.safetensors")
    shutil.copy(env["stats"], w / "stats.safetensors")
    (w / "r.json").write_text('{"format": "xlsteer.results"}\n', encoding="utf-8")
    shutil.copytree(env["corpus"], w / "corpus")
    shutil.copytree(env["T"], w / "model")
    shutil.copytree(env["data_no_field"], w / "data")
    if setup:
        how, src, dst = setup.split()
        (w / dst).parent.mkdir(parents=True, exist_ok=True)
        {"copy": shutil.copy, "symlink": lambda a, b: os.symlink(a, b), "hardlink": os.link}[how](w / src, w / dst)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case_id, setup, command, message", COLLISIONS, ids=[c[0] for c in COLLISIONS])
def test_no_command_overwrites_its_input(env, case_id, setup, command, message, tmp_path, capsys):
    w = tmp_path / "work"
    w.mkdir()
    _work_folder(env, w, setup)
    before = _snapshot(w)
    argv = [part.format(w=w) for part in shlex.split(command)]
    capsys.readouterr()
    line = _one_error_line(capsys, main(argv), 2)
    assert message in line and ("destroy" in line or "replace" in line), line
    assert _snapshot(w) == before, "every input is unchanged and nothing was written"


# ---- the per-item cache: a poisoned line is skipped and recomputed ------------------------------


def test_poisoned_cache_lines_are_recomputed_with_one_warning(env, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["eval", "--model", env["T"], "--task", "xcopa", "--langs", "sw", "--limit", "4", "--cache-dir", str(cache)]
    assert main([*args, "-o", str(tmp_path / "first.json")]) == 0
    (store,) = cache.glob("*.jsonl")
    lines = store.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    items = [i for i, r in enumerate(records) if "k" in r]
    assert len(items) == 4
    poison = [{"k": records[items[0]]["k"], "v": "not a score"},  # a value of another type
              {"k": records[items[1]]["k"], "v": [[float("nan"), 1, 1, True]] * 2},  # NaN
              {"k": records[items[2]]["k"], "v": [[-1.0, 1, 1, True]]}]  # one continuation instead of two
    for i, rec in zip(items, poison):
        lines[i] = json.dumps(rec)
    store.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "second.json")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: 3 malformed line(s) of the evaluation cache"), err
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    # computed again: the same answers (scores differ at float rounding: the 3 items form another batch)
    assert first["per_lang"]["sw"]["metrics"] == second["per_lang"]["sw"]["metrics"]
    margin = [first["per_lang"]["sw"]["continuous"]["margin"], second["per_lang"]["sw"]["continuous"]["margin"]]
    assert margin[1] == pytest.approx(margin[0], rel=1e-4, abs=1e-4)


# ---- faults while writing: one line, nothing left ------------------------------------------------


def test_full_disk_while_saving_tensors(env, tmp_path, capsys, monkeypatch):
    import safetensors
    import safetensors.torch

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["collect", "--model", env["T"], "--langs", "en,de", "--data", env["corpus"], "--limit", "2",
                 "-o", str(out / "s.safetensors")])
    assert "disk" in _one_error_line(capsys, code, 1)
    assert os.listdir(out) == []


def test_full_disk_while_exporting_leaves_nothing(env, tmp_path, capsys, monkeypatch):
    import errno

    import gguf

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    capsys.readouterr()
    code = main(["export", "gguf", env["vec"], "--lang", "de", "-o", str(tmp_path / "v.gguf")])
    assert "No space left" in _one_error_line(capsys, code, 1)
    assert os.listdir(tmp_path) == []


def test_full_disk_while_appending_to_the_cache(env, tmp_path, capsys, monkeypatch):
    import errno

    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["eval", "--model", env["T"], "--task", "xcopa", "--langs", "sw", "--limit", "2",
                 "--cache-dir", str(tmp_path / "cache"), "-o", str(out / "r.json")])
    line = _one_error_line(capsys, code, 1)
    assert "evaluation cache" in line and "--no-cache" in line
    assert os.listdir(out) == []


@pytest.mark.slow  # lm-eval indexes its task configs (seconds)
def test_lm_eval_task_config_naming_a_missing_data_file(env, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    assert main(["lm-eval", "--write-tasks", str(tasks)]) == 0
    config = (tasks / "xcopa_sw.yaml").read_text(encoding="utf-8")
    test_file = next(line.split(": ", 1)[1] for line in config.splitlines() if line.strip().startswith("test:"))
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(tasks / "utils.py", mine / "utils.py")
    (mine / "mytask_sw.yaml").write_text(config.replace("task: xcopa_sw", "task: mytask_sw")
                                         .replace(test_file, str(tmp_path / "missing.jsonl")), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["lm-eval", "--model", env["T"], "--tasks", "mytask_sw", "--include-path", str(mine), "--limit", "2",
                 "-o", str(out / "r.json")])
    assert "missing.jsonl" in _one_error_line(capsys, code, 1)
    assert os.listdir(out) == []


# ---- Ctrl-C and SIGTERM ---------------------------------------------------------------------------


def test_a_signal_during_an_import_is_delivered_after_it(tmp_path, monkeypatch):
    """An interrupted import leaves a broken module (numpy then recurses forever): hold the signal back."""
    import importlib
    import signal

    from xlsteer import signals

    (tmp_path / "slow_module_xl.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.1)\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    previous = signals.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            module = importlib.import_module("slow_module_xl")
            assert module.DONE  # the import finished ...
            for _ in range(100):  # ... and the interrupt arrives right after it
                __import__("time").sleep(0.01)
        assert sys.modules["slow_module_xl"].DONE
    finally:
        signals.restore(previous)
        sys.modules.pop("slow_module_xl", None)
    assert signal.getsignal(signal.SIGINT) is previous[signal.SIGINT]


@pytest.mark.parametrize("signame, when, code, word", [
    ("SIGINT", "start-up", 130, "interrupted"), ("SIGTERM", "start-up", 143, "terminated"),  # imports
    ("SIGINT", "mid-run", 130, "interrupted"), ("SIGTERM", "mid-run", 143, "terminated"),  # between batches
])
def test_real_process_interrupted_prints_one_line(env, tmp_path, signame, when, code, word):
    import signal
    import time

    proc_env = dict(os.environ, XLSTEER_QUIET="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc_env.pop("XLSTEER_DEBUG", None)
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "xlsteer", "eval", "--model", env["T"], "--task", "xnli",
                             "--langs", "sw,de", "--split", "dev", "--limit", "2000", "--batch-size", "4",
                             "--cache-dir", str(cache), "-o", str(out / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=proc_env)
    if when == "start-up":
        time.sleep(0.3)
    else:  # the model is loaded and batches are being scored: the cache has its first lines
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and \
                sum(p.stat().st_size for p in cache.glob("*.jsonl")) < 2000:
            time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    stdout, stderr = proc.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == code, stderr
    assert lines == [f"error: {word}"], stderr
    assert os.listdir(out) == []
