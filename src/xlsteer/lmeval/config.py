"""lm-eval task configs for :mod:`.tasks`: checking a task can be evaluated item by item, and
what it reports (metrics, splits, version digest, the local files to hash).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from ..errors import UsageError
from ..evaluation.tasks.spec import Metric
from . import harness

SUPPORTED = ("multiple_choice", "loglikelihood", "generate_until")
#: Per-item metrics that are 0/1 (McNemar applies); other per-item metrics are continuous.
BINARY_METRICS = frozenset({"acc", "acc_norm", "exact_match", "em", "accuracy"})


def task_config(tm: Any, name: str) -> dict[str, Any]:
    """The task's raw config (includes merged, functions as paths), checked to be a supported task."""
    entry_kind, cfg, yaml_path = harness.task_entry(tm, name)
    if entry_kind == "group":
        members = [m if isinstance(m, str) else m.get("task", "?") for m in cfg.get("task", [])]
        raise UsageError(f"{name} is an lm-eval group; name its tasks instead: lmeval:{','.join(map(str, members))}")
    if entry_kind != "task":
        raise UsageError(f"{name} is an lm-eval tag or Python task; name YAML tasks, one per language")
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
    cfg["_yaml_path"] = yaml_path
    return cfg


def _samples(gen: dict[str, Any]) -> bool:
    """Whether lm-eval would sample with these generation arguments (its own normaliser decides)."""
    try:
        with harness.quiet():  # it warns about contradictory settings
            return bool(harness.generation_settings(gen).get("do_sample"))
    except (TypeError, ValueError):
        return True  # unreadable settings: refused with the same line


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
    names, filters = harness.per_item_mean_metrics(first), _filters(first)
    for name, cfg in cfgs.items():
        if (harness.per_item_mean_metrics(cfg), _filters(cfg)) != (names, filters):
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


def task_splits(cfgs: dict[str, dict]) -> dict[str, dict[str, str]]:
    """Per task, xlsteer split -> lm-eval split: ``test`` = its test split (else its validation
    split), ``dev`` = its validation split when it has both, ``train`` = its training split. Each
    language has its own (one may lack a dev split: it is evaluated but left out of dev selection)."""
    out: dict[str, dict[str, str]] = {}
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
        out[name] = mine
    return out


#: Config keys that say where things are, not what the prompts are (left out of the digest).
_WHERE = ("_yaml_path", "cache_dir")


def _portable(value: Any) -> Any:
    """A config with every path replaced by what it names: a file by its bytes' digest, a function
    reference (``/path/utils.fn``) by its module's file name and the function — the digest must not
    depend on how a path is spelled (relative, absolute, through a symlink) or where the files live."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items() if k not in _WHERE}
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if not isinstance(value, str) or ("/" not in value and "\\" not in value):
        return value
    path = Path(value).expanduser()
    if path.is_file():
        return "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
    module, _, function = value.rpartition(".")
    if module and Path(module + ".py").is_file():
        return f"function:{Path(module).name}.{function}"  # the module's bytes are digested apart
    if path.is_dir():
        return "folder"
    return value


def config_version(cfgs: dict[str, dict]) -> str:
    """Digest of everything that shapes the prompts: the configs (paths replaced by the content they
    name), the Python files beside them and the local data files. The per-item cache is keyed by
    item id: edited documents must not reuse old scores, and a path spelled another way must."""
    portable = {name: _portable(cfg) for name, cfg in cfgs.items()}
    h = hashlib.sha256(json.dumps(portable, sort_keys=True, default=str).encode())
    h.update(harness.version().encode())
    seen: set[Path] = set()
    for cfg in cfgs.values():
        for py in _python_files(cfg):
            if py not in seen:
                seen.add(py)
                h.update(py.read_bytes())
        for f in _local_data(cfg):
            h.update(Path(f).read_bytes())
    return h.hexdigest()[:12]


def _python_files(cfg: dict[str, Any]) -> list[Path]:
    folder = Path(cfg["_yaml_path"]).parent if cfg.get("_yaml_path") else None
    return sorted(p.resolve() for p in folder.glob("*.py")) if folder and folder.is_dir() else []


def _included_yaml(cfg: dict[str, Any]) -> list[str]:
    """The YAML files the task's YAML includes (``include: base.yaml``, beside it), as far as they exist."""
    path = Path(cfg["_yaml_path"]) if cfg.get("_yaml_path") else None
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("include:"):
            name = line.split(":", 1)[1].strip().strip("'\"")
            if name and (path.parent / name).is_file():
                out.append(str((path.parent / name).resolve()))
    return out


def local_files(cfg: dict[str, Any]) -> list[str]:
    """Every user file the task reads, absolute (for the data hash, by content wherever it lives):
    its YAML, the YAML files it includes, the Python files beside it and its local data files."""
    yaml_path = [str(Path(cfg["_yaml_path"]).resolve())] if cfg.get("_yaml_path") else []
    return yaml_path + _included_yaml(cfg) + [str(p) for p in _python_files(cfg)] + _local_data(cfg)


def _local_data(cfg: dict[str, Any]) -> list[str]:
    data = (cfg.get("dataset_kwargs") or {}).get("data_files")
    values = data.values() if isinstance(data, dict) else [data] if data else []
    files = []
    for v in values:
        for f in (v if isinstance(v, list) else [v]):
            if isinstance(f, str) and Path(f).expanduser().is_file():
                files.append(str(Path(f).expanduser().resolve()))
    return files
