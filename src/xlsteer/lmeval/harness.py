"""The one module that touches lm-evaluation-harness's internals.

Why one: lm-eval moves its internals between minor versions (the task index, the model registry,
the generation-argument normaliser, the few-shot sampler, the filter ensembles); with every use in
this module an upgrade is one file's work, and the bridge has one cached ``TaskManager``, one way
of keeping lm-eval quiet (:func:`quiet`) and one unknown-task error. The rest of
:mod:`xlsteer.lmeval` uses lm-eval's task and model objects through their documented methods only,
and subclasses its public ``LM`` class. lm-eval is an optional dependency (``xlsteer[lmeval]``),
so it is imported inside the functions, never when this module is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import UsageError

# ---------------------------------------------------------------------------------------------
# keeping lm-eval quiet


def _quiet_git_commit_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` without its stderr: the hash of the working directory's
    checkout, or None outside one."""
    try:
        out = subprocess.run(["git", "describe", "--always"], capture_output=True, check=True, timeout=10)  # noqa: S607
        return out.stdout.decode().strip() or None
    except (subprocess.CalledProcessError, FileNotFoundError, subprocess.TimeoutExpired, OSError):
        return None


@contextlib.contextmanager
def _lm_eval_probes_quiet(level: int) -> Iterator[None]:
    """lm-eval's git probe without stderr, its loggers at ``level`` and above (restored on exit)."""
    modules = []
    for name in ("lm_eval.loggers.utils", "lm_eval.evaluator"):  # all imported before any is patched:
        with contextlib.suppress(ImportError):  # the evaluator binds the probe of loggers.utils on import
            modules.append(__import__(name, fromlist=["get_git_commit_hash"]))
    patched: list[tuple[Any, str, Any]] = []
    for mod in modules:
        if hasattr(mod, "get_git_commit_hash"):
            patched.append((mod, "get_git_commit_hash", getattr(mod, "get_git_commit_hash")))
            setattr(mod, "get_git_commit_hash", _quiet_git_commit_hash)
    log = logging.getLogger("lm_eval")
    old_level = log.level
    log.setLevel(max(level, old_level) if old_level else level)
    try:
        yield
    finally:
        log.setLevel(old_level)
        for mod, attr, value in reversed(patched):
            setattr(mod, attr, value)


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def _terminal_silenced() -> Iterator[None]:
    """Nothing written to fds 1 and 2 (Python or child processes) or warned reaches the terminal."""
    import sys
    import tempfile
    import warnings

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        sink = tempfile.TemporaryFile()
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
    except OSError:  # pragma: no cover  (no fds: nothing to hide)
        sink = None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_Null()), contextlib.redirect_stderr(_Null()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        if sink is not None:
            sink.close()


@contextlib.contextmanager
def quiet(*, keep_progress: bool = False) -> Iterator[None]:
    """Keep what lm-eval and ``datasets`` print about themselves off the user's terminal.

    Always: lm-eval's git probe (``simple_evaluate`` runs ``git describe`` in the *current
    directory*, so outside a checkout every run printed ``fatal: not a git repository``) runs with
    its stderr discarded, the hash still recorded, and lm-eval's loggers pass warnings and errors
    only. Unless ``keep_progress`` (used around an evaluation, whose progress bar and lm-eval's
    warnings the user should see): everything else printed is dropped as well, at the
    file-descriptor level, because lm-eval's warnings go through loggers without handlers
    (Python's last-resort handler prints them), ``datasets`` draws progress bars and git probes
    print from child processes.
    """
    with _lm_eval_probes_quiet(logging.WARNING):
        if keep_progress:
            yield
        else:
            with _terminal_silenced():
                yield


def one_line(e: BaseException) -> str:
    """An exception raised inside lm-eval or ``datasets`` as one short line for an error message."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------------
# finding tasks: one cached TaskManager, one unknown-task error

#: TaskManagers by (include paths, with lm-eval's own tasks): indexing is the slow part (lm-eval's
#: own index is thousands of YAML files, tens of seconds to scan on a slow disk).
_TM_CACHE: dict[tuple[tuple[str, ...], bool], Any] = {}


def _cached_task_manager(paths: tuple[str, ...], defaults: bool) -> Any:
    key = (paths, defaults)
    if key not in _TM_CACHE:
        from lm_eval.tasks import TaskManager

        with quiet():  # it logs every YAML it scans, and "overrides existing task" for ours
            _TM_CACHE[key] = TaskManager(include_path=list(paths) or None, include_defaults=defaults)
    return _TM_CACHE[key]


def forget_task_managers(folder: str | os.PathLike) -> None:
    """Drop the cached TaskManagers that index ``folder`` (a temporary folder about to go)."""
    name = str(folder)
    for key in [k for k in _TM_CACHE if name in k[0]]:
        del _TM_CACHE[key]


def _defined_without_defaults(tm: Any, name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``name`` is a YAML task of ``tm``, or a group of such tasks (a tag, or a group naming
    a task outside ``tm``, may gather lm-eval's own tasks: those need lm-eval's index)."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None or name in seen:
        return False
    if entry.kind == Kind.TASK:
        return True
    if entry.kind != Kind.GROUP:
        return False
    members = (entry.cfg or {}).get("task", [])
    return all(isinstance(m, str) and _defined_without_defaults(tm, m, seen | {name}) for m in members)


def task_manager(names: Sequence[str], include_path: Sequence[str | os.PathLike] = (), *,
                 override_dir: str | os.PathLike | None = None) -> Any:
    """An lm-eval TaskManager that knows ``names``, cached for the process.

    It indexes the folders of ``include_path``, then ``override_dir`` (its configs replace lm-eval's
    and the include path's of the same names), and lm-eval's own tasks only when those folders do
    not define every name. A name may also be the path of a task YAML file (as lm-eval's own CLI
    takes it). Raises the one-line unknown-task error, with close names, otherwise.
    """
    paths = tuple(str(Path(p).expanduser()) for p in include_path)
    for p in paths:
        if not Path(p).exists():
            raise UsageError(f"include path {p} does not exist; give the folder of your lm-eval task YAML files")
    if override_dir is not None:
        paths += (str(override_dir),)
    if paths:
        tm = _cached_task_manager(paths, False)
        if all(_defined_without_defaults(tm, n) for n in names):
            return tm
    tm = _cached_task_manager(paths, True)
    known = set(tm.all_tasks)
    unknown = [n for n in names if n not in known and not Path(n).is_file()]
    if unknown:
        import difflib

        close = sorted({m for n in unknown for m in difflib.get_close_matches(n, tm.all_tasks, n=3)})
        raise UsageError(f"unknown lm-eval task(s) {', '.join(unknown)}; "
                         + (f"did you mean {', '.join(close)}? " if close else "")
                         + "pass --include-path DIR for your own task YAML files (lm-eval ls tasks lists lm-eval's)")
    return tm


def task_entry(tm: Any, name: str) -> tuple[str, dict[str, Any], str | None]:
    """(kind, raw config with includes merged and functions unresolved, YAML path) of an indexed
    name; kind is ``task``, ``group``, ``tag`` or ``python``."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index[name]
    kind = {Kind.TASK: "task", Kind.GROUP: "group", Kind.TAG: "tag"}.get(entry.kind, "python")
    return kind, dict(entry.cfg or {}), str(entry.yaml_path) if entry.yaml_path else None


def load_tasks(tm: Any, names: Sequence[str]) -> dict[str, Any]:
    """lm-eval's Task objects of ``names`` (quietly; any exception of lm-eval or ``datasets``
    propagates for the caller to turn into its one line)."""
    with quiet():
        return dict(tm.load(list(names))["tasks"])


def version() -> str:
    import lm_eval

    return str(getattr(lm_eval, "__version__", ""))


# ---------------------------------------------------------------------------------------------
# what a task asks for and how it scores


def generation_settings(gen_kwargs: dict[str, Any], default_max_gen_toks: int = 256) -> dict[str, Any]:
    """A request's generation arguments through lm-eval's own normaliser (its aliases
    max_new_tokens/max_tokens and its do_sample/temperature rules): ``until``, ``max_gen_toks``,
    ``do_sample``, ..."""
    from lm_eval.models.utils import normalize_gen_kwargs

    return dict(normalize_gen_kwargs(dict(gen_kwargs), default_max_gen_toks))


def per_item_mean_metrics(cfg: dict[str, Any]) -> list[str]:
    """Metric names of a generation task whose aggregation is the mean over items."""
    import lm_eval.api.metrics  # noqa: F401  (fills lm-eval's metric registries)
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY, get_metric_aggregation

    entries = cfg.get("metric_list") or [{"metric": m} for m in DEFAULT_METRIC_REGISTRY["generate_until"]]
    out = []
    for m in entries:
        name, agg = m.get("metric"), m.get("aggregation")
        if not isinstance(name, str):
            continue
        if agg is None:
            with contextlib.suppress(Exception):
                agg = getattr(get_metric_aggregation(name), "__name__", None)
        if agg == "mean":
            out.append(name)
    return out


def fewshot_pool(task: Any) -> str | None:
    """The lm-eval split few-shot exemplars are drawn from (lm-eval's own fallback order; None:
    they are listed in the config)."""
    cfg = task.config
    if getattr(task.fewshot_cfg, "samples", None) is not None:
        return None  # exemplars listed in the config itself, not drawn from a split
    declared = getattr(task.fewshot_cfg, "split", None)
    return declared or cfg.training_split or cfg.validation_split or cfg.test_split


@contextlib.contextmanager
def excluding_from_fewshot(task: Any, doc: dict) -> Iterator[None]:
    """The few-shot sampler of ``task`` never draws ``doc`` itself (restored on exit)."""
    sampler = task.sampler
    original = sampler.sample

    def sample(n: int, eval_doc: Any = None, **kwargs: Any) -> Any:
        return original(n, eval_doc=doc, **kwargs)

    sampler.sample = sample
    try:
        yield
    finally:
        del sampler.sample


def filter_names(task: Any) -> list[str]:
    return [ens.name for ens in task._filters]


def filtered_results(task: Any, doc: dict, text: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(filter name, filtered answer, ``process_results``) of one generated text, per filter
    pipeline of the task, as lm-eval's evaluator computes them."""
    for ens in task._filters:
        resps: Any = [[text]]
        for make in ens.filters:
            resps = make().apply(resps, [doc])
        out = list(resps)[0]
        yield ens.name, out, task.process_results(doc, [out])


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows of a text's tokens: (context, continuation) pairs."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    return [make_disjoint_window(pair) for pair in get_rolling_token_windows(
        token_list=tokens, prefix_token=prefix_token, max_seq_len=max_length, context_len=1)]


def xcopa_functions() -> Any:
    """lm-eval's own XCOPA prompt functions (``lm_eval/tasks/xcopa/utils.py``)."""
    from lm_eval.tasks.xcopa import utils

    return utils


# ---------------------------------------------------------------------------------------------
# the model registry, the evaluator, its results and its CLI


def register_model(name: str) -> Callable[[type], type]:
    """lm-eval's ``register_model`` after its lazy table of built-in models (lm-eval fills that
    table only into an empty registry, so it must come first)."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import register_model as register

    return register(name)


@contextlib.contextmanager
def _kept_random_state() -> Iterator[None]:
    """``simple_evaluate`` seeds Python's, NumPy's and torch's global generators; restore them after."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


@contextlib.contextmanager
def _no_download_counts() -> Iterator[None]:
    """Stop ``datasets.load_dataset`` from pinging S3 ("download counts") for local data files.

    Why: even the offline XCOPA configs (local JSON files) made it open a connection to
    s3.amazonaws.com unless HF_HUB_OFFLINE was set; a run on local data must not touch the network.
    """
    try:
        import datasets.config as cfg
    except ImportError:  # pragma: no cover
        yield
        return
    old = cfg.HF_UPDATE_DOWNLOAD_COUNTS
    cfg.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        cfg.HF_UPDATE_DOWNLOAD_COUNTS = old


def simple_evaluate(lm: Any, names: Sequence[str], tm: Any, **options: Any) -> dict[str, Any] | None:
    """``lm_eval.simple_evaluate``, keeping the global random state, the network and the terminal
    untouched (``options`` are its keyword arguments)."""
    from lm_eval import simple_evaluate as evaluate

    with _kept_random_state(), quiet(keep_progress=True), _no_download_counts():
        return evaluate(model=lm, tasks=list(names), task_manager=tm, **options)


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's own markdown table(s) of a results dict."""
    from lm_eval.utils import make_table

    text = make_table(results)
    if results.get("groups"):
        text += "\n" + make_table(results, "groups")
    return text


def results_json(results: dict[str, Any]) -> str:
    """lm-eval's results as JSON (its own handling of numpy values and functions), sorted keys,
    stamped as an ``xlsteer.lm-eval`` result file."""
    import json

    from lm_eval.utils import handle_non_serializable

    from ..results import LM_EVAL, stamp

    return json.dumps(stamp(LM_EVAL, results), default=handle_non_serializable, ensure_ascii=False, indent=1,
                      sort_keys=True) + "\n"


def run_cli(argv: Sequence[str] | None = None) -> None:
    """lm-eval's own command line (the caller has registered the ``xlsteer`` model)."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
