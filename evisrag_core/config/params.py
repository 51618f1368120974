"""The whole params file: the root model, reading it, and the errors a user sees for a bad one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from evisrag_core.config.base import Section
from evisrag_core.config.profiles import value_sources
from evisrag_core.config.sections import (
    DataParams,
    EvaluateParams,
    ModelParams,
    PipelineParams,
    PredictParams,
    ReportParams,
    ServeParams,
    TrackingParams,
)
from evisrag_core.config.training import RSGRPOParams, SFTParams
from evisrag_core.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")


class Params(Section):
    seed: int = 0
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    sft: SFTParams = SFTParams()
    rsgrpo: RSGRPOParams = RSGRPOParams()
    predict: PredictParams = PredictParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    tracking: TrackingParams = TrackingParams()
    pipeline: PipelineParams = PipelineParams()
    serve: ServeParams = ServeParams()


class ParamsError(UserError, ValueError):
    """The params file is invalid; the message names the key, what is wrong, and the valid keys."""


class PlanError(UserError, ValueError):
    """A valid configuration would fail or silently do something else at run time (a stage's preflight found it);
    the message lists every problem."""


def _valid_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def _describe(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            valid = ", ".join(_valid_keys(Params, item["loc"]))
            lines.append(f"  - unknown key {key!r}; valid keys here: {valid}")
        elif isinstance(item.get("input"), dict):  # a whole section: echoing it would bury the message
            lines.append(f"  - {key}: {item['msg']}")
        else:
            lines.append(f"  - {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any], source: str = "params") -> Params:
    """Validate a params mapping (keys left out take their code defaults); ParamsError lists every problem."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_describe(err, source)) from None


def read_params_file(path: str | Path) -> dict[str, Any]:
    """The params file as a mapping; ParamsError when it is missing, not YAML, empty, or not a mapping.

    An empty file is refused rather than read as "all defaults": it is almost always a truncated or wrong file.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found; run from the project root or pass --params")
    try:
        with path.open(encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {_yaml_problem(err)}; fix that line") from None
    if raw is None or raw == {}:
        raise ParamsError(
            f"{path} is empty; copy the repository's params.yaml (it lists every key with its default) and edit it"
        )
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{path}: expected a mapping at the top level (`key: value` lines such as `seed: 0`), "
            f"got a {type(raw).__name__}"
        )
    return raw


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one clause: where (line, column; 1-based), what, and what it was inside."""

    def at(mark: yaml.Mark | None) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""

    problem_mark, context_mark = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
    text = f"{at(problem_mark)}: " if problem_mark else ""
    text += " ".join(str(getattr(err, "problem", None) or err).split())
    context = getattr(err, "context", None)
    if context and context_mark:
        text += f" ({context} at {at(context_mark)})"
    return text


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate a params file; raise ParamsError with every problem listed."""
    return parse_params(read_params_file(path), str(path))


def section_sources(raw: dict[str, Any], section: str) -> dict[str, str]:
    """Where each key of `section` gets its value, for the dry-run's table: `params file`, `profile <name>` (only
    in the sections a profile can overlay: sft, rsgrpo, predict) or `default`."""
    model = Params.model_fields[section].annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ValueError(f"{section} is not a section of the params file")
    values = raw.get(section)
    return value_sources(model, values if isinstance(values, dict) else {}, section)
