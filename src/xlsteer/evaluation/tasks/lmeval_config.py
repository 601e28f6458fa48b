"""lm-eval task configs for :mod:`xlsteer.evaluation.tasks.lmeval`: finding the tasks, checking
they can be evaluated item by item, and what they report (metrics, splits, version digest).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

from ...errors import UsageError
from .lmeval_docs import quiet
from .spec import Metric

SUPPORTED = ("multiple_choice", "loglikelihood", "generate_until")
#: Per-item metrics that are 0/1 (McNemar applies); other per-item metrics are continuous.
BINARY_METRICS = frozenset({"acc", "acc_norm", "exact_match", "em", "accuracy"})
#: TaskManagers by (include paths, with lm-eval's own tasks): indexing is the slow part.
_TM_CACHE: dict[tuple, Any] = {}


def task_manager(names: Sequence[str], include_path: Sequence[str | os.PathLike] = ()) -> Any:
    """An lm-eval TaskManager that knows ``names``: over ``include_path`` alone when that defines
    them all (fast), else with lm-eval's own task index too (tens of seconds to build once)."""
    from lm_eval.tasks import TaskManager

    paths = tuple(str(Path(p).expanduser()) for p in include_path)
    for p in paths:
        if not Path(p).exists():
            raise UsageError(f"include path {p} does not exist; give the folder of your lm-eval task YAML files")
    for defaults in ((False, True) if paths else (True,)):
        key = (paths, defaults)
        if key not in _TM_CACHE:
            with quiet():
                _TM_CACHE[key] = TaskManager(include_path=list(paths) or None, include_defaults=defaults)
        tm = _TM_CACHE[key]
        if set(names) <= set(tm.all_tasks):
            return tm
    unknown = [n for n in names if n not in set(tm.all_tasks)]
    close = sorted({m for n in unknown for m in difflib.get_close_matches(n, tm.all_subtasks, n=3)})
    raise UsageError(f"unknown lm-eval task(s) {', '.join(unknown)}; "
                     + (f"did you mean {', '.join(close)}? " if close else "")
                     + "pass --include-path DIR for your own task YAML files")


def task_config(tm: Any, name: str) -> dict[str, Any]:
    """The task's raw config (includes merged, functions as paths), checked to be a supported task."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index[name]
    if entry.kind == Kind.GROUP:
        members = [m if isinstance(m, str) else m.get("task", "?") for m in (entry.cfg or {}).get("task", [])]
        raise UsageError(f"{name} is an lm-eval group; name its tasks instead: lmeval:{','.join(map(str, members))}")
    if entry.kind != Kind.TASK:
        raise UsageError(f"{name} is an lm-eval tag or Python task; name YAML tasks, one per language")
    cfg = dict(entry.cfg or {})
    kind = cfg.get("output_type", "generate_until")
    if kind not in SUPPORTED:
        raise UsageError(f"lm-eval task {name} has output_type {kind}; xlsteer evaluates {', '.join(SUPPORTED)} tasks "
                         "(perplexity has no per-item score to pair)")
    gen = cfg.get("generation_kwargs") or {}
    if not isinstance(gen, dict):
        raise UsageError(f"lm-eval task {name}: generation_kwargs must be a mapping (until, max_gen_toks, ...)")
    if kind == "generate_until" and _samples(gen):
        raise UsageError(f"lm-eval task {name} samples (do_sample/temperature); xlsteer decodes greedily: "
                         "set do_sample: false in its generation_kwargs")
    cfg["_yaml_path"] = str(entry.yaml_path) if entry.yaml_path else None
    return cfg


def _samples(gen: dict[str, Any]) -> bool:
    """Whether lm-eval would sample with these generation arguments (its own normaliser decides)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    try:
        with quiet():  # it warns about contradictory settings
            return bool(normalize_gen_kwargs(dict(gen), 256).get("do_sample"))
    except (TypeError, ValueError):
        return True  # unreadable settings: refused with the same line


def _per_item_metrics(cfg: dict[str, Any]) -> list[str]:
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


def _filters(cfg: dict[str, Any]) -> list[str]:
    flist = cfg.get("filter_list")
    if not flist:
        return ["none"]
    return [str(f.get("name", "none")) for f in flist if isinstance(f, dict)]


