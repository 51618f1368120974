"""A checkpoint folder is resumed only by a run of the same configuration (evisrag_core.resume).

The bug this guards against: `dvc exp run -S rsgrpo.mode=grpo` after a finished RS-GRPO run "resumed" the finished
step-30 checkpoint and handed DVC the RS-GRPO model as the GRPO one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from evisrag_core.config import RSGRPOParams, SFTParams
from evisrag_core.resume import FINGERPRINT_FILE, file_fingerprint, guard_checkpoint_dir, run_fingerprint
from evisrag_core.rsgrpo.train import resumable_checkpoint as rsgrpo_resumable
from evisrag_core.sft.train import resumable_checkpoint as sft_resumable


def inputs(tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text('{"hidden_size": 128}')
    (model / "model.safetensors").write_bytes(b"weights" * 100)
    data = tmp_path / "rl.jsonl"
    data.write_text('{"id": "q1"}\n')
    return {"model": model, "prompts": data}


def plant_checkpoint(checkpoint_dir: Path, name: str = "step-000010") -> Path:
    (checkpoint_dir / name).mkdir(parents=True)
    (checkpoint_dir / name / "state.json").write_text("{}")
    return checkpoint_dir / name


def test_a_new_folder_is_not_resumed_and_gets_the_fingerprint(tmp_path: Path) -> None:
    fingerprint = run_fingerprint({"lr": 1e-3}, 0, inputs(tmp_path))
    checkpoint_dir = tmp_path / "work"
    assert guard_checkpoint_dir(checkpoint_dir, fingerprint) is False
    assert json.loads((checkpoint_dir / FINGERPRINT_FILE).read_text()) == fingerprint
    plant_checkpoint(checkpoint_dir)
    assert guard_checkpoint_dir(checkpoint_dir, fingerprint) is True  # the rerun after a kill resumes
    assert (checkpoint_dir / "step-000010").is_dir()


def retrain_model(params: dict, seed: int, files: dict[str, Path]) -> tuple[dict, int]:
    (files["model"] / "model.safetensors").write_bytes(b"retrained")
    return params, seed


def regenerate_prompts(params: dict, seed: int, files: dict[str, Path]) -> tuple[dict, int]:
    files["prompts"].write_text('{"id": "q2"}\n')
    return params, seed


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda params, seed, files: ({**params, "mode": "grpo"}, seed), "params.mode"),
        (lambda params, seed, files: ({k: v for k, v in params.items() if k != "mode"}, seed), "params.mode"),
        (lambda params, seed, files: (params, seed + 1), "seed"),
        (retrain_model, "inputs"),
        (regenerate_prompts, "inputs"),
    ],
    ids=["param-changed", "param-removed", "seed", "start-model", "training-file"],
)
def test_another_configuration_empties_the_folder(tmp_path, caplog, change, reason) -> None:
    files = inputs(tmp_path)
    params, seed = {"mode": "rsgrpo", "lr": 5e-5}, 0
    checkpoint_dir = tmp_path / "work"
    guard_checkpoint_dir(checkpoint_dir, run_fingerprint(params, seed, files))
    plant_checkpoint(checkpoint_dir)
    (checkpoint_dir / "metrics_history.jsonl").write_text('{"step": 10}\n')

    new_params, new_seed = change(params, seed, files)
    new = run_fingerprint(new_params, new_seed, files)
    with caplog.at_level(logging.WARNING):
        assert guard_checkpoint_dir(checkpoint_dir, new) is False
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == [FINGERPRINT_FILE]
    assert json.loads((checkpoint_dir / FINGERPRINT_FILE).read_text()) == new
    assert reason in caplog.text and "starting over" in caplog.text


@pytest.mark.parametrize("stored", [None, "{torn", json.dumps({"params": {}, "seed": 0, "inputs": {}})])
def test_checkpoints_without_a_matching_fingerprint_are_not_resumed(tmp_path: Path, stored: str | None) -> None:
    checkpoint_dir = tmp_path / "work"
    plant_checkpoint(checkpoint_dir)
    if stored is not None:
        (checkpoint_dir / FINGERPRINT_FILE).write_text(stored)
    assert guard_checkpoint_dir(checkpoint_dir, run_fingerprint({"lr": 1}, 0, inputs(tmp_path))) is False
    assert not (checkpoint_dir / "step-000010").exists()


def test_only_the_main_rank_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint_dir = tmp_path / "work"
    plant_checkpoint(checkpoint_dir)
    monkeypatch.setenv("RANK", "1")
    assert guard_checkpoint_dir(checkpoint_dir, run_fingerprint({"lr": 1}, 0, inputs(tmp_path))) is False
    assert (checkpoint_dir / "step-000010").is_dir() and not (checkpoint_dir / FINGERPRINT_FILE).exists()


def test_file_fingerprint_sees_size_and_both_ends_of_large_files(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    blob = bytearray(b"\0" * (3 << 20))
    path.write_bytes(blob)
    original = file_fingerprint(path)
    for offset in (0, len(blob) - 1):
        changed = bytearray(blob)
        changed[offset] = 1
        path.write_bytes(changed)
        assert file_fingerprint(path) != original, offset
    path.write_bytes(blob + b"\0")
    assert file_fingerprint(path) != original
    small = tmp_path / "config.json"
    small.write_text('{"a": 1}')
    first = file_fingerprint(small)
    small.write_text('{"a": 2}')
    assert file_fingerprint(small) != first  # small files are hashed whole


def test_rsgrpo_mode_switch_does_not_resume_a_finished_run(tmp_path: Path) -> None:
    files = inputs(tmp_path)
    cfg = RSGRPOParams(model_dir=str(files["model"]), checkpoint_dir=str(tmp_path / "work"))
    assert rsgrpo_resumable(cfg, files["prompts"], 0) is None
    plant_checkpoint(tmp_path / "work", "step-000030")
    assert rsgrpo_resumable(cfg, files["prompts"], 0) == tmp_path / "work" / "step-000030"
    # where and how often to write do not matter; what is trained does
    relocated = cfg.model_copy(update={"report_every": 5, "save_every": 3, "out_dir": str(tmp_path / "elsewhere")})
    assert rsgrpo_resumable(relocated, files["prompts"], 0) == tmp_path / "work" / "step-000030"
    assert rsgrpo_resumable(cfg.model_copy(update={"mode": "grpo"}), files["prompts"], 0) is None
    assert not (tmp_path / "work" / "step-000030").exists()


def test_sft_learning_rate_change_does_not_resume(tmp_path: Path) -> None:
    files = inputs(tmp_path)
    cfg = SFTParams(model_dir=str(files["model"]), checkpoint_dir=str(tmp_path / "work"))
    assert sft_resumable(cfg, files["prompts"], 0) is None
    plant_checkpoint(tmp_path / "work", "checkpoint-50")
    (tmp_path / "work" / "checkpoint-50" / "trainer_state.json").write_text("{}")
    assert sft_resumable(cfg.model_copy(update={"logging_steps": 1}), files["prompts"], 0) == str(
        tmp_path / "work" / "checkpoint-50"
    )
    assert sft_resumable(cfg.model_copy(update={"learning_rate": 1e-4}), files["prompts"], 0) is None
    assert not (tmp_path / "work" / "checkpoint-50").exists()
