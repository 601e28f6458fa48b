"""Safe loading: no pickle anywhere, remote code off by default, and no network access.

The source checks read every module's syntax tree (not just text), so a call split over lines
or an alias (``import pickle as p``) is caught too; a plain text scan backs them up. The
network check runs real ``xlsteer`` processes with a ``sitecustomize`` that makes every
internet connection (and name lookup) fail and records the attempt: a run on a local model and
the local data must not try any, even with HF_HUB_OFFLINE unset.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

import xlsteer
from xlsteer.testing import tiny_model

SRC = Path(xlsteer.__file__).resolve().parent
FILES = sorted(SRC.rglob("*.py"))
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _trees():
    for path in FILES:
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_const(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_there_is_source_to_check():
    assert len(FILES) > 30 and SRC.name == "xlsteer"


def test_no_pickle_loading_anywhere():
    problems = []
    for path, tree in _trees():
        aliases = {}  # local name -> module, e.g. {"torch": "torch", "pk": "pickle"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    aliases[a.asname or a.name.split(".")[0]] = a.name
                    if a.name.split(".")[0] in PICKLE_MODULES - {"pickle", "marshal"}:
                        problems.append(f"{path.name}:{node.lineno} imports {a.name}")
            elif isinstance(node, ast.ImportFrom) and node.module:
                root = node.module.split(".")[0]
                for a in node.names:
                    if root in PICKLE_MODULES or (root == "torch" and a.name == "load"):
                        problems.append(f"{path.name}:{node.lineno} imports {a.name} from {node.module}")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = aliases.get(_dotted(node.func.value), _dotted(node.func.value))
            name = f"{owner}.{node.func.attr}"
            where = f"{path.name}:{node.lineno} {name}"
            if name == "torch.load" and not _is_const(_kw(node, "weights_only"), True):
                problems.append(f"{where} without weights_only=True")
            if owner in PICKLE_MODULES and node.func.attr in ("load", "loads", "Unpickler"):
                problems.append(where)
            if node.func.attr == "load" and owner in ("numpy", "np") and _is_const(_kw(node, "allow_pickle"), True):
                problems.append(f"{where} with allow_pickle=True")
            if _is_const(_kw(node, "weights_only"), False):
                problems.append(f"{where} with weights_only=False")
            if _is_const(_kw(node, "use_safetensors"), False):
                problems.append(f"{where} with use_safetensors=False")
    assert problems == []


def test_no_pickle_loading_by_text():
    """A plain scan as a backstop for what the syntax check might not resolve."""
    bad = re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)|\bpickle\.loads?\(|\bjoblib\.load\(")
    hits = [f"{p.name}:{n}: {line.strip()}" for p in FILES
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bad.search(line)]
    assert hits == []


def test_trust_remote_code_defaults_to_false_everywhere():
    problems = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                value = _kw(node, "trust_remote_code")
                if value is not None and not isinstance(value, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) \
                        and not _is_const(value, False):
                    problems.append(f"{path.name}:{node.lineno} passes trust_remote_code={ast.unparse(value)}")
                # click options: --trust-remote-code must be an off-by-default flag
                if any(isinstance(a, ast.Constant) and a.value == "--trust-remote-code" for a in node.args):
                    if not _is_const(_kw(node, "is_flag"), True) or _is_const(_kw(node, "default"), True):
                        problems.append(f"{path.name}:{node.lineno} --trust-remote-code is not an off flag")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                pos = args.posonlyargs + args.args
                defaults = dict(zip([a.arg for a in pos][len(pos) - len(args.defaults):], args.defaults))
                defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
                if "trust_remote_code" in defaults and not _is_const(defaults["trust_remote_code"], False):
                    problems.append(f"{path.name}:{node.lineno} {node.name}(trust_remote_code="
                                    f"{ast.unparse(defaults['trust_remote_code'])})")
    assert problems == []


def test_every_cli_trust_remote_code_option_is_off_by_default():
    from xlsteer.cli import cli

    found = []

    def walk(cmd: click.Command, path: str) -> None:
        for p in cmd.params:
            if p.name == "trust_remote_code":
                found.append(path)
                assert p.is_flag and p.get_default(click.Context(cmd)) is False, path
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(cli, "xlsteer")
    assert "xlsteer eval" in found and "xlsteer collect" in found


# ---- no network -------------------------------------------------------------------------------

SITECUSTOMIZE = r'''
"""Test guard: every internet connection and name lookup fails, and is recorded."""
import json, os, socket

_LOG = os.environ["XLSTEER_NET_LOG"]


def _record(call, args):
    with open(_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"call": call, "args": repr(args)[:300], "pid": os.getpid()}) + "\n")


def _refuse(call):
    def refuse(*args, **kwargs):
        _record(call, args)
        raise OSError(101, f"network access blocked by the test ({call})")
    return refuse


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        return _refuse("socket.connect")(address)
    return _connect(self, address)


def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        return _refuse("socket.connect_ex")(address)
    return _connect_ex(self, address)


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.create_connection = _refuse("socket.create_connection")
socket.getaddrinfo = _refuse("socket.getaddrinfo")
socket.gethostbyname = _refuse("socket.gethostbyname")
_record("guard loaded", ())
'''


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_network")
    (root / "guard").mkdir()
    (root / "guard" / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    lm = tiny_model("llama")
    lm.model.save_pretrained(root / "tiny")
    lm.tokenizer.save_pretrained(root / "tiny")

    def run(args: list[str], log: Path, timeout: int = 300) -> tuple[subprocess.CompletedProcess, list[dict]]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "XLSTEER_DEBUG")}
        env.update(PYTHONPATH=os.pathsep.join([str(root / "guard"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   XLSTEER_NET_LOG=str(log), XLSTEER_QUIET="1", OMP_NUM_THREADS="1",
                   XLSTEER_CACHE_DIR=str(root / "cache"))
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout, cwd=root)
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.exists() else []
        return proc, records

    return {"root": root, "model": str(root / "tiny"), "run": run}


def _xlsteer() -> list[str]:
    script = Path(sys.executable).parent / "xlsteer"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "xlsteer"]


def test_the_guard_catches_a_connection(guarded, tmp_path):
    code = ("import socket\ntry:\n    socket.create_connection(('example.org', 443), timeout=1)\n"
            "except OSError:\n    pass")
    _, records = guarded["run"]([sys.executable, "-c", code], tmp_path / "net.log")
    calls = [r["call"] for r in records]
    assert calls == ["guard loaded", "socket.create_connection"]


def test_eval_on_a_local_model_never_touches_the_network(guarded, tmp_path):
    out = tmp_path / "out.json"
    proc, records = guarded["run"](_xlsteer() + [
        "eval", "--model", guarded["model"], "--task", "xcopa", "--langs", "en,sw", "--split", "dev", "--limit", "3",
        "-o", str(out)], tmp_path / "net.log")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert records and records[0]["call"] == "guard loaded", "the guard was active"
    assert [r for r in records if r["call"] != "guard loaded"] == []


@pytest.mark.slow
def test_lm_eval_on_local_xcopa_never_touches_the_network(guarded, tmp_path):
    """lm-eval reads the XCOPA files through datasets, which used to ping S3 for download counts."""
    out = tmp_path / "lm.json"
    proc, records = guarded["run"](_xlsteer() + [
        "lm-eval", "--model", guarded["model"], "--tasks", "xcopa_sw", "--limit", "3", "-o", str(out)],
        tmp_path / "net.log")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert [r for r in records if r["call"] != "guard loaded"] == []
