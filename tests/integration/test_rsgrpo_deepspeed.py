"""RS-GRPO's policy update under DeepSpeed ZeRO-2 on 2 CPU ranks (`rsgrpo.deepspeed: configs/deepspeed/zero2.json`):
`torchrun --nproc_per_node 2 -m flows.cli rsgrpo` trains what one process trains.

Both runs go through the real CLI (rank 0 runs the Prefect flow and the MLflow run, rank 1 trains beside it) from a
small driver that swaps the reward *table* for a deterministic function of the generated text (the tiny model is
random: real rewards are all equal and no advantage survives; tests/integration/test_rsgrpo_loop.py does the same).

What makes the two runs comparable:
- rollouts: `rollout_seeding: group` seeds every prompt's group by its draw position, so rank 1 sampling groups
  2k+1 gives the tokens the single process samples for them;
- the update: the same micro-batches (4 responses = one group each) with their span-token shares taken over the
  whole batch; the single process accumulates the 2 micro-batches, the ranks run one each and DeepSpeed averages
  (each rank's loss ×2). Only the order of floating-point sums differs, and DeepSpeed clips the same global norm.
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
ZERO2 = REPO_ROOT / "configs" / "deepspeed" / "zero2.json"
STEPS = 3
# Losses are sums of the same terms in another order (float32); 1e-4 is far below the step-to-step change.
LOSS_RTOL = 1e-4
UPDATE_RTOL = 1e-3

DRIVER = """
import sys, zlib
sys.path.insert(0, {root!r})
from evisrag_core.rsgrpo import step as rsgrpo_step
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS


def table(response, ground_truth, response_length, **limits):
    components = {{name: zlib.crc32(f"{{name}}{{response}}".encode()) % 1000 / 1000 for name in REWARD_COMPONENTS}}
    return {{"overall": sum(components.values()), **components}}


rsgrpo_step.score = table
from flows.cli import main

sys.exit(main(["--params", "params.yaml", "rsgrpo"]))
"""


def _params(raw: dict, run_dir: Path, **rsgrpo: object) -> Path:
    run_dir.mkdir()
    raw = {**raw, "tracking": {**raw["tracking"], "mlflow_tracking_uri": f"sqlite:///{run_dir / 'mlflow.db'}"}}
    raw["rsgrpo"] = {
        **raw["rsgrpo"],
        "out_dir": str(run_dir / "model"),
        "checkpoint_dir": str(run_dir / "ckpt"),
        "log_file": str(run_dir / "rsgrpo.json"),
        "report_dir": str(run_dir / "report"),
        **rsgrpo,
    }
    (run_dir / "params.yaml").write_text(yaml.safe_dump(raw))
    (run_dir / "driver.py").write_text(DRIVER.format(root=str(REPO_ROOT)))
    return run_dir


def _run(command: list[str], run_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EVISRAG_"))}
    env.update(PREFECT_HOME=str(run_dir / "prefect"), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # a busy 2-core machine starts it slowly
    done = subprocess.run(command, cwd=run_dir, env=env, capture_output=True, text=True, timeout=600)
    first_error = max(done.stderr.find("Traceback"), 0)  # a rank's own traceback, before torchrun's summary
    assert done.returncode == 0, done.stderr[first_error : first_error + 4000]


def _curve(run_dir: Path) -> dict[int, dict[str, float]]:
    rows = json.loads((run_dir / "rsgrpo.json").read_text())
    return {row["step"]: row for row in rows}


def _rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


@pytest.mark.slow
@pytest.mark.parametrize(
    "packing",
    [
        {"micro_batch_size": 4},  # one group per micro-batch in both runs
        # the reference's token-budget packing: the single process packs 8 responses, each rank its 4, into as many
        # micro-batches as the budget asks (ranks agree on the largest count); DeepSpeed's boundary set by hand
        {"micro_batch_tokens": 1000},
    ],
    ids=["micro_batch_size", "micro_batch_tokens"],
)
def test_zero2_on_two_cpu_ranks_matches_the_single_process_run(
    tiny_dataset: Path, tiny_model_dir: Path, tmp_path, packing: dict[str, int]
):
    from evisrag_core.modeling import load_model_and_processor

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["out_dir"] = str(tiny_dataset)
    raw["rsgrpo"].update(
        model_dir=str(tiny_model_dir),
        steps=STEPS,
        rollout_batch_size=2,
        n=4,
        **packing,
        max_new_tokens=12,
        learning_rate=1e-2,
        filter_low=-100.0,  # keep every group: the stub's overall rewards are in 0..6
        filter_high=100.0,
        val_every=0,
        val_size=1,
        report_every=0,
        save_every=2,
        rollout_seeding="group",
    )
    single = _params(raw, tmp_path / "single")
    ranks = _params(raw, tmp_path / "zero2x2", deepspeed=str(ZERO2))
    _run([sys.executable, "driver.py"], single)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    _run([torchrun, "--standalone", "--nproc_per_node", "2", "driver.py"], ranks)

    # One stage run: rank 0 alone opened the Prefect flow run and the MLflow run, and wrote the curve.
    assert _rows(ranks / "prefect" / "prefect.db", "SELECT state_type FROM flow_run") == [("COMPLETED",)]
    assert _rows(ranks / "mlflow.db", "SELECT name, status FROM runs") == [("rsgrpo", "FINISHED")]
    # A checkpoint holds rank 0's model and step state and one ZeRO-2 optimizer partition per rank.
    checkpoint = ranks / "ckpt" / "step-000002"
    shards = sorted(p.name for p in (checkpoint / "deepspeed").glob("*optim_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2

    reference, distributed = _curve(single), _curve(ranks)
    assert sorted(reference) == sorted(distributed) == list(range(1, STEPS + 1))
    for step, row in reference.items():
        other = distributed[step]
        assert row["actor/skipped"] == other["actor/skipped"] == 0.0
        for key in ("reward/overall", "reward/accuracy", "response_length/mean", "actor/n_active_components"):
            assert other[key] == row[key], (step, key)  # identical rollouts and spans
        for key in ("actor/loss", "actor/grad_norm", "actor/entropy"):
            # abs: with ρ ≡ 1 a step's loss value can be ~0 (advantages cancel) while its gradient is not
            assert other[key] == pytest.approx(row[key], rel=LOSS_RTOL, abs=1e-6), (step, key)
    assert max(abs(row["actor/loss"]) for row in reference.values()) > 100 * 1e-6  # losses far above the abs slack
    assert min(row["actor/grad_norm"] for row in reference.values()) > 0

    # The final model (rank 0 wrote the whole ZeRO-2 parameters) loads and matches the single-process model.
    model, _ = load_model_and_processor(ranks / "model")
    ref_model, _ = load_model_and_processor(single / "model")
    base, _ = load_model_and_processor(tiny_model_dir)
    update, ref_update = weight_updates((model, ref_model), base)
    assert ref_update.norm() > 0
    assert (update - ref_update).norm() / ref_update.norm() < UPDATE_RTOL
