"""The pipeline flow: every dvc.yaml stage as one Prefect task, in DVC's order, under one flow run and one MLflow
parent run.

DVC still decides: the stages are those `dvc repro [targets]` would visit (DVC's own plan: the targets and the
stages upstream of them), and each runs as `dvc repro --single-item <stage>` would, in this process (DVC's Python
API: no DVC start-up per stage), so DVC skips what is up to date, restores from its run cache, and writes dvc.lock.

What the Prefect UI shows for a run: one task run per stage, each waiting for the one before (the graph is a chain),
named after the stage. A stage that runs shows its own flow run (the stage process's: logs, its tasks) nested under
its task; an up-to-date stage completes as "Up to date", one restored from DVC's run cache as "Cached", neither with
a flow run. A failed stage fails its task and the pipeline; the stages after it do not run.

How the nesting works (Prefect 3.9, measured): a flow run in another process appears under a task only when it is
created with `parent_task_run_id` of a task run the server already has. A `@task`'s own run reaches the server later
(through events), so linking to it fails (409). So this flow creates each stage's task run and flow run itself with
the client, sets the task run's states itself, and hands the flow run's id to the stage process
(flows.STAGE_FLOW_RUN_ENV, read by flows.StageFlow) with this flow's API URL (without it, a stage process would
start a temporary server of its own).
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import mlflow
import yaml
from prefect import Flow, Task, flow, get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRunResult, TaskRunResult
from prefect.context import FlowRunContext
from prefect.logging.handlers import APILogHandler
from prefect.states import AwaitingRetry, Cancelled, Completed, Failed, Pending, Retrying, Running

from evisrag_core.config import load_params
from evisrag_core.errors import UserError
from flows import STAGE_FLOW_RUN_ENV, StageFlow, flow_run_name, refuse_user_errors
from flows.stage_plan import check_pipeline_params, plan_stages
from tasks import tracking

if TYPE_CHECKING:
    from dvc.repo import Repo
    from dvc.stage import Stage

log = logging.getLogger(__name__)
UP_TO_DATE = "Up to date"
CACHED = "Cached"  # Prefect's own name for a run whose result came from a cache


class StageRefusedError(UserError):
    """A stage stopped on a user error (its flow run ended Refused, its command exited 2): the pipeline ends Refused
    too, not Failed, and the CLI exits 2 with the stage's message (flows/__init__.py, refuse_user_errors)."""


class StageFailedError(RuntimeError):
    """A stage's command failed: its task is Failed and the stages after it did not run."""


def _prefect_api_url() -> str | None:
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    with get_client(sync_client=True) as client:
        return str(client.api_url)


def stage_environment() -> dict[str, str]:
    """The environment of the stage commands: this interpreter's scripts folder first on PATH, because every
    dvc.yaml stage runs `evisrag ...` and `.venv/bin/evisrag pipeline` is often called without an activated venv."""
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != scripts)])
    return env


def _stage_flow(dvc_stage: Stage) -> StageFlow | None:
    """The Prefect flow a stage's command runs (`evisrag <stage>` runs flows/<stage>.py's `<stage>_flow`), or None for
    a command of another kind, which then shows as its task alone."""
    name = dvc_stage.addressing
    if dvc_stage.cmd != f"evisrag {name}":
        return None
    found = getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow", None)
    return found if isinstance(found, StageFlow) else None


class _DvcOutcome(logging.Handler):
    """DVC's word on what it did with a stage that did not run its command: restored from the run cache."""

    def __init__(self) -> None:
        super().__init__()
        self.restored = False

    def emit(self, record: logging.LogRecord) -> None:
        if "is cached - skipping run" in record.getMessage():
            self.restored = True


@contextmanager
def stage_output_to(emit: Callable[[str], None]) -> Iterator[None]:
    """While open, the commands DVC runs write their stdout and stderr into a pipe whose lines go to `emit`: a shell
    stage's output in the pipeline's Prefect log (whose console handler still shows it on the terminal, once). DVC
    offers no hook for it; its `prepare_kwargs` (the Popen arguments of a stage's command, dvc==3.67.1) is wrapped."""
    from dvc.stage import run as dvc_run

    read_end, write_end = os.pipe()
    prepare = dvc_run.prepare_kwargs

    def prepare_with_pipe(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**prepare(*args, **kwargs), "stdout": write_end, "stderr": subprocess.STDOUT}

    def forward() -> None:
        # Lines end at "\n" only; of a line redrawn with "\r" (a progress bar) its last state is logged, not each.
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                emit(line.rstrip(b"\r\n").rsplit(b"\r", 1)[-1].decode("utf-8", errors="replace"))

    reader = threading.Thread(target=forward, name="stage-output", daemon=True)
    reader.start()
    dvc_run.prepare_kwargs = prepare_with_pipe
    try:
        yield
    finally:
        dvc_run.prepare_kwargs = prepare
        os.close(write_end)  # the reader ends once every command holding the pipe has exited
        reader.join(timeout=10)
        if reader.is_alive():
            log.warning("a process the stage started still holds its output open; its lines may come late")


