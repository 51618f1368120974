"""scripts/ablations.sh queues the prompting baselines as DVC experiments: each `dvc exp run` sets the method and the
base model, every switch set is a valid params override, and sft-rsgrpo still runs last. A fake `dvc` on PATH records
the calls, so nothing is trained."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from evisrag_core.config import parse_params

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_DVC = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$DVC_CALLS"
"""
BASELINES = {
    "prompt-baseline": "baseline",
    "prompt-baseline-concat": "baseline_concat",
    "prompt-cocot": "cocot",
    "prompt-ccot": "ccot",
    "prompt-ddcot": "ddcot",
    "prompt-evidence-oneshot": "evidence_oneshot",
}


def run_script(tmp_path: Path, *names: str) -> list[list[str]]:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "scripts" / "ablations.sh", project / "scripts" / "ablations.sh")
    shutil.copy2(REPO_ROOT / "params.yaml", project / "params.yaml")
    # the offline plots page the script builds when make has not (`make plots-page`); the fake dvc never reads it
    (project / ".dvc" / "plots").mkdir(parents=True)
    (project / ".dvc" / "plots" / "offline.html").write_text("{plot_divs}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dvc").write_text(FAKE_DVC)
    (bin_dir / "dvc").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DVC_CALLS": str(calls)}
    env["ABLATION_STUDY"] = "study-1"
    subprocess.run(["bash", "scripts/ablations.sh", *names], cwd=project, env=env, check=True, capture_output=True)
    return [line.split() for line in calls.read_text().splitlines()]


def overrides(call: list[str]) -> dict[str, str]:
    values = [call[i + 1] for i, word in enumerate(call) if word == "-S"]
    return dict(value.removeprefix("++").split("=", 1) for value in values)


def test_every_experiment_sets_a_method_and_valid_params(tmp_path: Path) -> None:
    runs = [call for call in run_script(tmp_path) if call[:2] == ["exp", "run"]]
    names = [call[call.index("-n") + 1].removesuffix("-1") for call in runs]
    assert names[-1] == "sft-rsgrpo" and set(BASELINES) <= set(names) and len(names) == 14
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for call, name in zip(runs, names, strict=True):
        assert call[-1] == "evaluate"
        switches = overrides(call)
        assert switches["predict.method"] == BASELINES.get(name, "evidence")
        raw = yaml.safe_load(yaml.safe_dump(params))
        for key, value in switches.items():
            section, *path, leaf = key.split(".")
            node = raw.setdefault(section, {})
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        parse_params(raw, f"ablation {name}")  # raises on an invalid switch


@pytest.mark.parametrize(("name", "method"), sorted(BASELINES.items()))
def test_a_prompting_baseline_predicts_with_the_base_model(tmp_path: Path, name: str, method: str) -> None:
    (run,) = [call for call in run_script(tmp_path, name) if call[:2] == ["exp", "run"]]
    switches = overrides(run)
    assert (switches["predict.method"], switches["predict.model_dir"]) == (method, "models/base")
    assert switches["tracking.tags.ablation"] == name
