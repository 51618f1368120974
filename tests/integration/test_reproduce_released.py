"""scripts/reproduce_released.sh up to where a GPU is needed: its params file (the reference profile on the local
model and data), its dry-run, its refusal without a GPU, and (slow) the whole run on CPU with the tiny model and the
embedded test sets laid out as hub snapshots, ending in the per-benchmark table."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import MakeRepo

from evisrag_core.config import parse_params

SCRIPT = "scripts/reproduce_released.sh"
# the embedded splits, renamed to two of the hub's test sets (the local import accepts only those names)
SNAPSHOT = {"ChartQA": "ColorSquare", "DocVQA": "ColorBackground"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, make_repo: MakeRepo) -> tuple[Path, dict[str, str]]:
    """A copy of this checkout: the script writes mlflow.db and .prefect/ where it runs."""
    root = tmp_path_factory.mktemp("reproduce") / "project"
    return root, make_repo(root, checkout=True)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """The tiny test sets in the hub layout: <dir>/EVisRAG-Test-<Name>/top3_test.jsonl with its images."""
    root = tmp_path_factory.mktemp("snapshot")
    for hub_name, split in SNAPSHOT.items():
        shutil.copytree(tiny_dataset / "test" / split, root / f"EVisRAG-Test-{hub_name}")
    return root


def run(project: tuple[Path, dict[str, str]], *args: str) -> subprocess.CompletedProcess[str]:
    root, env = project
    return subprocess.run(["bash", SCRIPT, *args], cwd=root, env=env, capture_output=True, text=True, timeout=900)


def test_dry_run_writes_the_reference_params_and_lists_the_steps(
    project: tuple[Path, dict[str, str]], snapshot: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--dry-run", "--out", str(out), "--model-dir", str(tiny_model_dir), "--data-dir", str(snapshot)]
    result = run(project, *args, "--benchmarks", "ChartQA,DocVQA", "--set", "predict.batch_size=4")
    assert result.returncode == 0, result.stderr
    params = parse_params(yaml.safe_load((out / "params.yaml").read_text()))
    assert (params.predict.profile, params.predict.max_pixels, params.predict.max_new_tokens) == (
        "reference",
        12_845_056,
        2048,
    )
    assert params.predict.batch_size == 4  # --set wins over the profile
    assert (params.data.source, params.data.local_dir, params.data.benchmarks) == (
        "local",
        str(snapshot.resolve()),
        ["ChartQA", "DocVQA"],
    )
    assert params.predict.model_dir == str(tiny_model_dir.resolve())
    assert "max_pixels             12845056" in result.stdout and "profile reference" in result.stdout
    commands = result.stdout.split("would run:\n")[1].split()
    stages = [commands[i + 3] for i, word in enumerate(commands) if word == "evisrag"]
    assert stages == ["download", "predict", "evaluate", "metrics"]  # a local model folder is used in place
    assert not (out / "preds").exists()


def test_the_hub_checkpoint_size_and_a_bad_override_are_checked(
    project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    result = run(project, "--dry-run", "--size", "3b", "--out", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    params = yaml.safe_load((tmp_path / "a" / "params.yaml").read_text())
    assert (params["model"]["name_or_path"], params["data"]["source"]) == ("openbmb/EVisRAG-3B", "hub")
    assert "  evisrag --params" in result.stdout and " model\n" in result.stdout
    bad = run(project, "--dry-run", "--size", "13b")
    assert bad.returncode == 2 and bad.stderr == "error: --size must be 7b or 3b, not '13b'\n"
    typo = run(project, "--dry-run", "--out", str(tmp_path / "b"), "--set", "predict.max_new_token=8")
    assert typo.returncode != 0 and "unknown key 'predict.max_new_token'" in typo.stderr


def test_without_a_gpu_it_stops_before_any_stage(project: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run(project, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: no CUDA GPU here: EVisRAG-7B needs one (pass --cpu")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_whole_run_on_cpu_prints_the_per_benchmark_table(
    project: tuple[Path, dict[str, str]], snapshot: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["--cpu", "--out", str(out), "--model-dir", str(tiny_model_dir), "--data-dir", str(snapshot)]
    root, env = project
    no_vllm = {**env, "EVISRAG_VLLM_PYTHON": str(tmp_path / "no-vllm-venv" / "python")}  # the fallback, on any machine
    result = run((root, no_vllm), *args, "--benchmarks", "ChartQA,DocVQA", "--set", "predict.max_new_tokens=8")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "table.txt").read_text()
    assert table in result.stdout
    rows = [line.split()[0] for line in table.splitlines()[1:]]
    assert rows == ["ChartQA", "DocVQA", "overall"]
    assert "global_em" in table.splitlines()[0]
    for hub_name in SNAPSHOT:
        preds = (out / "preds" / f"{hub_name}.jsonl").read_text().splitlines()
        assert len(preds) == 6  # every question predicted, one generate call each (batch size 1)
    assert "no vLLM environment here" in result.stderr  # the reference profile's backend note, logged