def task_metrics(cfgs: dict[str, dict], kind: str,
             multi_input: bool) -> tuple[tuple[Metric, ...], str, str | None, tuple | None]:
    """(metrics, main, tie-break, extra continuous) of the task, the same for every language.

    Multiple-input tasks report acc only: their choices share one continuation, so a
    per-character normalisation would not change the prediction."""
    if kind == "loglikelihood":
        return (Metric("acc", "binary"),), "acc", None, ()
    first = next(iter(cfgs.values()))
    if kind == "multiple_choice":
        metrics = (Metric("acc", "binary"),) if multi_input else (Metric("acc", "binary"), Metric("acc_norm", "binary"))
        return metrics, "acc", "margin", None
    names, filters = _per_item_metrics(first), _filters(first)
    for name, cfg in cfgs.items():
        if (_per_item_metrics(cfg), _filters(cfg)) != (names, filters):
            raise UsageError(f"lm-eval task {name} reports other metrics or filters than {next(iter(cfgs))}; "
                             "one xlsteer task needs the same metrics in every language")
    if not names:
        raise UsageError(f"lm-eval task {next(iter(cfgs))} has no per-item metric (aggregation: mean); xlsteer "
                         "pairs scores item by item, so corpus-level metrics (bleu, chrf) cannot be used")
    metrics = tuple(Metric(metric_key(m, f, filters), "binary" if m in BINARY_METRICS else "continuous")
                    for f in filters for m in names)
    binary = [m.name for m in metrics if m.kind == "binary"]
    tie = binary[0] if binary and binary[0] != metrics[0].name else None
    return metrics, metrics[0].name, tie, ()


def metric_key(metric: str, flt: str, filters: Sequence[str]) -> str:
    return metric if len(filters) == 1 else f"{metric}:{flt}"


def task_splits(cfgs: dict[str, dict]) -> dict[str, str]:
    """xlsteer split -> lm-eval split, checked to be the same for every language."""
    out: dict[str, str] | None = None
    for name, cfg in cfgs.items():
        test, val, train = cfg.get("test_split"), cfg.get("validation_split"), cfg.get("training_split")
        mine = {}
        if test or val:
            mine["test"] = test or val
        if test and val:
            mine["dev"] = val
        if train:
            mine["train"] = train
        if "test" not in mine:
            raise UsageError(f"lm-eval task {name} declares neither test_split nor validation_split; add one")
        if out is not None and mine != out:
            raise UsageError(f"lm-eval task {name} has other splits ({mine}) than {next(iter(cfgs))} ({out}); "
                             "give every language the same splits")
        out = mine
    assert out is not None
    return out


def config_version(cfgs: dict[str, dict]) -> str:
    """Digest of everything that shapes the prompts: the configs, the Python files beside them and
    the local data files (the per-item cache is keyed by item id: edited documents must not reuse
    old scores)."""
    import lm_eval

    h = hashlib.sha256(json.dumps(cfgs, sort_keys=True, default=str).encode())
    h.update(str(getattr(lm_eval, "__version__", "")).encode())
    seen: set[Path] = set()
    for cfg in cfgs.values():
        folder = Path(cfg["_yaml_path"]).parent if cfg.get("_yaml_path") else None
        for py in sorted(folder.glob("*.py")) if folder and folder.is_dir() else ():
            if py not in seen:
                seen.add(py)
                h.update(py.read_bytes())
        for f in _local_data(cfg):
            h.update(Path(f).read_bytes())
    return h.hexdigest()[:12]


def local_files(cfg: dict[str, Any]) -> list[str]:
    """The task's YAML file and those of its data files that are local paths (for the data hash)."""
    return ([cfg["_yaml_path"]] if cfg.get("_yaml_path") else []) + _local_data(cfg)


def _local_data(cfg: dict[str, Any]) -> list[str]:
    data = (cfg.get("dataset_kwargs") or {}).get("data_files")
    values = data.values() if isinstance(data, dict) else [data] if data else []
    files = []
    for v in values:
        for f in (v if isinstance(v, list) else [v]):
            if isinstance(f, str) and Path(f).expanduser().is_file():
                files.append(str(Path(f).expanduser().resolve()))
    return files
