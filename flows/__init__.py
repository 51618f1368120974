"""Prefect flows: the DVC stage entry points and the pipeline flow. Wiring only.

`evisrag <stage>` runs the flow `<stage>_flow` of `flows/<stage>.py` (one module per dvc.yaml stage, so a stage's
imports are its own: tests/unit/test_dvc_deps.py checks that dvc.yaml declares all of them).

Prefect keeps its database in the project (`.prefect/`, git-ignored) unless PREFECT_HOME or PREFECT_API_URL say
otherwise, so flow runs started by `dvc repro` and by `evisrag pipeline` land in one place, visible in the UI of a
server started from the project folder.

Under `evisrag pipeline` a stage's flow run is created by the pipeline, under the stage's task, before DVC starts the
stage's command; `stage_flow` makes the stage's flow run as that flow run (its id arrives in STAGE_FLOW_RUN_ENV).
"""

import functools
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evisrag_core.errors import UserError

os.environ.setdefault("PREFECT_HOME", str(Path.cwd() / ".prefect"))
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "evisrag_core")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Each stage of a plain `dvc repro` / `dvc exp run` starts a temporary Prefect server; Prefect's 20 s start-up limit
# was exceeded on a busy 2-core machine (stage failed before doing any work), so allow it longer.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
# OpenMP threads that spin while waiting make torch many times slower when the 2 cores are shared (measured on the
# RS-GRPO stage: 6 min 39 s vs 113 s); passive waiting costs nothing on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def flow_run_name(stage: str) -> Callable[[], str]:
    """Flow-run names a person can find in the UI: `<stage>-<UTC time>`."""
    return lambda: f"{stage}-{datetime.now(UTC):%Y%m%d-%H%M%S}"


class NoUserErrorTraceback(logging.Filter):
    """Keep Prefect's log line of a task stopped by a user error, without the traceback: the message says what to
    do, and the CLI promises a user error no traceback (in the terminal or the Prefect UI's log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def refuse_user_errors(body: Callable[..., Any]) -> Callable[..., Any]:
    """A flow body whose user error (evisrag_core.errors.UserError) ends the flow run as *Refused*, a Cancelled-type
    state carrying the message, instead of Failed: a typo in an input is not an incident, and Prefect's failure
    notifications and retries are for those. The error itself is the state's data, so calling the flow still raises
    it and the CLI exits 2 with its message. MLflow's run ends KILLED for the same reason (tasks/tracking.py)."""

    @functools.wraps(body)
    def run(*args: Any, **kwargs: Any) -> Any:
        for name in ("prefect.task_runs", "prefect.flow_runs"):  # the loggers Prefect's engines report a failure on
            logger = logging.getLogger(name)
            if not any(isinstance(f, NoUserErrorTraceback) for f in logger.filters):
                logger.addFilter(NoUserErrorTraceback())
        from prefect.states import Cancelled  # here: this module sets Prefect's settings before its first import

        try:
            return body(*args, **kwargs)
        except UserError as err:
            return Cancelled(name="Refused", message=f"user error: {err}", data=err)

    return run


# The id of the flow run a stage process must run as: set by the pipeline flow (flows/pipeline.py) for one stage.
STAGE_FLOW_RUN_ENV = "EVISRAG_PREFECT_FLOW_RUN_ID"

from prefect import Flow  # noqa: E402  (after the Prefect defaults above: prefect reads them when imported)


class StageFlow(Flow):
    """A stage's flow. Called in a process the pipeline started for this stage (STAGE_FLOW_RUN_ENV set), it runs as
    the flow run the pipeline created under the stage's task; otherwise (`dvc repro`, `evisrag sft`) as a new one.

    Prefect links a run to its parent task only when the flow run is created with `parent_task_run_id`; a flow
    called with only an id in the environment makes a new, unlinked run (measured with Prefect 3.9).
    """

    def __call__(self, *args: Any, return_state: bool = False, **kwargs: Any) -> Any:
        flow_run_id = os.environ.pop(STAGE_FLOW_RUN_ENV, None)  # once: a flow this one calls must not take it
        if not flow_run_id:
            return super().__call__(*args, return_state=return_state, **kwargs)
        from uuid import UUID

        from prefect.client.orchestration import get_client
        from prefect.flow_engine import run_flow
        from prefect.utilities.callables import get_call_parameters

        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(UUID(flow_run_id))
        parameters = get_call_parameters(self.fn, args, kwargs)
        return_type = "state" if return_state else "result"
        return run_flow(self, flow_run=flow_run, parameters=parameters, return_type=return_type)


def stage_flow(name: str) -> Callable[[Callable[..., Any]], StageFlow]:
    """`@stage_flow("sft")`: the flow of the dvc.yaml stage `name`, its runs named `<name>-<UTC time>`, whose user
    errors end the run as Refused (see refuse_user_errors)."""
    return lambda fn: StageFlow(refuse_user_errors(fn), name=name, flow_run_name=flow_run_name(name))
