"""The predict stage (`evisrag predict`): one prediction file per test benchmark; the options serve ad-hoc runs
(`evisrag predict --model models/sft --out preds_sft`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evisrag_core.config import load_params
from flows import stage_flow
from tasks import tracking


@stage_flow("predict")
def predict_flow(
    params_path: str = "params.yaml",
    model_dir: str | None = None,
    data_dir: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    from tasks.predict import predict_all  # torch and transformers: imported by the stages that need them only

    params = load_params(params_path)
    model = Path(model_dir or params.predict.model_dir)
    with tracking.stage_run("predict", params, ["predict"]):
        tracking.tag_model_dir(model)
        counts = predict_all(
            params, model, Path(data_dir or params.data.out_dir), Path(out_dir or params.predict.out_dir)
        )
        tracking.log_prediction_counts(counts)
    return counts
