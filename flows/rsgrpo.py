"""The rsgrpo stage (`evisrag rsgrpo`): reward-scoped GRPO from the SFT model (rank 0 of a distributed launch)."""

from __future__ import annotations

from typing import Any

from evisrag_core.config import load_params
from flows import stage_flow
from tasks import tracking


@stage_flow("rsgrpo")
def rsgrpo_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    from tasks.rsgrpo import train  # torch and transformers: imported by the stages that need them only

    params = load_params(params_path)
    with tracking.stage_run("rsgrpo", params, ["rsgrpo"]):
        summary = train(params)
        tracking.log_rsgrpo(params.rsgrpo.log_file, params.rsgrpo.report_dir)
    return summary
