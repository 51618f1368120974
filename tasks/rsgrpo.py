"""RS-GRPO stage task: train from the SFT model, stream every step's metrics to MLflow and a DVC plots file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, task

from evisrag_core.config import Params
from evisrag_core.data.schema import RL_FILE
from evisrag_core.io import StepLog
from evisrag_core.rsgrpo.checkpoint import load_checkpoint_state, resumable_checkpoint
from evisrag_core.rsgrpo.state import REWARD_KEYS
from evisrag_core.rsgrpo.train import train_rsgrpo
from tasks import TASK_DEFAULTS

# the rows of the DVC plot (dvc.yaml: rsgrpo's plots y) hold every step's reward means
PLOTTED = tuple(f"reward/{key}" for key in REWARD_KEYS)


def _resume_step(params: Params) -> int:
    rl_file = Path(params.data.out_dir) / "train" / RL_FILE
    found = resumable_checkpoint(params.rsgrpo, rl_file, params.seed)
    return int(load_checkpoint_state(found)["step"]) if found else 0


def train_on_worker_rank(params: Params) -> dict[str, Any]:
    """Ranks > 0 of `torchrun … -m flows.cli rsgrpo` (rsgrpo.deepspeed set): the same training as rank 0's task,
    outside Prefect and MLflow. Rank 0 alone logs metrics and writes the plots file, reports and final model."""
    return train_rsgrpo(params.rsgrpo, Path(params.data.out_dir) / "train" / RL_FILE, params.seed)


@task(name="train-rsgrpo", **TASK_DEFAULTS)
def train(params: Params) -> dict[str, Any]:
    cfg = params.rsgrpo
    history = StepLog(Path(cfg.checkpoint_dir) / "metrics_history.jsonl", _resume_step(params))

    def on_step(step: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({f"rsgrpo.{k}": v for k, v in metrics.items()}, step=step)
        history.append({"step": step, **metrics})

    rl_file = Path(params.data.out_dir) / "train" / RL_FILE
    summary = train_rsgrpo(cfg, rl_file, params.seed, on_step=on_step)
    mlflow.log_metric("rsgrpo.skipped_records", summary["skipped_records"])  # rsgrpo.on_bad_record: skip
    history.publish(cfg.log_file, required=PLOTTED)  # the training steps (not the validation-only step 0)
    history.publish(cfg.val_log_file, required=("val/overall",))  # the validation steps
    history.publish(cfg.val_sampled_log_file, required=("val_sampled/overall",))  # [] when val_sampled_n is 0
    get_run_logger().info("RS-GRPO done: %s", summary)
    return summary
