"""The report stage (`evisrag report`): the run report (reports/run/index.html) from the other stages' files."""

from __future__ import annotations

from evisrag_core.config import load_params
from flows import stage_flow
from tasks import tracking
from tasks.report import write_report


@stage_flow("report")
def report_flow(params_path: str = "params.yaml") -> str:
    params = load_params(params_path)
    with tracking.stage_run("report", params, ["report"]):
        index = write_report(params)
        tracking.log_report(index)
    return str(index)
