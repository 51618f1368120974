"""Security (issue 6): no remote code unless asked, safetensors only, no pickle loading of files, the hub token
never reaches MLflow, DVC or the logs, and servers started by our commands listen on 127.0.0.1 only."""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT

from evisrag_core.config import Params, load_params, parse_params

SECRET = "hf_notarealtoken_security_0123456789"
CODE_DIRS = ("evisrag_core", "tasks", "flows", "scripts", "bench", "tests")
# torch.load calls that may unpickle: only on a file the same test run has just written, never on an input.
TRUSTED_PICKLE_LOADS = {
    "tests/integration/test_sft_deepspeed.py": "a DeepSpeed shard written by the test's own training run"
}


def python_files() -> list[Path]:
    files = [p for folder in CODE_DIRS for p in (REPO_ROOT / folder).rglob("*.py")]
    return sorted(p for p in files if ".venv" not in p.parts)


def calls(tree: ast.AST, module: str, name: str) -> list[ast.Call]:
    """Calls spelled `module.name(...)` (e.g. torch.load, pickle.load)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == name:
            target = node.func.value
            if isinstance(target, ast.Name) and target.id == module:
                found.append(node)
    return found


def keyword(call: ast.Call, name: str) -> Any:
    for item in call.keywords:
        if item.arg == name and isinstance(item.value, ast.Constant):
            return item.value.value
    return None


# --- remote code and weights ------------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_params_turn_it_on() -> None:
    assert parse_params({}).model.trust_remote_code is False
    assert load_params(REPO_ROOT / "params.yaml").model.trust_remote_code is False
    assert parse_params({"model": {"trust_remote_code": True}}).model.trust_remote_code is True
    literal_true = []
    for path in python_files():
        if "tests" in path.relative_to(REPO_ROOT).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            literal = isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant)
            if literal and node.arg == "trust_remote_code" and node.value.value is True:
                literal_true.append(f"{path.relative_to(REPO_ROOT)}:{node.value.lineno}")
    assert literal_true == [], "trust_remote_code must come from params, never a literal True"


def test_trust_remote_code_on_logs_a_warning(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from evisrag_core.modeling import load_model_and_processor

    caplog.set_level(logging.WARNING, logger="evisrag_core.modeling")
    with pytest.warns(UserWarning, match="trust_remote_code is on"):
        load_model_and_processor(tiny_model_dir, trust_remote_code=True)
    assert any("trust_remote_code is on" in r.getMessage() for r in caplog.records)
    caplog.clear()
    load_model_and_processor(tiny_model_dir)
    assert not any("trust_remote_code" in r.getMessage() for r in caplog.records)


def test_folder_with_only_pytorch_model_bin_is_refused(tiny_model: tuple[Any, Any], tmp_path: Path) -> None:
    """Pickled weights can run code when loaded: a folder holding only pytorch_model.bin is not read."""
    import torch

    from evisrag_core.modeling import ModelLoadError, load_model_and_processor

    model, processor = tiny_model
    folder = tmp_path / "pickled"
    model.config.save_pretrained(folder)
    processor.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"cannot load a model from .*safetensors"):
        load_model_and_processor(folder)


def test_no_pickle_loading_of_files_in_the_project() -> None:
    """Every torch.load passes weights_only=True; pickle.load(s) and numpy allow_pickle=True are not used."""
    problems = []
    for path in python_files():
        relative = str(path.relative_to(REPO_ROOT))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in calls(tree, "torch", "load"):
            if keyword(call, "weights_only") is not True and relative not in TRUSTED_PICKLE_LOADS:
                problems.append(f"{relative}:{call.lineno}: torch.load without weights_only=True")
        for name in ("load", "loads", "Unpickler"):
            for module in ("pickle", "cloudpickle", "dill", "joblib"):
                problems += [f"{relative}:{c.lineno}: {module}.{name}" for c in calls(tree, module, name)]
        for call in calls(tree, "np", "load") + calls(tree, "numpy", "load"):
            if keyword(call, "allow_pickle") is True:
                problems.append(f"{relative}:{call.lineno}: numpy load with allow_pickle=True")
    assert problems == []


def test_the_pickle_scan_finds_what_it_looks_for() -> None:
    """The scan above is not vacuous: it flags each forbidden spelling."""
    tree = ast.parse(
        "torch.load(f)\ntorch.load(f, weights_only=False)\npickle.load(f)\nnp.load(f, allow_pickle=True)\n"
        "torch.load(f, weights_only=True)\n"
    )
    unsafe = [c for c in calls(tree, "torch", "load") if keyword(c, "weights_only") is not True]
    assert [c.lineno for c in unsafe] == [1, 2]
    assert len(calls(tree, "pickle", "load")) == 1 and keyword(calls(tree, "np", "load")[0], "allow_pickle") is True


# --- the hub token ----------------------------------------------------------------------------------------------------


def test_params_have_no_place_for_a_token() -> None:
    """The token is read from HF_TOKEN only: no params key can carry it into params.yaml, dvc.lock or MLflow."""

    def keys(model: type, prefix: str = "") -> list[str]:
        names = []
        for name, field in model.model_fields.items():
            names.append(prefix + name)
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                names += keys(field.annotation, f"{prefix}{name}.")
        return names

    secret_like = re.compile(r"(^|_)token$|secret|password|credential|api_key")
    assert [k for k in keys(Params) if secret_like.search(k.split(".")[-1])] == []


def test_mlflow_runs_never_record_the_hub_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real stage run (tasks.tracking.stage_run) and the pipeline's full params log, with HF_TOKEN set."""
    import mlflow

    from tasks import tracking

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = parse_params({"tracking": {"mlflow_tracking_uri": uri}, "data": {"source": "hub"}})
    with tracking.stage_run("download", params, ["data", "model", "tracking"]) as run:
        mlflow.log_params({f"all.{k}": v for k, v in tracking.flatten(params.model_dump(mode="json")).items()})
        run_id = run.info.run_id
    recorded = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data
    text = json.dumps({"params": recorded.params, "tags": recorded.tags})
    assert "data.source" in recorded.params  # the run really holds the logged params
    assert SECRET not in text and "HF_TOKEN" not in text


