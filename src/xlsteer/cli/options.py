"""Options shared by several commands, and their parsing into API values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from ..errors import UsageError
from .guard import Input, data_input, model_input

F = Callable[..., Any]


def model_options(f: F) -> F:
    """--model/--dtype/--device/--device-map/--trust-remote-code/--allow-download."""
    decorators = [
        click.option("--model", "-m", default="gemma3-270m", show_default=True, type=Input(),
                     help="Shipped model name, local folder, or hub id (with --allow-download)."),
        click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32",
                     show_default=True, help="Weights dtype (float32 is fastest on CPUs without bf16 units)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ..."),
        click.option("--device-map", default=None, help="accelerate device map, e.g. auto (multi-GPU)."),
        click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default)."),
        click.option("--allow-download", is_flag=True, help="Allow downloading a hub model (needs network)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def intervention_plugins(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback of the ``--intervention`` options: an intervention file made with a plugin
    this process has not loaded is refused at once, in one line naming the plugin."""
    from ..interventions.base import require_file_plugins

    for path in (value if isinstance(value, (list, tuple)) else [value]):
        if path is not None and Path(path).is_file():
            require_file_plugins(path)
    return value


def load_model_from(kw: dict[str, Any]):
    """Pop the model options from a command's kwargs and load the model.

    In a data-parallel launch (torchrun / accelerate launch) each process holds a whole model:
    ``--device cuda`` means this process's GPU (``cuda:LOCAL_RANK``) and ``--device-map`` is refused.
    """
    from ..distributed import current
    from ..models.loading import load_model

    dist = current()
    device, device_map = kw.pop("device"), kw.pop("device_map")
    if dist.active and device_map is not None:
        raise UsageError(f"--device-map spreads one model over devices, but this is a data-parallel launch of "
                         f"{dist.world} processes that each hold a whole model; drop --device-map "
                         "(use --device cuda) or run a single process")
    return load_model(
        kw.pop("model"),
        dtype=kw.pop("dtype"),
        device=dist.device(device),
        device_map=device_map,
        trust_remote_code=kw.pop("trust_remote_code"),
        allow_download=kw.pop("allow_download"),
    )


_COMPILE = {"auto": "auto", "true": True, "false": False, "inductor": "inductor", "aot_eager": "aot_eager",
            "eager": "eager"}


def compile_option(f: F) -> F:
    """--compile [auto|true|false|BACKEND]: compiled generation (alone: true; default auto = on CUDA)."""
    return click.option("--compile", "compile_", type=click.Choice(list(_COMPILE)), is_flag=False, flag_value="true",
                        default="auto", show_default=True,
                        help="Generate with a static KV cache and a compiled decode step (same tokens); "
                             "auto: on CUDA only; a backend name (inductor, aot_eager, eager) picks it.")(f)


def compile_setting(kw: dict[str, Any]) -> bool | str:
    """The API value of --compile."""
    return _COMPILE[kw.get("compile_") or "auto"]


def data_dir_option(f: F) -> F:
    return click.option("--data-dir", default=None, envvar="XLSTEER_DATA_DIR", type=Input(data_dir=True),
                        help="Data directory (default: $XLSTEER_DATA_DIR, else ../shared/data, else the per-user data dir).")(f)


TASK_HELP = ("Benchmark: a built-in task ({names}), lmeval:NAME[,NAME...] (lm-evaluation-harness tasks, one per "
             "language), or the path of a task spec .yaml over JSONL files (see docs/tasks.md).")


