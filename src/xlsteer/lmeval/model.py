"""lm-eval drives xlsteer: ``XlsteerLM``, an lm-eval model scored by xlsteer's engine, steered per language.

``XlsteerLM`` is registered in lm-eval's model registry as ``"xlsteer"`` when this module is
imported. lm-eval (0.4.13) discovers models only through its own table of built-in models and
the modules already imported, never through package entry points, so run it through one of:

* ``xlsteer lm-eval --model gemma3-270m --tasks xcopa_sw,xcopa_zh [--intervention F --alpha A]``
  (registers the model and the offline XCOPA configs, then runs lm-eval's evaluator);
* ``python -m xlsteer.lmeval <lm-eval CLI arguments>`` (registers the model, then runs lm-eval's
  own CLI; add ``--include_path DIR`` with configs written by ``xlsteer lm-eval --write-tasks DIR``
  for offline XCOPA);
* Python: ``import xlsteer.lmeval.model`` before ``lm_eval.simple_evaluate(model="xlsteer", ...)``,
  or pass an ``XlsteerLM(...)`` instance as ``model``.

model_args: ``pretrained`` (shipped name, local folder or .gguf; or a loaded
:class:`~xlsteer.models.loading.LoadedModel` from Python), ``dtype``, ``device`` (lm-eval's CLI
default ``cuda:0`` falls back to the CPU without a GPU, as its ``hf`` backend does), ``batch_size``,
``max_length``, ``intervention`` (an intervention file), ``alpha`` (its strength), ``anchor``
(never steered; ``none`` steers every row), ``lang`` and ``positions`` (all, prompt, generated,
last_prompt; default: the policy the intervention stores, ``Intervention.default_positions``).

Languages. lm-eval pools the requests of all tasks by request type, so one ``loglikelihood``
call may hold xcopa_sw, xcopa_zh and English requests at once. ``lang=task`` (the default)
gives each request the language of *its* task (:func:`~xlsteer.lmeval.languages.task_language`);
``lang=<code>`` gives every request that language. The requests then go to the engine grouped by
language: one engine call whose rows carry their language, which the one ``steer()`` context
routes per row (each row gets its language's intervention; rows in the anchor language are never
touched, bit for bit). That is the grouping xlsteer's own ``evaluate`` uses, so the same items
give the same batches and the same scores; running one ``steer()`` per language would only form
smaller batches.

Scoring is :meth:`xlsteer.evaluation.engine.Engine.loglikelihood` (lm-eval's tokenisation split
at the context boundary, the shared context run once per document); ``loglikelihood_rolling``
scores lm-eval's rolling windows with the same batch code, the text prefixed by BOS (or EOS);
``generate_until`` is the engine's greedy decoding with the request's ``until`` stops and
``max_gen_toks`` (sampling is refused: the engine is deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from lm_eval.api.model import LM  # lm-eval's public base class of every model

from ..data.langs import normalize_lang
from ..errors import LanguageError, UsageError
from ..hook_session import POSITION_POLICIES
from ..settings import Settings
from . import harness
from .languages import parse_task_langs, task_language


def _positive_int(value: Any, name: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if isinstance(value, bool) or n < 1 or (isinstance(value, float) and value != n):
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return n


def _string_list(until: Any) -> list[str]:
    if until is None:
        return []
    if isinstance(until, str):
        return [until]
    if isinstance(until, Iterable):
        return [str(u) for u in until if u is not None and str(u) != ""]
    raise UsageError(f"'until' must be a string or a list of strings, got {until!r}")


def _device(device: Any) -> str:
    """The device to load on. lm-eval's CLI passes ``cuda:0`` unless told otherwise; like its
    ``hf`` backend, fall back to the CPU (with a warning) when there is no CUDA GPU."""
    import logging

    import torch

    dev = str(device or "cpu").strip().lower()
    if dev.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("device %s requested but no CUDA GPU is available; using the CPU", dev)
        return "cpu"
    return dev


@dataclass(frozen=True)
class AdapterSettings(Settings):
    """The ``xlsteer`` model's settings: lm-eval's ``model_args`` (see the module docstring), typed.

    Values may arrive as lm-eval's CLI parsed them (``batch_size="8"``); they are checked when the
    model is built. ``anchor`` None (or ``none``) steers every row.
    """

    dtype: str = "float32"
    device: str | None = "cpu"
    batch_size: int | str = 8
    max_length: int = 2048
    intervention: Any = None
    alpha: float | None = None
    anchor: str | None = "en"
    lang: str | None = "task"
    positions: str | None = None
    task_langs: str | dict[str, str] | None = None
    max_gen_toks: int = 256
    trust_remote_code: bool = False
    allow_download: bool = False

    _what = "xlsteer model argument"
    _none_is_a_value = frozenset({"intervention", "alpha", "anchor", "positions", "task_langs"})


def _loaded(pretrained: Any, s: AdapterSettings) -> Any:
    from ..models.loading import LoadedModel, load_model

    if isinstance(pretrained, LoadedModel):
        return pretrained
    if isinstance(pretrained, str) and pretrained:
        return load_model(pretrained, dtype=s.dtype, device=_device(s.device),
                          trust_remote_code=bool(s.trust_remote_code), allow_download=bool(s.allow_download))
    raise UsageError("pass pretrained=<shipped model name, folder or .gguf file> (or a LoadedModel object)")


@harness.register_model("xlsteer")
class XlsteerLM(LM):
    """An lm-eval ``LM`` backed by :class:`~xlsteer.evaluation.engine.Engine`, optionally steered.

    lm-eval builds it from its ``model_args`` string as keywords (``create_from_arg_string``):
    every keyword but ``pretrained`` is a field of :class:`AdapterSettings` (lm-eval's
    ``max_batch_size`` is accepted and ignored); from Python, pass ``settings`` instead.
    """

    def __init__(self, pretrained: Any = "gemma3-270m", settings: AdapterSettings | None = None,
                 **model_args: Any) -> None:
        super().__init__()
        from ..evaluation.engine import Engine
        from ..evaluation.engine_cache import intervention_info
        from ..evaluation.runner import load_interventions
        from ..interventions.base import default_positions

        model_args.pop("max_batch_size", None)  # lm-eval passes it to every model; meaningless here
        s = AdapterSettings.of(settings, **model_args)
        if isinstance(s.batch_size, str) and s.batch_size.startswith("auto"):
            raise UsageError("xlsteer's lm-eval adapter needs a fixed batch size; pass e.g. batch_size=8")
        batch_size = _positive_int(s.batch_size, "batch_size")
        if s.positions is not None and s.positions not in POSITION_POLICIES:
            raise UsageError(f"unknown position policy {s.positions!r}; choose one of {', '.join(POSITION_POLICIES)}")
        self.lm = _loaded(pretrained, s)
        self.anchor = None if s.anchor in (None, "", "none") else normalize_lang(str(s.anchor))
        self.interventions = load_interventions(s.intervention, s.alpha, self.lm.fingerprint, model=self.lm)
        self.positions = default_positions(self.interventions, s.positions)  # None: the stored policy
        self.lang: str | None = None if s.lang in (None, "", "task") else normalize_lang(str(s.lang))
        self.task_langs = parse_task_langs(s.task_langs)
        self.max_gen_toks = _positive_int(s.max_gen_toks, "max_gen_toks")
        self.engine = Engine(self.lm, batch_size=batch_size, cache_dir=None,
                             max_length=_positive_int(s.max_length, "max_length"), progress_desc="lm-eval")
        self.tokenizer = self.lm.tokenizer
        self.batch_size = batch_size
        self._device = self.engine.device
        self._info = intervention_info(self.interventions, self.positions)

    # ---- lm-eval plumbing -----------------------------------------------------------------

    @property
    def max_length(self) -> int:
        return self.engine.max_length

    @property
    def tokenizer_name(self) -> str:
        """Keys lm-eval's request cache when a chat template is applied."""
        return str(getattr(self.tokenizer, "name_or_path", None) or self.lm.name).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template (lm-eval's ``--apply_chat_template [NAME]``); None when not asked."""
        if not chat_template:
            return None
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):  # named templates
            name = chat_template if isinstance(chat_template, str) else "default"
            if name not in template:
                raise UsageError(f"the tokenizer has no chat template {name!r}; it has {', '.join(sorted(template))}")
            template = template[name]
        if not template:
            raise UsageError(f"the tokenizer of {self.lm.name} has no chat template; drop --apply_chat_template")
        return str(template)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat as one string, through the tokenizer's own template."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    def get_model_info(self) -> dict[str, Any]:
        """Recorded by lm-eval in ``results["config"]``."""
        return {
            "xlsteer_model": self.lm.name,
            "xlsteer_model_fingerprint_sha256": self.engine.model_hash,
            "xlsteer_intervention": self._info,
            "xlsteer_anchor": self.anchor,
            "xlsteer_lang": self.lang or "task",
            "xlsteer_positions": self.positions,
        }

    def request_langs(self, requests: Sequence[Any]) -> list[str]:
        """The steering language of each request: ``lang``, or its task's language.

        Unsteered requests are grouped by language too (the engine never mixes languages in a
        batch), so an unsteered run forms the same batches as a steered one and alpha 0 gives
        its scores bit for bit; a task whose language cannot be told counts as the anchor's then.
        """
        if self.lang is not None:
            return [self.lang] * len(requests)
        cache: dict[str | None, str] = {}
        out = []
        for r in requests:
            name = getattr(r, "task_name", None)
            if name not in cache:
                try:
                    cache[name] = task_language(name, self.task_langs)
                except LanguageError:
                    if self.interventions:
                        raise
                    cache[name] = self.anchor or "en"
            out.append(cache[name])
        return out

    def _common(self) -> dict[str, Any]:
        return {"interventions": self.interventions or None, "positions": self.positions, "anchor": self.anchor}

    # ---- loglikelihood ----------------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(sum log-prob, is_greedy) per (context, continuation), through ``Engine.loglikelihood``.

        Requests of one document that share a context (a multiple-choice item's choices) form
        one engine request, so the context runs once and its KV cache serves every choice.
        """
        if not requests:
            return []
        langs = self.request_langs(requests)
        groups: dict[tuple, int] = {}
        ctxs: list[str] = []
        conts: list[list[str]] = []
        glangs: list[str] = []
        where: list[tuple[int, int]] = []
        for r, lang in zip(requests, langs):
            context, continuation = r.args
            key = (getattr(r, "task_name", None), getattr(r, "doc_id", None), lang, context)
            g = groups.get(key)
            if g is None:
                g = groups[key] = len(ctxs)
                ctxs.append(context)
                conts.append([])
                glangs.append(lang)
            where.append((g, len(conts[g])))
            conts[g].append(continuation)
        out = self.engine.loglikelihood(list(zip(ctxs, conts)), glangs, **self._common())
        res = []
        for r, (g, j) in zip(requests, where):
            lp, _, _, greedy = out[g][j]
            ans = (float(lp), bool(greedy))
            self.cache_hook.add_partial("loglikelihood", r.args, ans)
            res.append(ans)
        return res

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts in lm-eval's disjoint rolling windows (max_length tokens).

        The text is encoded without special tokens and conditioned on BOS (EOS when the tokenizer
        has none); each window is one engine row (context = the window's disjoint prefix).
        """
        import torch

        from ..hooks import steer

        if not requests:
            return []
        eng = self.engine
        if eng.prefix_id is None:
            raise UsageError("the tokenizer has no BOS or EOS token to start a rolling window from")
        langs = self.request_langs(requests)
        windows: list[tuple[int, list[int], list[int]]] = []
        for i, r in enumerate(requests):
            (text,) = r.args
            toks = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            for ctx, cont in harness.rolling_windows(toks, int(eng.prefix_id), eng.max_length):
                windows.append((i, ctx, cont))
        totals = [0.0] * len(requests)
        order = sorted(range(len(windows)), key=lambda k: (-(len(windows[k][1]) + len(windows[k][2])), k))
        with steer(eng.model, self.interventions, anchor=self.anchor, positions=self.positions) as session, \
                torch.inference_mode():
            for start in range(0, len(order), eng.batch_size):
                idx = order[start:start + eng.batch_size]
                enc = [(windows[k][1], [windows[k][2]]) for k in idx]
                rows = eng._ll_any(session, enc, [[""] for _ in idx], [langs[windows[k][0]] for k in idx])[1]
                for k, row in zip(idx, rows):
                    totals[windows[k][0]] += float(row[0][0])
        for r, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    # ---- generation -------------------------------------------------------------------------

    def _gen_settings(self, kwargs: Any) -> tuple[int, tuple[str, ...]]:
        """(max new tokens, stop strings) from a request's gen_kwargs, via lm-eval's own normaliser
        (so its aliases max_new_tokens/max_tokens and its do_sample/temperature rules apply)."""
        if kwargs is not None and not isinstance(kwargs, dict):
            raise UsageError(f"generation arguments must be a dict, got {type(kwargs).__name__}")
        kw = harness.generation_settings(dict(kwargs or {}), self.max_gen_toks)
        if kw.get("do_sample"):
            raise UsageError("xlsteer's lm-eval adapter decodes greedily; set do_sample=false (or temperature=0)")
        return _positive_int(kw["max_gen_toks"], "max_gen_toks"), tuple(_string_list(kw.get("until")))

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations through ``Engine.generate``, one engine call per (max_gen_toks, until)."""
        if not requests:
            return []
        langs = self.request_langs(requests)
        by_settings: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, r in enumerate(requests):
            _, gen_kwargs = r.args
            by_settings.setdefault(self._gen_settings(gen_kwargs), []).append(i)
        res: list[str] = [""] * len(requests)
        for (max_new, until), idx in by_settings.items():
            texts = self.engine.generate([requests[i].args[0] for i in idx], [langs[i] for i in idx], max_new,
                                         list(until), **self._common())
            for i, t in zip(idx, texts):
                res[i] = t
                self.cache_hook.add_partial("generate_until", requests[i].args, t)
        return res