def reproduce_stage(
    repo: Repo, stage: str, force: bool, env: dict[str, str], output: Callable[[str], None] | None = None
) -> str | None:
    """`dvc repro --single-item [--force] <stage>` in this process: UP_TO_DATE, CACHED, or None when the stage's
    command ran. A failed command raises DVC's ReproductionError. `output`: where the command's output lines go
    instead of this process's stdout (None: they go there)."""
    # DVC prints its lines with handlers of its own; passed on to the root logger (Prefect's console handler) they
    # would print twice. Prefect's API handler puts them in the pipeline's flow-run log, the UI's view of the run.
    watcher = _DvcOutcome()
    handlers = [watcher, APILogHandler()]
    dvc_logger = logging.getLogger("dvc")
    propagate, dvc_logger.propagate = dvc_logger.propagate, False
    for handler in handlers:
        dvc_logger.addHandler(handler)
    try:
        with stage_output_to(output) if output else nullcontext():
            reproduced = repo.reproduce(targets=[stage], single_item=True, force=force, run_env=env)
    finally:
        for handler in handlers:
            dvc_logger.removeHandler(handler)
        dvc_logger.propagate = propagate
    if not reproduced:
        return UP_TO_DATE
    return CACHED if watcher.restored else None


def _stage_placeholder() -> None:
    """Never called: the task a stage's task run belongs to (create_task_run needs a task for its key)."""


STAGE_TASK = Task(_stage_placeholder, name="stage")


@dataclass
class StageRunner:
    """Runs the planned stages one after another as task runs of the flow run `parent`."""

    client: SyncPrefectClient
    repo: Repo
    parent: UUID
    params_path: str
    force: bool
    env: dict[str, str]
    retries: Callable[[str], int]
    retry_delay_seconds: float

    def run(self, stages: list[str]) -> None:
        previous: FlowRunResult | TaskRunResult | None = None
        for index, stage in enumerate(stages):
            task_inputs = {"wait_for": [previous]} if previous else {}
            task_run = self.client.create_task_run(
                task=STAGE_TASK.with_options(retries=self.retries(stage)),
                flow_run_id=self.parent,
                dynamic_key=str(index),
                name=stage,
                state=Pending(),
                task_inputs=task_inputs,
            )
            completed, ran = self._run_stage(stage, task_run.id)
            if not completed:
                left = stages[index + 1 :]
                not_run = f"; not run: {', '.join(left)}" if left else ""
                raise StageFailedError(f"stage {stage} failed (its flow run and the log above say why){not_run}")
            # The UI's graph draws a task with a nested flow run as that flow run, and links a stage to the one before
            # only when `wait_for` names the node it drew.
            previous = FlowRunResult(id=ran) if ran else TaskRunResult(id=task_run.id)

    def _run_stage(self, stage: str, task_run_id: UUID) -> tuple[bool, UUID | None]:
        """Run one stage with its retries, its task run's states set here: (completed, the flow run that ran it)."""
        logger = get_run_logger()
        [dvc_stage] = self.repo.stage.collect(stage)
        if not self.force and not dvc_stage.changed():
            # DVC's own test, as `dvc repro` applies it, asked before a flow run is created for a stage that will
            # not run: most stages of most runs are up to date.
            logger.info("stage %s: DVC: up to date", stage)
            self.client.set_task_run_state(task_run_id, Running(), force=True)
            done = Completed(name=UP_TO_DATE, message="DVC: up to date")
            self.client.set_task_run_state(task_run_id, done, force=True)
            return True, None
        stage_flow = _stage_flow(dvc_stage)
        retries = self.retries(stage)
        for attempt in range(retries + 1):
            running = Running() if attempt == 0 else Retrying()
            self.client.set_task_run_state(task_run_id, running, force=True)
            flow_run_id = self._create_flow_run(stage_flow, stage, task_run_id) if stage_flow else None
            env = self.env | ({STAGE_FLOW_RUN_ENV: str(flow_run_id)} if flow_run_id else {})
            try:
                # A stage with a flow of its own logs there; a shell stage's output goes to this flow run's log.
                output = None if stage_flow else partial(logger.info, "%s| %s", stage)
                outcome = reproduce_stage(self.repo, stage, self.force, env, output)
            except Exception as err:  # DVC's errors and the command's exit fail the stage's task, not this flow
                message = f"{err}: {err.__cause__}" if err.__cause__ else str(err)
                self._settle_unstarted(flow_run_id, message)
                refusal = self._refusal(flow_run_id)
                if refusal is not None:  # a user error: no retry, and nothing failed
                    self.client.set_task_run_state(task_run_id, Cancelled(name="Refused", message=refusal), force=True)
                    raise StageRefusedError(f"stage {stage} refused its input: {refusal}") from None
                if attempt < retries:
                    logger.warning("stage %s failed (%s); retry %d of %d", stage, message, attempt + 1, retries)
                    self.client.set_task_run_state(task_run_id, AwaitingRetry(), force=True)
                    time.sleep(self.retry_delay_seconds)
                    continue
                logger.error("stage %s failed: %s", stage, message)
                self.client.set_task_run_state(task_run_id, Failed(message=message), force=True)
                return False, None
            if outcome is not None and flow_run_id is not None:
                self.client.delete_flow_run(flow_run_id)  # DVC did not run the command: its flow run never started
                flow_run_id = None
            message = {UP_TO_DATE: "DVC: up to date", CACHED: "DVC: outputs restored from the run cache"}.get(
                outcome or "", "ran"
            )
            logger.info("stage %s: %s", stage, message)
            done = Completed(name=outcome, message=message) if outcome else Completed(message=message)
            self.client.set_task_run_state(task_run_id, done, force=True)
            return True, flow_run_id
        return False, None

    def _create_flow_run(self, stage_flow: Flow[Any, Any], stage: str, task_run_id: UUID) -> UUID:
        created = self.client.create_flow_run(
            stage_flow,
            name=flow_run_name(stage)(),
            parameters={"params_path": self.params_path},
            parent_task_run_id=task_run_id,
        )
        return created.id

    def _refusal(self, flow_run_id: UUID | None) -> str | None:
        """The user error a stage's flow run ended Refused with (refuse_user_errors), or None."""
        if flow_run_id is None:
            return None
        state = self.client.read_flow_run(flow_run_id).state
        if state is None or state.name != "Refused":
            return None
        return (state.message or "").removeprefix("user error: ")

    def _settle_unstarted(self, flow_run_id: UUID | None, message: str) -> None:
        """A stage process that failed before its flow started (e.g. a bad command) leaves its flow run Pending:
        mark it Failed so no run waits forever in the UI."""
        if flow_run_id is None:
            return
        if self.client.read_flow_run(flow_run_id).state_type.value == "PENDING":
            reason = f"the stage process ended before its flow started ({message})"
            self.client.set_flow_run_state(flow_run_id, Failed(message=reason), force=True)


