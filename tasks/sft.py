"""SFT stage task: fine-tune, stream the loss to MLflow and to a DVC plots file, write the final model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from prefect import get_run_logger, task

from evisrag_core.config import Params
from evisrag_core.data.schema import SFT_FILE
from evisrag_core.io import StepLog
from evisrag_core.sft import train as sft
from tasks import TASK_DEFAULTS


def sft_file(params: Params) -> Path:
    return Path(params.data.out_dir) / "train" / SFT_FILE


def train_on_worker_rank(params: Params) -> dict[str, Any]:
    """Ranks > 0 of a distributed launch: the same training as rank 0's task, outside Prefect and MLflow.

    Rank 0 runs `train` inside the flow: it alone logs the loss and writes `log_file`, and the Trainer lets only
    rank 0 write the final model (every rank writes its own ZeRO shard of a checkpoint)."""
    return sft.train_sft(params.sft, sft_file(params), params.seed)


def _resume_step(params: Params) -> int:
    found = sft.resumable_checkpoint(params.sft, sft_file(params), params.seed)
    return int(Path(found).name.split("-")[-1]) if found else 0


@task(name="train-sft", **TASK_DEFAULTS)
def train(params: Params, log_file: Path) -> dict[str, Any]:
    cfg = params.sft
    history = StepLog(Path(cfg.checkpoint_dir) / "loss_history.jsonl", _resume_step(params))

    def on_log(step: int, logs: dict[str, float]) -> None:
        metrics = {k: v for k, v in logs.items() if k in ("loss", "learning_rate", "grad_norm")}
        if metrics:
            mlflow.log_metrics({f"sft.{k}": v for k, v in metrics.items()}, step=step)
            history.append({"step": step, **metrics})

    summary = sft.train_sft(cfg, sft_file(params), params.seed, on_log=on_log)
    mlflow.log_metric("sft.skipped_records", summary["skipped_records"])  # sft.on_bad_record: skip
    history.publish(log_file, required=("loss",))  # the DVC plot's y
    get_run_logger().info("SFT done: %s", summary)
    return summary
