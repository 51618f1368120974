"""The sft stage (`evisrag sft`): supervised fine-tuning from the base model (rank 0 of a distributed launch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evisrag_core.config import load_params
from flows import stage_flow
from tasks import tracking


@stage_flow("sft")
def sft_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    from tasks.sft import train  # torch and transformers: imported by the stages that need them only

    params = load_params(params_path)
    with tracking.stage_run("sft", params, ["sft"]):
        summary = train(params, Path(params.sft.log_file))
        tracking.log_sft(summary, params.sft.log_file)
    return summary
