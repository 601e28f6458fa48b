"""XCOPA scoring throughput: xlsteer's engine vs. lm-evaluation-harness's ``hf`` backend (HFLM).

Both score the *same* lm-eval requests (built once from the local XCOPA task configs, so the
prompts are lm-eval's own) with the same Gemma-3-270M weights (float32) and batch size:

- xlsteer: ``XlsteerLM.loglikelihood`` -> ``Engine.loglikelihood`` (no per-item cache): each
  item's context runs once (logits only at its last position), its KV cache is repeated for the
  two choices, which are scored in one more forward.
- lm-eval: ``HFLM(pretrained=<folder>, dtype="float32").loglikelihood``, loaded the way a user
  runs ``lm_eval --model hf --model_args pretrained=<folder>``: from the converted float32
  folder that ``load_model("gemma3-270m")`` made under ~/.cache/xlsteer/models (lm-eval cannot
  read the shipped name or the Q4_K_M GGUF file directly). Every
  (context + choice) sequence runs in full with logits at every position. Its batch size counts
  sequences (2 per item), xlsteer's counts items (contexts): with equal ``--batch-size`` the
  engine puts twice the choices into its second forward; ``--hf-batch-size`` changes lm-eval's.

Prints, measured in this run: items/s of each (best of ``--reps`` interleaved timings, as the
machine is shared), their ratio (target >= 1.5), each backend's accuracy (must be equal), how
many items' predictions differ and the largest log-prob difference, and the accuracy of
xlsteer's own ``run_task(lm, "xcopa", ...)`` on the same items as a cross-check.

    .venv/bin/python benchmarks/scoring_vs_lm_eval.py --langs sw --limit 100 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("XLSTEER_QUIET", "1")


def _requests(langs: list[str], limit: int):
    """lm-eval's loglikelihood Instances of xcopa_<lang> (test, first ``limit`` docs), and the docs."""
    from xlsteer.lmeval.harness import task_manager
    from xlsteer.lmeval.xcopa import local_task_dir

    names = [f"xcopa_{lang}" for lang in langs]
    with local_task_dir(langs=langs) as d:
        tasks = task_manager(names, override_dir=d).load(names)["tasks"]
        instances, docs = [], {}
        for name in names:
            task = tasks[name]
            task.build_all_requests(limit=limit, rank=0, world_size=1)
            instances.extend(task.instances)
            docs[name] = {i: doc for i, doc in task.doc_iterator(rank=0, limit=limit, world_size=1)}
    return instances, docs


def _accuracy(instances, scores, docs) -> tuple[float, dict]:
    by_doc: dict[tuple[str, int], dict[int, float]] = {}
    for inst, (lp, _) in zip(instances, scores):
        by_doc.setdefault((inst.task_name, inst.doc_id), {})[inst.idx] = lp
    preds = {}
    correct = 0
    for (task, doc_id), choice_lp in by_doc.items():
        pred = max(choice_lp, key=lambda k: (choice_lp[k], -k))
        preds[(task, doc_id)] = pred
        correct += int(pred == int(docs[task][doc_id]["label"]))
    return correct / len(by_doc), preds


