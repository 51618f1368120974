"""`evisrag`: the command-line entry point. Stage commands run the stage's Prefect flow; `pipeline` runs them all.

evisrag download | model | sft | rsgrpo | predict | evaluate | report
                                                  one stage, in pipeline order (the commands dvc.yaml runs)
evisrag <stage> --dry-run                         every setting of the stage with its source and the command (sft and
                                                  rsgrpo: also the plan and its torchrun launch command)
evisrag pipeline [--force] [STAGE ...]            the DVC stages as Prefect tasks of one flow run, one MLflow parent run
evisrag serve                                     the pipeline as a Prefect deployment (schedule from params.serve)
evisrag deploy --pool NAME [--cron C]             the pipeline as a deployment of a work pool: a worker runs it
evisrag evaluate --data DIR --preds FILE --out F  score any prediction file (also the reference's) directly
evisrag answer --query Q --images A.png B.png     one question over images → the answer and each image's evidence
                                                  (--raw: the generated text, --json: the fields)
evisrag metrics                                   print metrics.json as a table
evisrag prompt {sft|rsgrpo|predict} [--index N] [--benchmark B]   what the model is given for one record
evisrag report                                    the run report: reports/run/index.html
evisrag compare [--experiment E --tag K=V --since D --out PNG]   pipeline runs in MLflow side by side
evisrag plan [--gpus N --gpu-type T] [--json]      7B memory/throughput estimate for the paper runs

Exit codes: 0 done; 2 a user error (a bad params file, flag, input file or stage name), printed as one `error:`
message that says what to do, with no traceback and no failed Prefect or MLflow run; 1 anything else (a bug or an
outage, with its traceback).
"""

# The user-error rule, written once here (main): an exception of the evisrag_core.errors.UserError family, or a bad
# command line (argparse), prints ONE message, `error: <what was wrong, where, and what to do>`, on stderr and exits
# 2, with no traceback. A command never catches or prints errors itself: it raises UserError (or a subclass:
# ParamsError, PlanError, BadRecordError, ImageError, InputNotFoundError, ModelLoadError, DiskFullError,
# CompareError, NoServerError…) and main does the rest, so a new subcommand gets the rule by raising that type.
# Inputs are checked before a Prefect flow run or an MLflow run starts (the params file, the paths and stage names
# given on the command line); a user error found inside a run (a bad record deep in a file) ends the Prefect flow run
# as Refused and the MLflow run as KILLED, never FAILED (flows/__init__.py, tasks/tracking.py).

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import flows  # noqa: F401  (sets Prefect's project-local defaults before prefect is imported)
from evisrag_core.config import DEFAULT_PARAMS, load_params
from evisrag_core.errors import InputNotFoundError, UserError

# Helpers (flows/ranks.py, flows/metrics_table.py) are imported inside the commands that use them: a module this file
# imports at the top joins every stage's DVC deps (tests/unit/test_dvc_deps.py).

# The commands that run pipeline stages: their params file is validated before anything starts.
PIPELINE_COMMANDS = ("download", "model", "sft", "rsgrpo", "predict", "evaluate", "report", "pipeline", "deploy")
# The params section each stage without a training plan reads (its `--dry-run` shows it).
STAGE_SECTIONS = {
    "download": "data",
    "model": "model",
    "predict": "predict",
    "evaluate": "evaluate",
    "report": "report",
}


def _stage_command(name: str):
    def run(args: argparse.Namespace) -> int:
        if args.dry_run:
            return _show_settings(args, name)
        # `evisrag <stage>` runs flows/<stage>.py: tests/unit/test_dvc_deps.py starts each stage's imports there
        flow = getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow")
        flow(params_path=str(args.params))
        return 0

    return run


def cmd_sft(args: argparse.Namespace) -> int:
    return _training_stage(args, "sft")


def cmd_rsgrpo(args: argparse.Namespace) -> int:
    return _training_stage(args, "rsgrpo")


def _training_stage(args: argparse.Namespace, stage: str) -> int:
    """`evisrag sft|rsgrpo`. `torchrun --nproc_per_node=N -m flows.cli <stage>` is one stage run: rank 0 runs the
    Prefect flow with its MLflow run, the other ranks train beside it as plain processes (a flow on every rank would
    start N ephemeral Prefect servers on one database and log N MLflow runs). `--dry-run` checks the configuration
    (evisrag_core/<stage>/preflight.py) without loading a model."""
    if args.dry_run:
        return _dry_run(args, stage)
    from flows.ranks import end_worker_rank, launch_rank

    if launch_rank() > 0:
        worker = importlib.import_module(f"tasks.{stage}").train_on_worker_rank
        worker(load_params(args.params))
        end_worker_rank()
    return _stage_command(stage)(args)


