"""DeepSpeed ZeRO-3 on CPU ranks, through the paper profile's code path (`sft.deepspeed: configs/deepspeed/zero3.json`
handed to the Trainer): `torchrun --nproc_per_node 2 -m flows.cli sft` trains the same model as one process does.

The reference is the ordinary single-process `evisrag sft` with the same global batch of 4 built from the same
micro-batches: 2 per step × 2 accumulation steps there, 2 per rank × 2 ranks here. The Trainer normalises the loss
by the token count of the whole global batch in both cases (`average_tokens_across_devices`), so the maths is the
same and only floating-point summation order may differ. Giving the reference one micro-batch of 4 instead would
pad the sequences to other widths; that alone moves the losses by 5e-6 and, through Adam, the weights by ~1 %.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import weight_updates

REPO_ROOT = Path(__file__).resolve().parents[2]
ZERO3 = REPO_ROOT / "configs" / "deepspeed" / "zero3.json"
STEPS = 6  # × global batch 4 = one epoch of the 24 tiny conversations
# Measured: identical losses, and weight updates within 3e-6 of each other (relative norm of their difference: Adam
# turns last-bit gradient differences into small update differences). A reference with other micro-batch shapes
# already differs by 5e-6 in the loss and 1e-2 in the updates, and the loss falls by > 1e-2 over the run: these bounds
# catch a different batch, loss weighting or update, and tolerate summation-order noise.
LOSS_RTOL = 2e-6
UPDATE_RTOL = 1e-3


def _params(raw: dict, run_dir: Path, **sft: object) -> Path:
    run_dir.mkdir()
    raw = {**raw, "tracking": {**raw["tracking"], "mlflow_tracking_uri": f"sqlite:///{run_dir / 'mlflow.db'}"}}
    raw["sft"] = {
        **raw["sft"],
        "out_dir": str(run_dir / "model"),
        "checkpoint_dir": str(run_dir / "ckpt"),
        "log_file": str(run_dir / "loss.json"),
        **sft,
    }
    path = run_dir / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run(command: list[str], run_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EVISRAG_"))}
    # One thread per process in both runs (torchrun's default per rank), so both compute with the same kernels.
    env.update(PREFECT_HOME=str(run_dir / "prefect"), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = json.loads((run_dir / "loss.json").read_text())
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


@pytest.mark.slow
def test_zero3_on_two_cpu_ranks_matches_the_single_process_run(tiny_dataset: Path, tiny_model_dir: Path, tmp_path):
    import torch

    from evisrag_core.data.schema import load_test_split
    from evisrag_core.modeling import load_model_and_processor
    from evisrag_core.predict import Decoding, TransformersBackend, build_requests

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["out_dir"] = str(tiny_dataset)
    raw["sft"].update(
        model_dir=str(tiny_model_dir),
        learning_rate=2e-3,
        max_steps=STEPS,
        warmup_steps=0,
        logging_steps=1,
        save_steps=STEPS,
        per_device_train_batch_size=2,
    )
    cli = ["-m", "flows.cli", "--params", "params.yaml", "sft"]
    single, ranks = tmp_path / "single", tmp_path / "zero3x2"
    _params(raw, single, gradient_accumulation_steps=2)
    _params(raw, ranks, gradient_accumulation_steps=1, deepspeed=str(ZERO3))
    _run([sys.executable, *cli], single)
    torchrun = str(Path(sys.executable).with_name("torchrun"))  # --standalone: a free port, not a fixed 29500
    _run([torchrun, "--standalone", "--nproc_per_node", "2", *cli], ranks)

    # Two ranks under ZeRO-3: the checkpoint holds one optimizer partition per rank, written by stage 3.
    shards = sorted((ranks / "ckpt" / f"checkpoint-{STEPS}").glob("global_step*/*optim_states.pt"))
    assert [p.name for p in shards] == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    shard = torch.load(shards[1], map_location="cpu", weights_only=False)
    assert shard["ds_config"]["zero_optimization"]["stage"] == 3
    assert (shard["optimizer_state_dict"]["zero_stage"], shard["optimizer_state_dict"]["partition_count"]) == (3, 2)
    # One stage run, not one per rank: rank 0 alone opened the Prefect flow run and the MLflow run.
    assert _rows(ranks / "prefect" / "prefect.db", "SELECT state_type FROM flow_run") == [("COMPLETED",)]
    assert _rows(ranks / "mlflow.db", "SELECT name, status FROM runs") == [("sft", "FINISHED")]

    reference, distributed = _losses(single), _losses(ranks)
    assert sorted(reference) == sorted(distributed) == list(range(1, STEPS + 1))
    assert reference[1] - reference[STEPS] > 1e-2, reference  # the curve moves far more than the tolerance
    for step, loss in reference.items():
        assert distributed[step] == pytest.approx(loss, rel=LOSS_RTOL), (step, reference, distributed)

    # The final model is the gathered ZeRO-3 weights (rank 0 wrote them): it loads, matches the single-process model,
    # and generates.
    model, processor = load_model_and_processor(ranks / "model")
    ref_model, _ = load_model_and_processor(single / "model")
    base, _ = load_model_and_processor(tiny_model_dir)
    update, ref_update = weight_updates((model, ref_model), base)
    assert ref_update.norm() > 0
    assert (update - ref_update).norm() / ref_update.norm() < UPDATE_RTOL
    split = tiny_dataset / "test" / "ColorSquare"
    request = build_requests(load_test_split(split)[:1], split, top_k=3, max_images=5)[0]
    pixels = (raw["sft"]["image_min_pixels"], raw["sft"]["image_max_pixels"])
    answers = [
        TransformersBackend(m, processor, Decoding(0.0, 1.0, 1.0, 16), "model_card", pixels).generate([request])[0]
        for m in (model, ref_model)
    ]
    assert answers[0] and answers[0] == answers[1]
