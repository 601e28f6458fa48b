"""The lm-eval adapter (model "xlsteer"): registry, scores equal to the engine's, lm-eval's and a
hand computation, XCOPA through the local (offline) task configs equal to xlsteer's own
``evaluate``, steering routed per row by the task's language, and the ``xlsteer lm-eval`` CLI
on the shipped Gemma-3-270M (slow)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from xlsteer.errors import LanguageError, UsageError  # noqa: E402
from xlsteer.evaluation.engine import Engine  # noqa: E402
from xlsteer.lmeval.harness import task_manager  # noqa: E402
from xlsteer.lmeval.languages import task_language  # noqa: E402
from xlsteer.lmeval.model import XlsteerLM  # noqa: E402
from xlsteer.lmeval.xcopa import write_xcopa_tasks  # noqa: E402
from xlsteer.evaluation.runner import run_task  # noqa: E402
from xlsteer.interventions.vector import SteeringVector, vector_key  # noqa: E402
from xlsteer.models.loading import load_model  # noqa: E402
from xlsteer.models.sites import Site  # noqa: E402
from xlsteer.testing import tiny_model  # noqa: E402

LANGS = ["en", "sw"]
TASKS = [f"xcopa_{lang}" for lang in LANGS]
LIMIT = 8
ATOL = 1e-5
#: float32 sums of ~100 log-probs carry ~1e-7 relative error each, so large sums need a relative bound too
RTOL = 2e-7


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Width-64 models gain nothing from intra-op threads; on a busy machine the threads only wait
    for each other (10-100x slower matmuls). Restored after each test."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny random llama saved as a local model folder (what pretrained=... points at)."""
    lm = tiny_model("llama")
    d = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(str(d))
    lm.tokenizer.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def lm(folder):
    return load_model(str(folder))


@pytest.fixture(scope="module")
def intervention(tmp_path_factory, lm) -> Path:
    """A steering vector for sw only (anchor en), made for this model."""
    g = torch.Generator().manual_seed(7)
    iv = SteeringVector(sites=[Site(1, "resid_post")], tensors={vector_key(1): 4 * torch.randn(1, lm.hidden_size, generator=g)},
                        params={"normalize": "none"}, languages=["sw"], anchor="en", strength=1.0,
                        meta={"model_fingerprint": lm.fingerprint})
    return iv.save(tmp_path_factory.mktemp("iv") / "sw.safetensors")


@pytest.fixture(scope="module")
def tm(tmp_path_factory):
    """lm-eval's TaskManager over the local XCOPA configs (read from the data dir in place)."""
    d = tmp_path_factory.mktemp("xcopa-tasks")
    assert write_xcopa_tasks(d, langs=LANGS) == TASKS
    return task_manager(TASKS, override_dir=d)


class _NoNetwork:
    """Every socket connection attempt inside the block fails, and is recorded."""

    def __init__(self):
        self.attempts: list[str] = []
        self.mp = pytest.MonkeyPatch()

    def _refuse(self, *args, **kwargs):
        self.attempts.append(repr(args[1:] if args else kwargs))
        raise OSError("network access attempted in an offline test")

    def __enter__(self):
        self.mp.setattr(socket.socket, "connect", self._refuse)
        self.mp.setattr(socket.socket, "connect_ex", self._refuse)
        self.mp.setattr(socket, "create_connection", self._refuse)
        return self

    def __exit__(self, *exc):
        self.mp.undo()


def _run(tm, model_args: str) -> dict:
    """What ``lm_eval --model xlsteer --model_args ... --tasks xcopa_en,xcopa_sw --limit 8`` does."""
    return lm_eval.simple_evaluate(model="xlsteer", model_args=model_args, tasks=TASKS, limit=LIMIT,
                                   task_manager=tm, log_samples=True, bootstrap_iters=0)


@pytest.fixture(scope="module")
def plain(tm, folder):
    with _NoNetwork() as net:
        res = _run(tm, f"pretrained={folder},batch_size=8")
    return res, net.attempts


