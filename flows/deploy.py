"""`evisrag deploy --pool NAME [--cron CRON]`: the pipeline flow as a deployment of a Prefect work pool.

A worker polling the pool (`prefect worker start --pool NAME`), on this machine or another one with the project
checked out and installed (a GPU machine, say), picks up the deployment's runs and runs `evisrag-pipeline` there. This
process only registers the deployment and exits; `evisrag serve` is the alternative that runs the deployment itself.

The deployment loads the flow by module (`flows.pipeline.pipeline_flow`), so the worker's Python must import this
project (`pip install -e .` in its clone), and a process worker runs it in `--working-dir` (default: this folder),
where params.yaml, dvc.yaml and the DVC workspace are. A pool that does not exist is created as a process pool; a
docker or kubernetes pool is used as configured (image, volumes and GPUs are the pool's configuration, see
docs/operations.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from evisrag_core.config import ParamsError, ServeParams, load_params

PROCESS = "process"


def ensure_pool(name: str) -> tuple[str, bool]:
    """The pool's type, and whether it was created now (as a process pool, Prefect's default job template)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(name).type, False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type=PROCESS, base_job_template=template))
            return PROCESS, True


def deploy(
    params_path: str, pool: str, cron: str | None, working_dir: Path, name: str | None = None
) -> tuple[str, str, bool]:
    """Register the pipeline deployment on `pool`; returns (deployment name, pool type, pool created now).

    Schedule, retries and the deployment's name come from params.serve unless given here (`cron`, `name`).
    """
    from prefect.deployments.runner import EntrypointType

    from flows.pipeline import pipeline_flow
    from flows.serve import deployment_options
    from flows.stage_plan import check_pipeline_params

    check_pipeline_params(Path(working_dir, params_path), working_dir)  # where the worker runs it
    params = load_params(params_path)
    if cron is not None:
        try:  # the checks a cron in params.yaml gets
            serve = ServeParams(**{**params.serve.model_dump(), "cron": cron})
        except ValidationError as err:
            raise ParamsError(f"--cron {cron!r}: {'; '.join(e['msg'] for e in err.errors())}") from None
        params = params.model_copy(update={"serve": serve})
    options: dict[str, Any] = deployment_options(params, params_path)
    options["name"] = name or options["name"]
    pool_type, created = ensure_pool(pool)
    # A process worker starts the run in this folder; other pool types place the project through their own
    # configuration (the image's working directory, a volume), and refuse variables they do not define.
    job_variables = {"working_dir": str(working_dir)} if pool_type == PROCESS else {}
    options["description"] = f"{options['description']}; runs on a worker of the {pool_type} pool {pool}"
    pipeline_flow.deploy(
        work_pool_name=pool,
        job_variables=job_variables,
        entrypoint_type=EntrypointType.MODULE_PATH,
        build=False,
        push=False,
        print_next_steps=False,
        **options,
    )
    return f"{pipeline_flow.name}/{options['name']}", pool_type, created


def cmd_deploy(args: argparse.Namespace) -> int:
    from flows.serve import NoServerError, prefect_api_url

    try:
        api = prefect_api_url()
        deployment, pool_type, created = deploy(
            str(args.params), args.pool, args.cron, Path(args.working_dir).resolve(), args.name
        )
    except NoServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if created:
        print(f"created the work pool {args.pool} (type {PROCESS}) on {api}")
    print(f"deployment {deployment} registered on the {pool_type} work pool {args.pool}")
    print(f"start a worker:  prefect worker start --pool {args.pool}" + (" --type process" if created else ""))
    print(f"run it now:      prefect deployment run '{deployment}'")
    return 0


def register_deploy_command(sub: argparse._SubParsersAction) -> None:
    deploy_parser = sub.add_parser(
        "deploy", help="register the pipeline as a deployment of a Prefect work pool (a worker runs it)"
    )
    deploy_parser.add_argument("--pool", required=True, help="work pool name (created as a process pool if absent)")
    deploy_parser.add_argument("--cron", help='schedule, e.g. "0 2 * * *" (default: serve.cron; none: on demand)')
    deploy_parser.add_argument("--name", help="deployment name (default: serve.deployment_name)")
    deploy_parser.add_argument(
        "--working-dir", default=".", help="the project folder on the worker's machine (process pools; default: .)"
    )
    deploy_parser.set_defaults(func=cmd_deploy)