def main() -> None:
    import torch

    from lm_eval.models.huggingface import HFLM

    from xlsteer.lmeval.model import XlsteerLM
    from xlsteer.evaluation.runner import run_task
    from xlsteer.models.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--langs", default="sw", help="comma-separated XCOPA languages (default sw)")
    ap.add_argument("--limit", type=int, default=100, help="test items per language (default 100)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--hf-batch-size", type=int, default=None, help="lm-eval's batch size (default: --batch-size)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    langs = [x.strip() for x in args.langs.split(",") if x.strip()]
    hf_bs = args.hf_batch_size or args.batch_size

    lm = load_model("gemma3-270m", device=args.device)
    instances, docs = _requests(langs, args.limit)
    n_items = sum(len(d) for d in docs.values())
    ours = XlsteerLM(pretrained=lm, batch_size=args.batch_size)
    folder = lm.source["path"]  # the converted float32 folder (models/loading.py: models_cache_dir())
    hf = HFLM(pretrained=folder, dtype="float32", batch_size=hf_bs, max_length=ours.max_length, device=args.device)

    def run_ours():
        t0 = time.perf_counter()
        out = ours.loglikelihood(instances)
        return n_items / (time.perf_counter() - t0), out

    def run_hf():
        t0 = time.perf_counter()
        out = hf.loglikelihood(instances, disable_tqdm=True)
        return n_items / (time.perf_counter() - t0), out

    warm = instances[: 2 * min(4, n_items)]  # load kernels/allocator once for each
    ours.loglikelihood(warm)
    hf.loglikelihood(warm, disable_tqdm=True)
    rates_ours, rates_hf = [], []
    for rep in range(args.reps):  # interleaved, so drift on a shared machine hits both alike
        r, s_ours = run_ours()
        rates_ours.append(r)
        r, s_hf = run_hf()
        rates_hf.append(r)
        print(f"rep {rep + 1}: xlsteer {rates_ours[-1]:.2f} items/s, lm-eval hf {rates_hf[-1]:.2f} items/s", flush=True)

    acc_ours, pred_ours = _accuracy(instances, s_ours, docs)
    acc_hf, pred_hf = _accuracy(instances, s_hf, docs)
    differ = sorted(k for k in pred_ours if pred_ours[k] != pred_hf[k])
    max_diff = max(abs(a[0] - b[0]) for a, b in zip(s_ours, s_hf))
    greedy_differ = sum(a[1] != b[1] for a, b in zip(s_ours, s_hf))

    res = run_task(lm, "xcopa", langs, split="test", limit=args.limit, batch_size=args.batch_size, cache_dir=None)
    acc_eval = {lang: res["per_lang"][lang]["metrics"]["acc"]["mean"] for lang in langs}
    acc_eval_all = sum(r["correct"] for r in res["items"]) / len(res["items"])

    best_ours, best_hf = max(rates_ours), max(rates_hf)
    out = {
        "model": lm.name,
        "lm_eval_hf_folder": folder,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "langs": langs,
        "items": n_items,
        "requests": len(instances),
        "batch_size": {"xlsteer_items": args.batch_size, "lm_eval_sequences": hf_bs},
        "xlsteer_items_per_s": rates_ours,
        "lm_eval_hf_items_per_s": rates_hf,
        "best_xlsteer_items_per_s": best_ours,
        "best_lm_eval_hf_items_per_s": best_hf,
        "ratio": best_ours / best_hf,
        "accuracy_xlsteer": acc_ours,
        "accuracy_lm_eval_hf": acc_hf,
        "accuracy_xlsteer_evaluate": acc_eval_all,
        "accuracy_xlsteer_evaluate_per_lang": acc_eval,
        "predictions_differ": len(differ),
        "max_abs_logprob_diff": max_diff,
        "is_greedy_differ": greedy_differ,
    }
    print(f"lm-eval hf model folder: {folder}")
    print(f"Gemma-3-270M, XCOPA test {','.join(langs)} ({n_items} items, {len(instances)} requests), "
          f"{args.device}, {out['threads']} threads, batch {args.batch_size} items (xlsteer) / {hf_bs} sequences (hf)")
    print(f"xlsteer engine : {best_ours:7.2f} items/s (best of {args.reps})")
    print(f"lm-eval hf     : {best_hf:7.2f} items/s (best of {args.reps})")
    print(f"ratio          : {out['ratio']:.2f}x (target >= 1.5)")
    print(f"accuracy       : xlsteer {acc_ours:.4f} | lm-eval hf {acc_hf:.4f} | xlsteer run_task() {acc_eval_all:.4f} "
          f"({'equal' if acc_ours == acc_hf == acc_eval_all else 'DIFFERENT'})")
    print(f"agreement      : {len(differ)} of {n_items} predictions differ; max |logprob diff| {max_diff:.2e}; "
          f"is_greedy differs on {greedy_differ} requests")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