@pytest.fixture(scope="module")
def steered(tm, folder, intervention):
    return {alpha: _run(tm, f"pretrained={folder},intervention={intervention},alpha={alpha}") for alpha in (0, 2)}


def _items(res: dict, task: str) -> dict[int, dict]:
    """idx -> {logprobs, acc} from lm-eval's per-sample log."""
    return {s["doc"]["idx"]: {"logprobs": [r[0] for r in s["filtered_resps"]], "acc": s["acc"]}
            for s in res["samples"][task]}


def _ours(result: dict, lang: str) -> dict[int, dict]:
    return {int(r["id"].rsplit("/", 1)[1]): {"logprobs": r["logprobs"], "acc": float(r["correct"])}
            for r in result["items"] if r["lang"] == lang}


def _assert_same_items(res: dict, result: dict) -> None:
    for lang, task in zip(LANGS, TASKS):
        theirs, ours = _items(res, task), _ours(result, lang)
        assert sorted(theirs) == sorted(ours) and len(ours) == LIMIT  # the same items (first 8 by idx)
        for idx in ours:
            assert theirs[idx]["acc"] == ours[idx]["acc"], (task, idx)
            assert theirs[idx]["logprobs"] == pytest.approx(ours[idx]["logprobs"], abs=ATOL, rel=RTOL), (task, idx)
        assert res["results"][task]["acc,none"] == result["per_lang"][lang]["metrics"]["acc"]["mean"]


# ---- (a) the registry -----------------------------------------------------------------------


def test_registered_name_resolves_through_lm_evals_registry():
    from lm_eval.api.registry import get_model

    assert get_model("xlsteer") is XlsteerLM
    assert get_model("hf").__name__ == "HFLM"  # lm-eval's own lazy table is still there


@pytest.mark.slow  # lm-eval's CLI indexes all of its own tasks first (a minute or more)
def test_lm_evals_own_cli_runs_the_xlsteer_model(folder, tmp_path):
    """``python -m xlsteer.lmeval`` is lm-eval's command line with the model registered (lm-eval
    reads no package entry points, so its plain ``lm_eval`` command cannot know the model)."""
    import subprocess
    import sys

    write_xcopa_tasks(tmp_path / "tasks", langs=["sw"])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "xlsteer.lmeval", "--model", "xlsteer", "--model_args",
                           f"pretrained={folder}", "--batch_size", "4", "--tasks", "xcopa_sw", "--include_path",
                           str(tmp_path / "tasks"), "--limit", "2", "--output_path", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [written] = list(out.rglob("results_*.json"))
    res = json.loads(written.read_text(encoding="utf-8"))
    assert res["n-samples"]["xcopa_sw"]["effective"] == 2 and res["config"]["model"] == "xlsteer"


# ---- (b) loglikelihood equals the engine, a hand computation and lm-eval's hf backend --------

REQS = [  # (task, doc, context, continuation)
    ("xcopa_en", 0, "The cat sat on the mat because", " it was tired."),
    ("xcopa_en", 0, "The cat sat on the mat because", " it was hungry."),
    ("xcopa_en", 1, "Hello world ", "again"),  # trailing space moves to the continuation
    ("xcopa_en", 1, "Hello world ", "there, friend"),
    ("xcopa_sw", 0, "The cat sat on the mat because", " it was tired."),  # same text, other task
    ("xcopa_sw", 2, "Niliiacha mitupu mifuko yangu kwa hiyo", " niliona silaha."),
    ("xcopa_sw", 3, "", "Just a text."),  # empty context: conditioned on BOS
]


def _instances():
    return [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=i, metadata=(task, doc, 1))
            for i, (task, doc, ctx, cont) in enumerate(REQS)]


