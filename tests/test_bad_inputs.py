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

    from xlsteer.api import collect_statistics
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
    return e


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

# the method commands (fit, generate, inspect), when that module is there
try:
    import xlsteer.cli.methods  # noqa: F401

    HAVE_METHODS = True
except ModuleNotFoundError:
    HAVE_METHODS = False
needs_methods = pytest.mark.skipif(not HAVE_METHODS, reason="xlsteer fit/generate/inspect not built yet")
CASES += [pytest.param(*case, marks=needs_methods, id=case[0]) for case in [
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