def task_options(f: F, required: bool = True) -> F:
    """--task (any task reference), --include-path and --task-langs (for lm-eval tasks)."""
    from ..evaluation.tasks.spec import BUILTIN

    decorators = [
        click.option("--task", required=required, default=None, type=Input(), help=TASK_HELP.format(names=", ".join(BUILTIN))),
        click.option("--include-path", "include_path", multiple=True, type=Input(file_okay=False),
                     help="lmeval: tasks: a folder of lm-eval task YAML files (repeatable)."),
        click.option("--task-langs", default=None,
                     help="lmeval: tasks: the language of each task where its name does not say, e.g. "
                          "mytask_a:sw,mytask_b:yo."),
        click.option("--task-parallel", is_flag=True, default=None,
                     help="lmeval: tasks: document i of every language is the same item (translations), so "
                          "agreement across languages is computed (default: only when the documents' ids match; "
                          "a JSONL spec declares parallel: in the spec)."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def resolve_task_from(kw: dict[str, Any]) -> Any:
    """The TaskSpec the --task reference names (registering a user task for this process)."""
    from ..evaluation.tasks import resolve_task

    parallel = kw.get("task_parallel") or None
    if parallel and not str(kw["task"]).strip().lower().startswith("lmeval:"):
        raise UsageError("--task-parallel applies to lmeval: task lists; a JSONL spec declares parallel: true in "
                         "the spec, a built-in task knows how its items pair")
    specs = resolve_task(kw["task"], include_path=tuple(kw.get("include_path") or ()),
                         task_langs=kw.get("task_langs"), data_dir=kw.get("data_dir"), parallel=parallel)
    if len(specs) != 1:
        raise UsageError(f"--task {kw['task']} names {len(specs)} benchmarks; evaluate one at a time")
    return specs[0]


def task_inputs(spec: Any, kw: dict[str, Any]) -> list[str]:
    """What a user task reads, for the outputs-spare-inputs check: its spec file, the lm-eval
    include folders and its own data files (a built-in's files are in the data dir, checked as such)."""
    from pathlib import Path as _Path

    own = {f for lang in spec.langs for split in spec.splits for f in spec.data_files(lang, split)
           if _Path(f).is_absolute()}
    ref = [str(kw["task"])] if _Path(str(kw["task"])).is_file() else []
    return [*ref, *(str(p) for p in kw.get("include_path") or ()), *sorted(own)]


def task_langs(task: Any, anchor: str = "en") -> list[str]:
    """A task's languages, the anchor first: what ``--langs all`` means for that task."""
    from ..data.langs import normalize_lang
    from ..evaluation.tasks import get_task

    langs = list(get_task(task).langs)
    anchor = normalize_lang(anchor)
    return ([anchor] if anchor in langs else []) + [lang for lang in langs if lang != anchor]


def langs_for(text: str | None, spec: Any, anchor: str = "en") -> list[str]:
    """--langs for a task: given codes or 'all'; omitted, a user task's own languages (a built-in
    benchmark has too many to guess: it needs --langs)."""
    if text is None or not text.strip():
        if spec.source.get("kind") == "builtin":
            raise UsageError(f"pass --langs for {spec.name}, e.g. --langs en,{spec.langs[0]} (or all)")
        text = "all"
    return parse_langs(text, all_langs=task_langs(spec, anchor))


def parse_langs(text: str | None, *, allow_auto: bool = False, all_langs: list[str] | None = None) -> list[str]:
    """Comma-separated language codes, normalised (de,deu,German? -> de); ``all`` = ``all_langs``."""
    from ..data.langs import normalize_lang

    if text is None or not text.strip():
        raise UsageError("no languages given; pass --langs as comma-separated codes, e.g. de,sw,zh")
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if allow_auto and part == "auto":
            out.append("auto")
            continue
        if part.lower() == "all":
            if all_langs is None:
                raise UsageError("--langs all needs a task; list the languages instead, e.g. de,sw,zh")
            out.extend(lang for lang in all_langs if lang not in out)
            continue
        code = normalize_lang(part)
        if code not in out:
            out.append(code)
    if not out:
        raise UsageError("no languages given; pass --langs as comma-separated codes, e.g. de,sw,zh")
    return out


def parse_layers(text: str | None, n_layers: int) -> list[int] | None:
    """'6', '4-8', '2,5,9', 'all' -> layer indices (checked against the model)."""
    if text is None:
        return None
    if text.strip() == "all":
        return list(range(n_layers))
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                layers.extend(range(int(lo), int(hi) + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise UsageError(f"cannot parse layers '{text}'; write e.g. 6, 4-8 or 2,5,9") from None
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise UsageError(f"layer {layer} is out of range: this model has layers 0..{n_layers - 1}")
    return sorted(set(layers))


def parse_float(text: str, name: str) -> float:
    from ..interventions.base import check_alpha

    return check_alpha(text, name)


MAX_COUNT = 2**31 - 1  # sizes beyond this overflow tokenizers and tensor shapes
SEED = click.IntRange(0, 2**32 - 1)  # what numpy, torch and scikit-learn all accept


def count(minimum: int = 1) -> click.IntRange:
    """An integer option from ``minimum`` to MAX_COUNT, checked when the command line is parsed."""
    return click.IntRange(min=minimum, max=MAX_COUNT)


class FiniteFloat(click.ParamType):
    """A float option that must be finite (NaN or infinity would be saved, or fail after the work)."""

    name = "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = FiniteFloat()


class SiteName(click.ParamType):
    """A site name (resid_post, mlp_act, ...), checked when the command line is parsed."""

    name = "site"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from ..models.sites import site_names

        if value not in site_names():
            self.fail(f"unknown site {str(value)[:40]!r}; choose one of {', '.join(site_names())}", param, ctx)
        return str(value)


class FiniteRange(FiniteFloat):
    """A finite float option within ``(lo, hi]`` (checked when the command line is parsed)."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        number = super().convert(value, param, ctx)
        if not self.lo < number <= self.hi:
            self.fail(f"{value!r} is not in ({self.lo:g}, {self.hi:g}]", param, ctx)
        return number


def spare_inputs(outputs: list[Any], inputs: list[Any], *, model: str | None = None,
                 data_dir: str | None | bool = False) -> None:
    """Refuse an output that would overwrite an input, before any work (see xlsteer.io).

    ``model`` is the --model value; ``data_dir`` the --data-dir value (None: the default data
    dir; False: the command reads no data dir).
    """
    from ..io import check_outputs_spare_inputs

    extra = [model_input(model)]
    if data_dir is not False:
        extra.append(data_input(data_dir))  # type: ignore[arg-type]
    check_outputs_spare_inputs(outputs, [*inputs, *extra])


def checked_cache_dir(path: str | Path) -> Path:
    """A per-item cache folder that exists or can be created, and can be written (checked before any work)."""
    from ..io import check_writable

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--cache-dir {folder} is a file, not a folder; give a folder, or pass --no-cache")
    try:
        check_writable(folder / "cache.jsonl")
    except UsageError as e:
        reason = str(e).split(";")[0].split(": ", 1)[-1]
        raise UsageError(f"--cache-dir {folder} cannot be written ({reason}); give a writable folder, or pass "
                         "--no-cache") from None
    return folder