def test_dvc_params_never_hold_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """What DVC records per stage is params.yaml's sections: the flattened params carry no environment value."""
    from tasks import tracking

    monkeypatch.setenv("HF_TOKEN", SECRET)
    flat = tracking.flatten(load_params(REPO_ROOT / "params.yaml").model_dump(mode="json"))
    assert SECRET not in json.dumps(flat)
    assert SECRET not in (REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8")


# --- servers listen on 127.0.0.1 -------------------------------------------------------------------------------------

SERVER_COMMAND = re.compile(r"(prefect\W+server\W+start|mlflow\W+(?:ui|server)\b)")


def test_every_server_command_we_start_or_document_binds_loopback() -> None:
    """README, Makefile, scripts, flows and tests: each `prefect server start` / `mlflow ui|server` invocation names
    `--host 127.0.0.1` on its line (a reader copies the line; relying on defaults breaks when they change), and
    nothing binds 0.0.0.0."""
    sources = [REPO_ROOT / "README.md", REPO_ROOT / "Makefile", *python_files(), *(REPO_ROOT / "scripts").glob("*")]
    unbound, wildcard = [], []
    for path in sources:
        if path == Path(__file__) or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            where = f"{path.relative_to(REPO_ROOT)}:{number}"
            if "0.0.0.0" in line:
                wildcard.append(where)
            # A line that gives the command options is an invocation (shell or argv list), not prose.
            if SERVER_COMMAND.search(line) and "--" in line and "127.0.0.1" not in line:
                unbound.append(where)
    assert unbound == [] and wildcard == []


_LISTENING = """
import json, sys
from prefect.server.api.server import SubprocessASGIServer

server = SubprocessASGIServer()
server.start(timeout=120)
try:
    sockets = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.split(":")
            if state == "0A" and int(port, 16) == server.port:
                sockets.append(address)
    print(json.dumps({"port": server.port, "listening": sockets}))
finally:
    server.stop()
"""


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the kernel's socket table")
def test_prefect_ephemeral_server_of_our_commands_listens_on_loopback_only(tmp_path: Path) -> None:
    """Without PREFECT_API_URL every stage command runs Prefect's temporary server: it must not face the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run(
        [sys.executable, "-c", _LISTENING], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["listening"] and set(report["listening"]) == {"0100007F"}  # 127.0.0.1, little-endian hex
