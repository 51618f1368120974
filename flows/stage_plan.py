"""Which stages `evisrag pipeline` runs, checked before any Prefect flow run or MLflow run starts: the params file
(DVC's stages read the project's params.yaml only), the stage names and pipeline.retries. Imports DVC only when it
plans, and neither Prefect nor MLflow, so `evisrag pipeline`, `serve` and `deploy` refuse a user error cheaply."""

from __future__ import annotations

from pathlib import Path

import yaml

from evisrag_core.config import Params
from evisrag_core.errors import InputNotFoundError, UserError


class StageSelectionError(UserError, ValueError):
    """`evisrag pipeline STAGE` or pipeline.retries names a stage dvc.yaml does not have (a user error)."""


class PipelineParamsError(UserError, ValueError):
    """`evisrag --params OTHER.yaml pipeline`: the pipeline's stages are dvc.yaml's, and DVC reads params.yaml."""


def check_pipeline_params(params_path: str | Path, root: str | Path = ".") -> None:
    """The pipeline runs `dvc repro`, whose stages read the project's params.yaml (dvc.yaml's `params:`); another
    params file would be checked and logged here while the stages ran with params.yaml, so it is refused."""
    project_params = Path(root, "params.yaml").resolve()
    if Path(params_path).resolve() != project_params:
        raise PipelineParamsError(
            f"the pipeline runs the DVC stages of dvc.yaml, which read {project_params.name} only, not "
            f"{params_path}; copy it there (`cp {params_path} params.yaml`: DVC then runs the stages whose params "
            f"changed) or run one stage with it (`evisrag --params {params_path} sft`)"
        )


def check_stage_targets(targets: list[str], dvc_file: Path) -> None:
    """Every target is a stage of dvc.yaml (or `dvc.yaml:STAGE`, or a path DVC accepts); a missing or broken dvc.yaml
    is said as such, not as DVC's own error."""
    if not dvc_file.is_file():
        raise InputNotFoundError(f"{dvc_file.name} not found; run `evisrag pipeline` from the project root")
    try:
        stages = list((yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {}))
    except yaml.YAMLError as err:
        raise StageSelectionError(
            f"{dvc_file.name} is not valid YAML ({' '.join(str(err).split())}); fix it or restore it with git"
        ) from None
    known = [t for t in targets if t.removeprefix(f"{dvc_file.name}:") in stages or Path(dvc_file.parent, t).exists()]
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise StageSelectionError(
            f"unknown stage {', '.join(unknown)}; the stages of {dvc_file.name} are: {', '.join(stages)}"
        )


def plan_stages(params: Params, targets: list[str] | None, root: str | Path = ".") -> list[str]:
    """The stages `dvc repro [targets]` would visit, in its order (dvc.yaml's, for this project's chain).
    StageSelectionError for a target DVC does not know, or a stage in pipeline.retries that dvc.yaml does not have
    (a typo there would silently mean "no retries"). Called before the flow starts too, so that a user error is one
    message, not a failed run in Prefect and MLflow."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    check_stage_targets(targets or [], Path(root, "dvc.yaml"))
    with Repo(str(root)) as repo:
        known = [stage.addressing for stage in repo.index.stages]
        unknown = sorted(set(params.pipeline.retries) - set(known))
        if unknown:
            raise StageSelectionError(
                f"pipeline.retries names {', '.join(unknown)}: not a stage of dvc.yaml ({', '.join(known)})"
            )
        try:
            stages = collect_stages(repo, targets or ["dvc.yaml"])
        except DvcException as err:
            raise StageSelectionError(f"{err}; the stages of dvc.yaml are: {', '.join(known)}") from None
        return [stage.addressing for stage in plan_repro(get_active_graph(repo.index.graph), stages)]