def _dry_run(args: argparse.Namespace, stage: str) -> int:
    """Print every effective hyper-parameter of `stage` with its source, the plan, and the launch command for the
    params file given; exit 2 with the list of problems when the plan is inconsistent."""
    from dataclasses import asdict

    params, table = _settings_table(args.params, stage)
    preflight = importlib.import_module(f"evisrag_core.{stage}.preflight")
    plan = preflight.plan_from_params(params, str(args.params))  # PlanError lists every problem (exit 2)
    print(table)
    print(f"\nplan:\n{json.dumps(asdict(plan), indent=2, default=str)}")
    print(f"\nlaunch with:\n  {plan.launch_command}")
    return 0


def _show_settings(args: argparse.Namespace, stage: str, note: str = "") -> int:
    """`evisrag <stage> --dry-run` for a stage without a training plan: every value of the params section it reads,
    with its source, a stage's `note` (predict: the backend it runs on here), and the command that runs it with the
    params file given."""
    _, table = _settings_table(args.params, STAGE_SECTIONS[stage])
    print(table)
    if note:
        print(f"\n{note}")
    print(f"\nrun with:\n  evisrag --params {args.params} {stage}")
    return 0


def _settings_table(params_file: Path, section: str) -> tuple[Any, str]:
    """The validated params and the table of `section`'s effective values with their sources."""
    from evisrag_core.config import effective_table, parse_params, read_params_file, section_sources

    raw = read_params_file(params_file)
    params = parse_params(raw, str(params_file))
    cfg = getattr(params, section)
    return params, effective_table(section, cfg, section_sources(raw, section), str(params_file))


def cmd_predict(args: argparse.Namespace) -> int:
    if args.dry_run:
        from evisrag_core.backend_choice import describe_backend

        return _show_settings(args, "predict", describe_backend(load_params(args.params).predict.backend))
    params = load_params(args.params)
    require_path(args.data or params.data.out_dir, "the dataset folder (--data or data.out_dir)", "evisrag download")
    model = Path(args.model or params.predict.model_dir)
    require_path(model / "config.json", f"the model folder {model} (--model or predict.model_dir)", "evisrag model")
    from flows.predict import predict_flow

    predict_flow(params_path=str(args.params), model_dir=args.model, data_dir=args.data, out_dir=args.out)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _show_settings(args, "evaluate")
    if args.preds and Path(args.preds).is_file():
        return _evaluate_file(args)
    params = load_params(args.params)
    require_path(args.data or params.data.out_dir, "the dataset folder (--data or data.out_dir)", "evisrag download")
    preds = args.preds or params.predict.out_dir
    require_path(preds, "the predictions (--preds or predict.out_dir)", "evisrag predict")
    from flows.evaluate import evaluate_flow
    from flows.metrics_table import format_metrics

    metrics = evaluate_flow(
        params_path=str(args.params), data_dir=args.data, preds_dir=args.preds, metrics_file=args.out
    )
    print(format_metrics(metrics))
    return 0


