"""The download stage (`evisrag download`): write the dataset named by params.data."""

from __future__ import annotations

from typing import Any

from evisrag_core.config import load_params
from flows import stage_flow
from tasks import tracking
from tasks.download import write_dataset


@stage_flow("download")
def download_flow(params_path: str = "params.yaml") -> dict[str, Any]:
    params = load_params(params_path)
    with tracking.stage_run("download", params, ["data"]):
        manifest = write_dataset(params)
        tracking.log_dataset(manifest)
    return manifest