def _by_hand(lm, ctx: str, cont: str) -> tuple[float, bool]:
    """One full sequence, no padding, no cache; tokenised as lm-eval does (split at the context)."""
    tok = lm.tokenizer
    n = len(ctx) - len(ctx.rstrip())
    ctx, cont = ctx[: len(ctx) - n], ctx[len(ctx) - n:] + cont
    if ctx:
        c_ids = tok(ctx)["input_ids"]
        t_ids = tok(ctx + cont)["input_ids"][len(c_ids):]
    else:
        c_ids, t_ids = [tok.bos_token_id], tok(cont, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = lm.model(torch.tensor([c_ids + t_ids])).logits[0, len(c_ids) - 1:-1].float()
    lp = torch.log_softmax(logits, -1)
    tgt = torch.tensor(t_ids)
    return float(lp.gather(1, tgt[:, None]).sum()), bool((logits.argmax(-1) == tgt).all())


def test_loglikelihood_equals_engine_hand_computation_and_lm_evals_hf(lm):
    from lm_eval.models.huggingface import HFLM

    xl = XlsteerLM(pretrained=lm, batch_size=3)
    got = xl.loglikelihood(_instances())
    eng = Engine(lm, batch_size=1).loglikelihood([(ctx, [cont]) for _, _, ctx, cont in REQS], ["en"] * len(REQS))
    hf = HFLM(pretrained=lm.model, tokenizer=lm.tokenizer, batch_size=2, device="cpu")  # lm-eval's own backend
    theirs = hf.loglikelihood(_instances(), disable_tqdm=True)
    for (task, doc, ctx, cont), (lp, greedy), e, h in zip(REQS, got, eng, theirs):
        hand_lp, hand_greedy = _by_hand(lm, ctx, cont)
        assert lp == pytest.approx(e[0][0], abs=ATOL) and greedy == e[0][3]
        assert lp == pytest.approx(hand_lp, abs=ATOL) and greedy == hand_greedy, (ctx, cont)
        assert lp == pytest.approx(h[0], abs=ATOL) and greedy == h[1], (ctx, cont)
    assert all(lp < 0 for lp, _ in got)


def test_loglikelihood_rolling_and_generate_until(lm):
    xl = XlsteerLM(pretrained=lm, batch_size=2)
    text = "Some text to score in one piece."
    [total] = xl.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0, ("wikitext", 0, 1))])
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = lm.model(torch.tensor([[lm.tokenizer.bos_token_id] + ids])).logits[0, :-1].float()
    hand = float(torch.log_softmax(logits, -1).gather(1, torch.tensor(ids)[:, None]).sum())
    assert total == pytest.approx(hand, rel=ATOL / 10)  # a sum of 32 float32 terms
    reqs = [Instance("generate_until", {}, ("Question: 1+1?\nAnswer:", {"until": ["\n"], "max_gen_toks": 6}), 0,
                     ("mgsm_direct_sw", 0, 1)),
            Instance("generate_until", {}, ("Hello", {"max_gen_toks": 4, "do_sample": False}), 0, ("copa", 1, 1))]
    out = xl.generate_until(reqs)
    eng = Engine(lm, batch_size=2)
    assert out[0] == eng.generate(["Question: 1+1?\nAnswer:"], ["sw"], 6, ["\n"])[0]
    assert out[1] == eng.generate(["Hello"], ["en"], 4)[0]
    with pytest.raises(UsageError, match="greedily"):
        xl.generate_until([Instance("generate_until", {}, ("Hi", {"do_sample": True, "temperature": 1.0}), 0,
                                    ("copa", 2, 1))])


# ---- (c) XCOPA through the local task configs equals xlsteer's evaluate ----------------------


def test_xcopa_through_lm_eval_equals_evaluate_item_by_item(plain, lm):
    res, _ = plain
    result = run_task(lm, "xcopa", LANGS, split="test", limit=LIMIT, n_boot=100)
    _assert_same_items(res, result)
    cfg = res["configs"]["xcopa_sw"]
    assert cfg["dataset_path"] == "json" and res["config"]["xlsteer_model"] == lm.name


# ---- (d) steering: alpha 0 is the identity, the anchor task is never steered -----------------