def _evaluate_file(args: argparse.Namespace) -> int:
    """Score one prediction file against one test folder, without Prefect or MLflow (quick checks)."""
    from evisrag_core.data.schema import load_test_split
    from evisrag_core.evaluate import evaluate_split, read_predictions
    from evisrag_core.io import write_json_atomic

    if not args.data:
        raise UserError("--preds FILE needs --data DIR: the test folder holding top3_test.jsonl")
    records = load_test_split(args.data)
    metrics, _ = evaluate_split(
        records, read_predictions(args.preds), allow_missing=args.allow_missing, source=str(args.preds)
    )
    if args.out:
        write_json_atomic(args.out, metrics)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    """One question over images: the answer and each image's evidence (evisrag_core.answer_view), a warning on
    stderr when the format is broken; `--raw` the generated text, `--json` the fields."""
    from evisrag_core.answer_view import (
        answer_fields,
        check_answer_inputs,
        format_warning,
        read_response,
        render_answer,
    )
    from evisrag_core.prompt_methods import get_method

    params = load_params(args.params)
    cfg = params.predict
    check_answer_inputs(args.images, cfg.max_images_per_prompt, args.max_new_tokens)
    from evisrag_core.backend_choice import make_backend  # torch: seconds, only once the inputs are good
    from evisrag_core.predict import Request

    if args.max_new_tokens is not None:
        cfg = cfg.model_copy(update={"max_new_tokens": args.max_new_tokens})
    model = args.model or cfg.model_dir
    local = args.model is None or Path(model).exists() or model.startswith((".", "/", "~"))  # else a hub id
    backend = make_backend(cfg, model, params.model.trust_remote_code, local_only=local)
    images = [str(Path(p).resolve()) for p in args.images]
    try:
        text = backend.generate([Request("cli", args.query, images, list(args.images))])[0]
    finally:
        getattr(backend, "close", lambda: None)()  # the vLLM backend's engine process
    view = read_response(text, args.images, get_method(cfg.method).tags)
    if args.raw:
        print(text)
    elif args.json:
        print(json.dumps({"query": args.query, "method": cfg.method, **answer_fields(view)}, ensure_ascii=False))
    else:
        print(render_answer(view))
    warning = format_warning(view)
    if warning and not args.json:
        print(warning, file=sys.stderr)
    return 0


def cmd_prompt(args: argparse.Namespace) -> int:
    """`evisrag prompt`: one record of a stage's input as the model is given it (evisrag_core/inspect_prompt.py)."""
    from evisrag_core.inspect_prompt import show_prompt

    print(show_prompt(load_params(args.params), args.stage, args.index, args.benchmark))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from flows.metrics_table import format_metrics
    from flows.pipeline import pipeline_flow
    from flows.stage_plan import check_pipeline_params, plan_stages

    # Before the flow run and its MLflow parent run start: the params file, the stage names, pipeline.retries.
    check_pipeline_params(args.params)
    plan_stages(load_params(args.params), args.targets)
    metrics = pipeline_flow(targets=args.targets, force=args.force)
    if metrics:
        print(format_metrics(metrics))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.serve import serve
    from flows.stage_plan import check_pipeline_params

    check_pipeline_params(args.params)
    serve(load_params(args.params), str(args.params))  # NoServerError (exit 2) without a Prefect server
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from flows.metrics_table import format_metrics, read_metrics_file

    params = load_params(args.params)
    path = Path(args.file or params.evaluate.metrics_file)
    print(format_metrics(read_metrics_file(path)))
    return 0


def require_path(path: str | Path, what: str, produced_by: str) -> None:
    """A path the command reads must exist before a flow run starts for it."""
    if not Path(path).exists():
        raise InputNotFoundError(f"{what} {path} not found; run `{produced_by}` first or pass another path")


def cmd_compare(args: argparse.Namespace) -> int:
    from flows.compare import cmd_compare as run_compare  # imports mlflow: only when the command runs

    return run_compare(args)


