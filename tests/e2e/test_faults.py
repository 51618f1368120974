"""Faults: every stage survives a SIGKILL, and the same params + seed give the same bytes on CPU.

One reduced project runs every stage uninterrupted (the reference); a second one, in another folder, checks
determinism against it. Then for each stage of download, sft, rsgrpo, predict, evaluate, a fresh folder gets the
reference's inputs and an old copy of the stage's output, the real `evisrag <stage>` process is SIGKILLed (with its
process group: the temporary Prefect server goes too) at a seeded random point after it started writing, and:

- each stage output is absent, the complete old one or the complete new one (no half-written output for DVC or the
  next stage);
- an append-only file (step log, prediction partials) gets a line torn by hand, as a kill mid-write leaves it;
- the rerun of the same command completes and its outputs equal the reference's byte for byte.

Bit-exact resume of RS-GRPO weights under real updates is covered by `tests/integration/test_rsgrpo_loop.py`
(`test_a_killed_run_resumes_to_the_same_weights`, a stub reward table gives the updates signal); the reduced real
rewards here give a random tiny model no advantage, so its weights do not move and this file checks its log, report,
checkpoints and RNG-driven rollouts instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import clean_env, small_params

pytestmark = pytest.mark.slow

# Stage → (inputs it reads, outputs it replaces whole, outputs it writes as it goes), relative to a project folder
# (see dvc.yaml). The HTML report grows page by page while RS-GRPO runs; nothing downstream reads it.
STAGE_FILES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "download": ([], ["data"], []),
    "sft": (["data", "models/base"], ["models/sft", "plots/sft_loss.json"], []),
    "rsgrpo": (
        ["data", "models/sft"],
        ["models/rsgrpo", "plots/rsgrpo.json", "plots/rsgrpo_val.json", "plots/rsgrpo_val_sampled.json"],
        ["reports/rsgrpo"],
    ),
    "predict": (["data", "models/rsgrpo"], ["preds"], []),
    "evaluate": (["data", "preds"], ["metrics.json", "eval/per_question.jsonl"], []),
}
ALL_STAGES = ["download", "model", "sft", "rsgrpo", "predict", "evaluate"]
TIMEOUT_S = 600

# Runs every stage through the real CLI entry point in one process: one interpreter start and one temporary Prefect
# server for the six stages (the reference runs need no kill, so they need no process per stage).
_RUN_STAGES = (
    "import sys\nfrom flows.cli import main\nfor stage in sys.argv[1:]:\n    assert main([stage]) == 0, stage\n"
)


def new_project(root: Path) -> Path:
    """A project folder holding only params.yaml (no git: each stage runs as its own command, DVC is not involved)."""
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(small_params(sft_steps=6, rsgrpo_steps=3, predict_batch_size=4))
    return root


def start_all_stages(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_STAGES, *ALL_STAGES],
        cwd=root,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, what: str) -> None:
    output, _ = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, f"{what} failed:\n{output[-5000:]}"


def hashes(root: Path, names: list[str]) -> dict[str, str]:
    """sha256 of every file under the named files/folders, keyed by path relative to `root`."""
    found: dict[str, str] = {}
    for name in names:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.exists():
                found[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def differing(first: dict[str, str], second: dict[str, str]) -> list[str]:
    return sorted(k for k in first.keys() | second.keys() if first.get(k) != second.get(k))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two uninterrupted runs of every stage in two folders, at the same time (they share the 2 cores)."""
    base = tmp_path_factory.mktemp("faults")
    first, second = new_project(base / "reference"), new_project(base / "second")
    started = time.monotonic()
    runs = [start_all_stages(first), start_all_stages(second)]
    for run, name in zip(runs, ("reference run", "second run"), strict=True):
        finish(run, name)
    print(f"\nreference + second run: {time.monotonic() - started:.1f} s")
    return first, second


def every_output() -> list[str]:
    return sorted({out for _, whole, grown in STAGE_FILES.values() for out in whole + grown} | {"models/base"})


def test_same_params_and_seed_give_identical_outputs_bit_for_bit(reference: tuple[Path, Path]) -> None:
    first, second = reference
    expected = hashes(first, every_output())
    assert "metrics.json" in expected and "models/sft/model.safetensors" in expected
    assert any(name.startswith("preds/") for name in expected)
    assert differing(expected, hashes(second, every_output())) == []


# --- kill points: each waits for a sign that the stage is writing, chosen with a seeded draw -----------------------


def count_files(folder_glob: Callable[[], list[Path]]) -> int:
    return sum(sum(len(files) for _, _, files in os.walk(folder)) for folder in folder_glob())


def count_rows(paths: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in paths if p.is_file())


