"""The model stage (`evisrag model`): the base model every later stage starts from."""

from __future__ import annotations

from prefect import flow

from evisrag_core.config import load_params
from flows import flow_run_name
from tasks import tracking


@flow(name="model", flow_run_name=flow_run_name("model"))
def model_flow(params_path: str = "params.yaml") -> str:
    # torch and transformers take seconds to import: only the stages that need them import their tasks
    from tasks.model import write_base_model

    params = load_params(params_path)
    with tracking.stage_run("model", params, ["model"]):
        out = write_base_model(params)
        tracking.log_base_model(out)
    return str(out)