SHOW_SETTINGS = "print every setting the stage reads, with its source, and the command; run nothing"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="evisrag", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in [("download", "write the dataset (embedded, hub or local)"), ("model", "write the base model")]:
        stage = sub.add_parser(name, help=text)
        stage.add_argument("--dry-run", action="store_true", help=SHOW_SETTINGS)
        stage.set_defaults(func=_stage_command(name))

    sft = sub.add_parser("sft", help="supervised fine-tuning on the evidence conversations (resumes after a kill)")
    sft.add_argument("--dry-run", action="store_true", help="check the config, print the plan and launch command")
    sft.set_defaults(func=cmd_sft)

    rsgrpo = sub.add_parser("rsgrpo", help="reward-scoped GRPO from the SFT model (resumes after a kill)")
    rsgrpo.add_argument("--dry-run", action="store_true", help="check the config, print the plan and launch command")
    rsgrpo.set_defaults(func=cmd_rsgrpo)

    predict = sub.add_parser("predict", help="generate predictions for every test benchmark")
    predict.add_argument("--model", help="model folder or hub id (default: predict.model_dir)")
    predict.add_argument("--data", help="dataset folder (default: data.out_dir)")
    predict.add_argument("--out", help="output folder (default: predict.out_dir)")
    predict.add_argument("--dry-run", action="store_true", help=SHOW_SETTINGS)
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="score predictions (EM / Accuracy / F1)")
    evaluate.add_argument("--data", help="dataset folder; with --preds FILE: the test folder of one benchmark")
    evaluate.add_argument("--preds", help="predictions folder (<B>.jsonl per benchmark) or one prediction file")
    evaluate.add_argument("--out", help="metrics file to write (default: evaluate.metrics_file)")
    evaluate.add_argument("--allow-missing", action="store_true", help="score questions without prediction as empty")
    evaluate.add_argument("--dry-run", action="store_true", help=SHOW_SETTINGS)
    evaluate.set_defaults(func=cmd_evaluate)

    answer = sub.add_parser("answer", help="answer one question over images with the tagged evidence format")
    answer.add_argument("--query", required=True)
    answer.add_argument("--images", nargs="+", required=True)
    answer.add_argument("--model", help="model folder or hub id (default: predict.model_dir)")
    answer.add_argument("--max-new-tokens", type=int)
    shown = answer.add_mutually_exclusive_group()
    shown.add_argument("--raw", action="store_true", help="print the generated text as it is")
    shown.add_argument("--json", action="store_true", help="print the answer, evidence and format check as JSON")
    answer.set_defaults(func=cmd_answer)

    report = sub.add_parser("report", help="write the run report (metrics, training curves, example predictions)")
    report.add_argument("--dry-run", action="store_true", help=SHOW_SETTINGS)
    report.set_defaults(func=_stage_command("report"))

    pipeline = sub.add_parser("pipeline", help="run `dvc repro` as one Prefect flow with an MLflow parent run")
    pipeline.add_argument("targets", nargs="*", help="dvc stages to reproduce (default: all)")
    pipeline.add_argument("--force", action="store_true", help="rerun stages even when up to date")
    pipeline.set_defaults(func=cmd_pipeline)

    serve = sub.add_parser("serve", help="serve the pipeline as a Prefect deployment (cron from params.serve)")
    serve.set_defaults(func=cmd_serve)

    from flows.plan import register_plan_command

    register_plan_command(sub)

    from flows.deploy import register_deploy_command

    register_deploy_command(sub)

    compare = sub.add_parser("compare", help="pipeline runs in MLflow: differing params, metrics per benchmark, PNG")
    compare.add_argument("--experiment", action="append", help="experiment name (repeatable; default: from params)")
    compare.add_argument("--tag", action="append", default=[], help="KEY=VALUE run tag filter (repeatable)")
    compare.add_argument("--since", help="runs started on or after this date (YYYY-MM-DD, UTC)")
    compare.add_argument(
        "--metric", action="append", help="metric key (repeatable; default: global_em, global_f1, evidence_f1)"
    )
    compare.add_argument("--out", default="artifacts/compare.png", help="chart PNG (default: artifacts/compare.png)")
    compare.set_defaults(func=cmd_compare)

    prompt = sub.add_parser("prompt", help="print what the model is given for one record of a stage's input")
    prompt.add_argument("stage", choices=("sft", "rsgrpo", "predict"))
    prompt.add_argument("--index", type=int, default=0, help="record number in the stage's input file (default: 0)")
    prompt.add_argument("--benchmark", help="predict: the test set (default: the first by name)")
    prompt.set_defaults(func=cmd_prompt)

    metrics = sub.add_parser("metrics", help="print the metrics table")
    metrics.add_argument("--file", help="metrics file (default: evaluate.metrics_file)")
    metrics.set_defaults(func=cmd_metrics)
    return parser


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the user-error rule's format: one `error:` line naming the command's --help (argparse's own
    format adds a usage block). Subcommand parsers inherit it (argparse builds them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # a bad command line exits 2 here (ArgumentParser.error)
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    # Importing prefect (flows/__init__.py) already gave the root logger its console handler, which makes basicConfig
    # a no-op: the level must still be set, or the library's INFO lines ("resuming from …") are dropped.
    logging.getLogger().setLevel(level)
    for chatty in ("httpx", "httpcore", "alembic", "urllib3"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        if args.command in PIPELINE_COMMANDS:
            # A bad params file is one message and exit 2 here, before a Prefect flow run (and its traceback log)
            load_params(args.params)
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        from flows.ranks import leave_process_group

        leave_process_group()


if __name__ == "__main__":
    sys.exit(main())