def kill_point(stage: str, root: Path) -> tuple[str, Callable[[], bool]]:
    """(description, condition): the stage is killed as soon as the condition holds."""
    rng = random.Random(f"faults-{stage}")
    if stage == "download":
        files = rng.randint(1, 200)  # of the ~220 images and files the generator writes into its staging folder
        return f"{files} files in the staging folder", lambda: count_files(lambda: list(root.glob(".data.*"))) >= files
    if stage == "sft":
        rows = rng.randint(1, 5)  # of 6 logged steps; checkpoints every 2
        log = root / "work" / "sft" / "loss_history.jsonl"
        return f"{rows} logged steps", lambda: count_rows([log]) >= rows
    if stage == "rsgrpo":
        rows = rng.randint(1, 2)  # of 3 steps; a checkpoint after each
        log = root / "work" / "rsgrpo" / "metrics_history.jsonl"
        return f"{rows} logged steps", lambda: count_rows([log]) >= rows
    if stage == "predict":
        rows = rng.randint(1, 15)  # of 16 questions in batches of 4
        return f"{rows} predictions", lambda: count_rows(list(root.glob("work/predict/*/*.jsonl"))) >= rows
    # evaluate writes two small files in milliseconds: kill once it has begun (a temporary file appears in eval/,
    # or the planted per-question file has been replaced).
    planted = (root / "eval" / "per_question.jsonl").stat().st_ino
    return "first write in eval/", lambda: any(p.stat().st_ino != planted for p in (root / "eval").iterdir())


def kill_when(victim: subprocess.Popen, condition: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if victim.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the stage ended (code {victim.returncode}) before the kill point: {what}\n{tail}")
        assert time.monotonic() < deadline, f"kill point never reached: {what}"
        time.sleep(0.002)
    assert victim.poll() is None, f"the stage finished before the kill point: {what}"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()


# --- torn lines: what a kill in the middle of an append leaves -----------------------------------------------------


def tear_line(path: Path) -> None:
    """Cut the last line of an append-only file in half (no newline), as a kill mid-write leaves it."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])


def append_torn_row(path: Path) -> None:
    """A step log row is appended before its step's checkpoint, so a torn row is always the newest step's: append
    half of a next-step row."""
    last = json.loads(path.read_bytes().splitlines()[-1])
    row = json.dumps({**last, "step": last["step"] + 1}).encode()
    with path.open("ab") as handle:
        handle.write(row[: len(row) // 2])


def tear_append_only_files(stage: str, root: Path) -> str:
    if stage == "predict":
        partials = [p for p in root.glob("work/predict/*/*.jsonl") if p.stat().st_size]
        tear_line(max(partials, key=lambda p: p.stat().st_mtime_ns))
        return "prediction partial"
    logs = {"sft": "work/sft/loss_history.jsonl", "rsgrpo": "work/rsgrpo/metrics_history.jsonl"}
    if stage in logs and (root / logs[stage]).stat().st_size:
        append_torn_row(root / logs[stage])
        return "step log"
    return "nothing"


def plant_old_outputs(reference_root: Path, root: Path, outputs: list[str]) -> dict[str, str]:
    """Put a complete old output where the stage writes: the reference's, with one more newline at the end of its
    first JSON file (still valid, but not what the stage writes); returns its hashes."""
    for name in outputs:
        source, target = reference_root / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        text_file = target if target.is_file() else sorted(target.rglob("*.json*"))[0]
        with text_file.open("a", encoding="utf-8") as handle:
            handle.write("\n")
    return hashes(root, outputs)


def assert_whole_outputs(root: Path, reference_root: Path, outputs: list[str], old: dict[str, str]) -> None:
    """Each output is absent, the complete old one, or (when the kill came just after its atomic replace) the
    complete new one, equal to the uninterrupted run's: never a mix or a half-written file."""
    for name in outputs:
        now = hashes(root, [name])
        before = {k: v for k, v in old.items() if k == name or k.startswith(f"{name}/")}
        after = hashes(reference_root, [name])
        assert now in ({}, before, after), f"{name} is neither absent nor a complete old or new output after the kill"


@pytest.mark.parametrize("stage", list(STAGE_FILES))
def test_a_killed_stage_reruns_to_the_uninterrupted_outputs(
    stage: str, reference: tuple[Path, Path], tmp_path: Path
) -> None:
    reference_root = reference[0]
    inputs, outputs, grown = STAGE_FILES[stage]
    root = new_project(tmp_path / "project")
    for name in inputs:
        shutil.copytree(reference_root / name, root / name)
    old = plant_old_outputs(reference_root, root, outputs)
    command = ["evisrag", stage]

    started = time.monotonic()
    log = tmp_path / "killed-run.log"
    with log.open("wb") as output:
        victim = subprocess.Popen(
            command, cwd=root, env=clean_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    what, condition = kill_point(stage, root)
    kill_when(victim, condition, what, log)
    assert_whole_outputs(root, reference_root, outputs, old)
    torn = tear_append_only_files(stage, root)

    rerun = subprocess.run(command, cwd=root, env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, f"rerun of {stage} failed:\n{rerun.stdout[-3000:]}\n{rerun.stderr[-3000:]}"
    print(f"\n{stage}: killed at {what}, tore {torn}; kill + rerun {time.monotonic() - started:.1f} s")
    assert differing(hashes(reference_root, outputs + grown), hashes(root, outputs + grown)) == []
    leftovers = [p.name for p in root.rglob(".*") if p.name.endswith((".tmp", ".saving", ".partial", ".old"))]
    assert leftovers == [], f"a killed write left temporary files behind: {leftovers}"
