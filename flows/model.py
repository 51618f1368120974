"""The model stage (`evisrag model`): the base model every later stage starts from."""

from __future__ import annotations

from evisrag_core.config import load_params
from flows import stage_flow
from tasks import tracking


@stage_flow("model")
def model_flow(params_path: str = "params.yaml") -> str:
    # torch and transformers take seconds to import: only the stages that need them import their tasks
    from tasks.model import write_base_model

    params = load_params(params_path)
    with tracking.stage_run("model", params, ["model"]):
        out = write_base_model(params)
        tracking.log_base_model(out)
    return str(out)