def _tag_stage_runs(parent_run_id: str, lock_file: Path) -> None:
    """Record each stage's DVC output hashes on the nested run that produced them."""
    if not lock_file.is_file():
        return
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", output_format="list")
    for run in runs:
        stage = run.data.tags.get(tracking.STAGE_TAG)
        outs = stages.get(stage, {}).get("outs", [])
        client = mlflow.MlflowClient()
        for out in outs:
            client.set_tag(run.info.run_id, f"dvc.outs.{out['path']}", out.get("md5", ""))


@flow(name="evisrag-pipeline", flow_run_name=flow_run_name("pipeline"))
@refuse_user_errors
def pipeline_flow(
    params_path: str = "params.yaml",
    targets: list[str] | None = None,
    force: bool = False,
    retries: int = 0,
    retry_delay_seconds: float | None = None,
) -> Any:
    """`targets`: dvc.yaml stages (and what they need), default all. `retries`: how often a failed stage that
    pipeline.retries does not name runs again (a deployment sets it from serve.retries); `retry_delay_seconds`:
    the pause before a retry (default pipeline.retry_delay_seconds)."""
    from dvc.repo import Repo, lock_repo

    check_pipeline_params(params_path)
    params = load_params(params_path)
    stages = plan_stages(params, targets)
    tracking.configure(params)
    tags = {**params.tracking.tags, "evisrag.git_commit": tracking.git_commit() or "unknown"}
    with mlflow.start_run(run_name="pipeline", tags=tags) as run, tracking.refused_on_user_error():
        mlflow.log_params(tracking.flatten(params.model_dump(mode="json")))
        env = stage_environment()
        env[tracking.PARENT_RUN_ENV] = run.info.run_id
        api_url = _prefect_api_url()
        if api_url:
            env["PREFECT_API_URL"] = api_url
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None  # inside this flow's run
        delay = params.pipeline.retry_delay_seconds if retry_delay_seconds is None else retry_delay_seconds
        # One DVC lock for the whole run, as `dvc repro` holds it (DVC lifts it while a stage's command runs): DVC then
        # reads dvc.yaml and dvc.lock again only after a stage has run, not once per stage.
        with get_client(sync_client=True) as client, Repo(".") as repo, lock_repo(repo):
            runner = StageRunner(
                client=client,
                repo=repo,
                parent=context.flow_run.id,
                params_path=params_path,
                force=force,
                env=env,
                retries=lambda stage: params.pipeline.retries.get(stage, retries),
                retry_delay_seconds=delay,
            )
            try:
                runner.run(stages)
            finally:
                _tag_stage_runs(run.info.run_id, Path("dvc.lock"))
        metrics_file = Path(params.evaluate.metrics_file)
        if metrics_file.is_file():
            tracking.log_file(metrics_file)
            metrics = yaml.safe_load(metrics_file.read_text())
            overall = metrics.get("overall", {})
            mlflow.log_metrics({f"overall.{k}": v for k, v in overall.items()})
            return metrics
    return None