def test_alpha_zero_equals_unsteered_and_the_anchor_task_is_never_steered(plain, steered, lm, intervention):
    base, _ = plain
    for task in TASKS:  # alpha 0: exactly the unsteered scores
        assert _items(steered[0], task) == _items(base, task)
    on = steered[2]
    assert _items(on, "xcopa_en") == _items(base, "xcopa_en")  # anchor rows: bit for bit
    sw_on, sw_off = _items(on, "xcopa_sw"), _items(base, "xcopa_sw")
    assert max(abs(a - b) for i in sw_on for a, b in zip(sw_on[i]["logprobs"], sw_off[i]["logprobs"])) > 1e-3
    info = on["config"]["xlsteer_intervention"]
    assert info["method"] == "vector" and info["strength"] == 2
    # and the steered lm-eval run equals xlsteer's own steered evaluate, item by item
    result = run_task(lm, "xcopa", LANGS, split="test", limit=LIMIT, interventions=str(intervention), alpha=2,
                      n_boot=100)
    _assert_same_items(on, result)


def test_request_languages_route_by_task_name(lm, intervention):
    xl = XlsteerLM(pretrained=lm, intervention=str(intervention), alpha=1)
    reqs = [Instance("loglikelihood", {}, ("a", " b"), 0, (t, 0, 1)) for t in ("xcopa_sw", "xcopa_en", "copa")]
    assert xl.request_langs(reqs) == ["sw", "en", "en"]
    fixed = XlsteerLM(pretrained=lm, intervention=str(intervention), alpha=1, lang="sw")
    assert fixed.request_langs(reqs) == ["sw", "sw", "sw"]
    assert task_language("belebele_swh_Latn") == "sw" and task_language("mgsm_direct_zh") == "zh"
    assert task_language("hellaswag") == "en" and task_language("my_task", {"my_task": "de"}) == "de"
    with pytest.raises(LanguageError, match="task_langs"):
        task_language("my_task")
    with pytest.raises(UsageError, match="batch size"):
        XlsteerLM(pretrained=lm, batch_size="auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on machines without a GPU")
def test_lm_evals_default_cuda_device_falls_back_to_the_cpu(folder):
    assert XlsteerLM(pretrained=str(folder), device="cuda:0").engine.device.type == "cpu"


# ---- (e) offline ----------------------------------------------------------------------------


def test_runs_offline_from_the_data_dir(plain, tm):
    import os

    from xlsteer.data.paths import data_dir

    res, attempts = plain
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert attempts == []  # no connection was even tried (datasets, hub, anything)
    assert set(res["results"]) == set(TASKS) and all(res["n-samples"][t]["effective"] == LIMIT for t in TASKS)
    root = data_dir(None).resolve()
    for task in TASKS:
        files = res["configs"][task]["dataset_kwargs"]["data_files"]
        assert {"test", "validation"} <= set(files)
        assert all(Path(p).resolve().is_relative_to(root) for p in files.values())


# ---- the shipped Gemma-3-270M through the CLI -------------------------------------------------


@pytest.mark.slow
def test_gemma_cli_lm_eval_equals_evaluate(tmp_path, monkeypatch, capfd):
    from xlsteer.cli import main

    out = tmp_path / "lm_eval.json"
    monkeypatch.chdir(tmp_path)  # outside any git checkout: lm-eval's git probe must stay silent
    assert main(["lm-eval", "--model", "gemma3-270m", "--tasks", "xcopa_en,xcopa_sw", "--limit", "10",
                 "--batch-size", "8", "-o", str(out)]) == 0
    assert "fatal" not in capfd.readouterr().err
    res = json.loads(out.read_text(encoding="utf-8"))
    gemma = load_model("gemma3-270m")
    result = run_task(gemma, "xcopa", LANGS, split="test", limit=10, n_boot=100)
    for lang, task in zip(LANGS, TASKS):
        theirs, ours = _items(res, task), _ours(result, lang)
        assert sorted(theirs) == sorted(ours) and len(ours) == 10
        for idx in ours:
            assert theirs[idx]["acc"] == ours[idx]["acc"], (task, idx)
            assert theirs[idx]["logprobs"] == pytest.approx(ours[idx]["logprobs"], abs=1e-4), (task, idx)
        assert res["results"][task]["acc,none"] == result["per_lang"][lang]["metrics"]["acc"]["mean"]
