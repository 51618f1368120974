"""Report stage task: the run report (evisrag_core.report) from the files the other stages wrote."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from evisrag_core.config import Params
from evisrag_core.report import ReportInputs, build_report
from tasks import TASK_DEFAULTS


def report_inputs(params: Params) -> ReportInputs:
    return ReportInputs(
        metrics_file=Path(params.evaluate.metrics_file),
        per_question_file=Path(params.evaluate.per_question_file),
        data_dir=Path(params.data.out_dir),
        sft_log=Path(params.sft.log_file),
        rsgrpo_log=Path(params.rsgrpo.log_file),
    )


@task(name="write-report", **TASK_DEFAULTS)
def write_report(params: Params) -> Path:
    index = build_report(report_inputs(params), params.report.out_dir, params.report.examples)
    get_run_logger().info("run report: %s", index)
    return index
