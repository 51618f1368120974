"""Does reward scoping help? RS-GRPO vs GDPO vs GRPO (and RS-GRPO with the released masks) on the hard world.

The design, budgets and interval are pre-registered in docs/study_estimators.md. From one SFT model of the hard world
(`data.embedded.world: hard`), every arm runs with every seed on the same RL budget; each resulting model (and the
SFT model) answers the same held-out test questions greedily; the paired differences RS-GRPO − GRPO and
RS-GRPO − GDPO get a two-level bootstrap 95 % interval (evisrag_core.stats).

    PYTHONPATH=$PWD .venv/bin/python scripts/study_estimators.py                      # the full study (~90 min)
    PYTHONPATH=$PWD .venv/bin/python scripts/study_estimators.py --quick --out work/study-quick   # smoke test
    PYTHONPATH=$PWD .venv/bin/python scripts/study_estimators.py --sft-only           # SFT calibration only

Everything goes under --out (data, models, one folder per arm and seed with its learning curve and per-question
scores). A rerun skips what is finished (a run folder with its `scores.json`), so a killed study resumes at the run
it was in. Results: --results (default bench/results/estimators.json; under --out in --quick mode) and a PNG figure
beside it. MLflow: one run per model (SFT, each arm × seed) tagged `study=estimators`, in `tracking.*` of the params
file (its URI resolved against the working directory).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml

from evisrag_core.config import Params, parse_params, read_params_file
from evisrag_core.data.generator import GeneratorSpec, write_world
from evisrag_core.data.schema import RL_FILE, RL_VAL_FILE, SFT_FILE, list_benchmarks, load_test_split
from evisrag_core.data.worlds import world_named
from evisrag_core.evaluate import evaluate_split
from evisrag_core.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from evisrag_core.modeling import build_tiny_model, load_model_and_processor
from evisrag_core.predict import Decoding, TransformersBackend, build_requests, set_cpu_threads
from evisrag_core.rsgrpo.prompt_stream import split_prompts
from evisrag_core.rsgrpo.rewards import format_reward
from evisrag_core.rsgrpo.train import train_rsgrpo
from evisrag_core.sft.train import train_sft
from evisrag_core.stats import paired_bootstrap

log = logging.getLogger("study_estimators")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS = ROOT / "configs" / "study" / "hard.yaml"
DEFAULT_RESULTS = ROOT / "bench" / "results" / "estimators.json"
STUDY_TAG = "estimators"
# arm name → the rsgrpo keys it sets (docs/study_estimators.md, "Arms and seeds")
ARMS: dict[str, dict[str, str]] = {
    "rsgrpo": {"mode": "rsgrpo", "span_masks": "fixed"},
    "gdpo": {"mode": "gdpo", "span_masks": "fixed"},
    "grpo": {"mode": "grpo", "span_masks": "fixed"},
    "rsgrpo_released": {"mode": "rsgrpo", "span_masks": "released"},
}
CONTRASTS = (("rsgrpo", "grpo"), ("rsgrpo", "gdpo"), ("rsgrpo", "rsgrpo_released"))
METRICS = ("em", "accuracy", "evidence_f1", "format")  # per question; the JSON's per-seed keys
SEEDS = (0, 1, 2, 3, 4)
# --quick: the smallest run that walks every code path (2 seeds, 3 RL steps, a few questions; < ~3 min on 2 cores)
QUICK_DATA = {"n_sft": 48, "n_rl": 24, "n_test_per_split": 4}
QUICK_SFT = {"max_steps": 6, "stop_at_step": None, "save_steps": 1000, "logging_steps": 2, "warmup_steps": 0}
# An SFT model of 6 steps fails every reward, so online filtering would drop every group for 20 rounds per step.
QUICK_RSGRPO = {
    "steps": 3,
    "rollout_batch_size": 2,
    "n": 4,
    "val_every": 2,
    "val_size": 4,
    "val_sampled_n": 2,
    "online_filtering": False,
    "max_new_tokens": 48,
}
QUICK_PREDICT = {"max_new_tokens": 64}
QUICK_SEEDS = (0, 1)
QUICK_BOOTSTRAP = 500
BOOTSTRAP = 10_000


# --- settings ------------------------------------------------------------------------------------------------------


def study_params(params_file: Path, quick: bool) -> Params:
    """The params file, with the quick mode's tiny budget on top when asked."""
    raw = read_params_file(params_file)
    if quick:
        raw.setdefault("data", {}).setdefault("embedded", {}).update(QUICK_DATA)
        raw.setdefault("sft", {}).update(QUICK_SFT)
        raw.setdefault("rsgrpo", {}).update(QUICK_RSGRPO)
        raw.setdefault("predict", {}).update(QUICK_PREDICT)
    return parse_params(raw, str(params_file))


def with_paths(params: Params, section: str, **paths: Any) -> Params:
    """A copy of `params` whose `section` has these keys replaced (validated again)."""
    raw = params.model_dump(mode="json")
    raw[section].update(paths)
    return parse_params(raw, f"study override of {section}")


# --- data and models -----------------------------------------------------------------------------------------------


def write_data(params: Params, data_dir: Path) -> dict[str, Any]:
    """The world's dataset, with the held-out RL prompts written to rl_val.jsonl so every seed validates on the same
    prompts (split_prompts reads that file when it exists; otherwise its held-out set would depend on the seed)."""
    manifest_file = data_dir / "manifest.json"
    if manifest_file.is_file():
        return json.loads(manifest_file.read_text())
    emb = params.data.embedded
    spec = GeneratorSpec(params.seed, emb.image_size, emb.images_per_question, emb.insufficient_fraction)
    tmp = data_dir.with_name(data_dir.name + ".partial")
    world = world_named(emb.world)
    manifest = write_world(world, tmp, spec, list(emb.splits), emb.n_test_per_split, emb.n_sft, emb.n_rl)
    rl_file = tmp / "train" / RL_FILE
    train, val = split_prompts(rl_file, params.rsgrpo.val_size, params.seed)
    by_id = {row["id"]: row for row in read_jsonl(rl_file)}
    write_jsonl_atomic(rl_file, [by_id[p.id] for p in train])
    write_jsonl_atomic(rl_file.with_name(RL_VAL_FILE), [by_id[p.id] for p in val])
    tmp.rename(data_dir)  # the manifest marks a finished dataset: written last, moved in whole
    return manifest


def build_base(params: Params, data_dir: Path, out: Path) -> Path:
    if (out / "config.json").is_file():
        return out
    texts = (m["content"] for row in read_jsonl(data_dir / "train" / SFT_FILE) for m in row["messages"])
    return build_tiny_model(
        out, params.model.tiny, texts, params.seed, params.predict.min_pixels, params.predict.max_pixels
    )


def with_processor(model_dir: Path, base: Path) -> Path:
    """A Trainer checkpoint holds the weights only; SFT does not change the processor, so the base model's files
    complete it (copied in; the checkpoint folder is a calibration copy, not a live run's)."""
    for source in base.iterdir():
        if source.is_file() and not (model_dir / source.name).exists():
            shutil.copyfile(source, model_dir / source.name)
    return model_dir


# --- evaluation ----------------------------------------------------------------------------------------------------


def evaluate_model(params: Params, model_dir: Path, data_dir: Path) -> list[dict[str, Any]]:
    """Greedy answers of `model_dir` on every test question (predict.* settings), scored per question: EM, answer
    accuracy, evidence F1 (citations vs positives) and format (the format reward, spec §4). Rows in a fixed order
    (benchmark, then file order), so rows of two models pair by position."""
    cfg = params.predict
    model, processor = load_model_and_processor(model_dir, dtype=torch.float32, device="cpu")
    backend = TransformersBackend(
        model, processor, Decoding.from_params(cfg), cfg.prompt_template, (cfg.min_pixels, cfg.max_pixels)
    )
    rows: list[dict[str, Any]] = []
    for benchmark in list_benchmarks(data_dir):
        split_dir = data_dir / "test" / benchmark
        records = load_test_split(split_dir)
        requests = build_requests(records, split_dir, cfg.top_k, cfg.max_images_per_prompt)
        preds = []
        for start in range(0, len(requests), cfg.batch_size):
            batch = requests[start : start + cfg.batch_size]
            preds += [{"qid": r.qid, "pred": text} for r, text in zip(batch, backend.generate(batch), strict=True)]
        _, scored = evaluate_split(records, preds, source=f"{model_dir} on {benchmark}")
        for row in scored:
            rows.append(
                {
                    "benchmark": benchmark,
                    "qid": row["qid"],
                    "em": row["em"],
                    "accuracy": row["acc"],
                    "evidence_f1": row["evidence_f1"],
                    "format": format_reward(row["pred"]),
                    "pred": row["pred"],
                }
            )
    return rows


def means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.fmean(row[key] for row in rows) for key in METRICS}


def per_split_means(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    splits = sorted({row["benchmark"] for row in rows})
    return {split: means([row for row in rows if row["benchmark"] == split]) for split in splits}


# --- one run (SFT or one arm × seed) -------------------------------------------------------------------------------


def finished(folder: Path) -> dict[str, Any] | None:
    scores = folder / "scores.json"
    return json.loads(scores.read_text()) if scores.is_file() else None


def save_run(folder: Path, rows: list[dict[str, Any]], curve: list[dict[str, float]], extra: dict[str, Any]) -> dict:
    write_jsonl_atomic(folder / "per_question.jsonl", rows)
    result = {"metrics": means(rows), "per_split": per_split_means(rows), "curve": curve, **extra}
    write_json_atomic(folder / "scores.json", result)  # last: marks the run finished
    return result


def run_sft(params: Params, data_dir: Path, base: Path, folder: Path) -> dict[str, Any]:
    done = finished(folder)
    if done:
        return done
    cfg = with_paths(
        params, "sft", model_dir=str(base), out_dir=str(folder / "model"), checkpoint_dir=str(folder / "ckpt")
    ).sft
    curve: list[dict[str, float]] = []
    started = time.perf_counter()
    summary = train_sft(
        cfg, data_dir / "train" / SFT_FILE, params.seed, on_log=lambda step, logs: curve.append({"step": step, **logs})
    )
    seconds = time.perf_counter() - started
    rows = evaluate_model(params, folder / "model", data_dir)
    return save_run(folder, rows, curve, {"train_seconds": round(seconds, 1), "steps": summary["global_step"]})


def run_arm(params: Params, arm: str, seed: int, rl_file: Path, sft_model: Path, folder: Path) -> dict[str, Any]:
    done = finished(folder)
    if done:
        return done
    cfg = with_paths(
        params,
        "rsgrpo",
        **ARMS[arm],
        model_dir=str(sft_model),
        out_dir=str(folder / "model"),
        checkpoint_dir=str(folder / "ckpt"),
        report_every=0,
        save_every=10_000,  # one run is minutes long: a kill reruns it rather than resuming mid-run
    ).rsgrpo
    curve: list[dict[str, float]] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        keep = ("reward/", "val/", "val_sampled/")
        curve.append({"step": step, **{k: v for k, v in metrics.items() if k.startswith(keep)}})

    started = time.perf_counter()
    train_rsgrpo(cfg, rl_file, seed, on_step=on_step)
    seconds = time.perf_counter() - started
    rows = evaluate_model(params, folder / "model", rl_file.parent.parent)
    return save_run(folder, rows, curve, {"train_seconds": round(seconds, 1), "arm": arm, "seed": seed})


# --- tracking ------------------------------------------------------------------------------------------------------


def log_to_mlflow(name: str, tags: dict[str, str], params: dict[str, Any], result: dict[str, Any]) -> None:
    with mlflow.start_run(run_name=name, tags={"study": STUDY_TAG, **tags}):
        mlflow.log_params(params)
        mlflow.log_metrics({f"test.{k}": v for k, v in result["metrics"].items()})
        mlflow.log_metric("train_seconds", result["train_seconds"])
        for point in result["curve"]:
            values = {k.replace("/", "."): v for k, v in point.items() if k != "step" and isinstance(v, int | float)}
            mlflow.log_metrics(values, step=int(point["step"]))


def setup_tracking(params: Params, quick: bool) -> None:
    uri = params.tracking.mlflow_tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())  # as the pipeline: cwd-relative
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"{params.tracking.experiment_name}-study-estimators" + ("-quick" if quick else ""))


# --- results -------------------------------------------------------------------------------------------------------


def paired_results(
    out: Path, arms: Sequence[str], seeds: Sequence[int], replicates: int
) -> dict[str, dict[str, dict[str, Any]]]:
    paired: dict[str, dict[str, dict[str, Any]]] = {}
    for a, b in CONTRASTS:
        if a not in arms or b not in arms:
            continue
        rows_a = [read_jsonl(out / "runs" / f"{a}-seed{s}" / "per_question.jsonl") for s in seeds]
        rows_b = [read_jsonl(out / "runs" / f"{b}-seed{s}" / "per_question.jsonl") for s in seeds]
        for ra, rb in zip(rows_a, rows_b, strict=True):  # the pairing by question must hold row by row
            if [r["qid"] for r in ra] != [r["qid"] for r in rb]:
                raise RuntimeError(f"{a} and {b} answered different questions; delete {out / 'runs'} and rerun")
        paired[f"{a}-{b}"] = {
            key: paired_bootstrap(
                [[r[key] for r in rows] for rows in rows_a],
                [[r[key] for r in rows] for rows in rows_b],
                replicates=replicates,
            )
            for key in METRICS
        }
    return paired


def figure(result: dict[str, Any], runs: dict[str, dict[int, dict[str, Any]]], path: Path) -> None:
    """Left: test EM per arm (one dot per seed, the SFT start as a line). Right: held-out near-greedy answer accuracy
    during RL, mean over seeds per arm."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; writes the PNG only
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(result["estimators"])
    for x, name in enumerate(names):
        ems = [row["em"] for row in result["estimators"][name]["per_seed"]]
        left.scatter([x] * len(ems), ems, alpha=0.7)
        left.hlines(statistics.fmean(ems), x - 0.25, x + 0.25, colors="black")
    left.axhline(result["sft"]["em"], linestyle="--", color="grey", label="SFT start")
    left.set_xticks(range(len(names)), names)
    left.set_ylabel(f"test EM ({result['n_test_questions']} questions)")
    left.set_title("test EM per seed (bar: mean)")
    left.legend()
    for name in names:
        curves: dict[int, list[float]] = {}
        for run in runs[name].values():
            for point in run["curve"]:
                if "val/answer_accuracy" in point:
                    curves.setdefault(int(point["step"]), []).append(point["val/answer_accuracy"])
        steps = sorted(curves)
        right.plot(steps, [statistics.fmean(curves[s]) for s in steps], marker="o", label=name)
    right.set_xlabel("RL step")
    right.set_ylabel("held-out answer accuracy (near-greedy)")
    right.set_title("learning curves (mean over seeds)")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="the study's params file")
    parser.add_argument("--out", type=Path, default=Path("work/study"), help="data, models and runs go here")
    parser.add_argument("--results", type=Path, help="estimators.json (default: bench/results/; --quick: --out)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny budget, 2 seeds, a few questions")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"RL seeds (default {list(SEEDS)})")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), help="default: all four")
    parser.add_argument("--sft-only", action="store_true", help="data, base model, SFT and its test scores only")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument(
        "--evaluate",
        type=Path,
        metavar="MODEL_DIR",
        help="only score this model on the study's test set and print the metrics (SFT calibration, e.g. a "
        "checkpoint; a folder without processor files takes them from <out>/models/base)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.perf_counter()
    set_cpu_threads()

    params = study_params(args.params, args.quick)
    seeds = tuple(args.seeds or (QUICK_SEEDS if args.quick else SEEDS))
    arms = list(args.arms or ARMS)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    write_data(params, data_dir)
    base = build_base(params, data_dir, out / "models" / "base")
    if args.evaluate:
        rows = evaluate_model(params, with_processor(args.evaluate, base), data_dir)
        print(json.dumps({"model": str(args.evaluate), **means(rows), "per_split": per_split_means(rows)}))
        return 0
    if not args.no_mlflow:
        setup_tracking(params, args.quick)
    sft = run_sft(params, data_dir, base, out / "sft")
    log.info("SFT: %s (%.0f s)", sft["metrics"], sft["train_seconds"])
    if not args.no_mlflow and not (out / "sft" / "logged").exists():
        log_to_mlflow("sft", {"arm": "sft"}, {"sft." + k: v for k, v in params.sft.model_dump().items()}, sft)
        (out / "sft" / "logged").touch()
    if args.sft_only:
        print(json.dumps({"sft": sft["metrics"], "per_split": sft["per_split"], "seconds": sft["train_seconds"]}))
        return 0

    runs: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in arms}
    rl_file = data_dir / "train" / RL_FILE
    for seed in seeds:  # seed-major: a study stopped early still has every arm for its first seeds
        for arm in arms:
            folder = out / "runs" / f"{arm}-seed{seed}"
            result = run_arm(params, arm, seed, rl_file, out / "sft" / "model", folder)
            runs[arm][seed] = result
            log.info("%s seed %d: %s (%.0f s)", arm, seed, result["metrics"], result["train_seconds"])
            if not args.no_mlflow and not (folder / "logged").exists():
                settings = {f"rsgrpo.{k}": v for k, v in params.rsgrpo.model_dump().items() if k != "gdpo_weights"}
                settings |= {f"rsgrpo.{k}": v for k, v in ARMS[arm].items()} | {"seed": seed}
                log_to_mlflow(f"{arm}-seed{seed}", {"arm": arm, "seed": str(seed)}, settings, result)
                (folder / "logged").touch()

    n_questions = len(read_jsonl(out / "sft" / "per_question.jsonl"))
    result = {
        "world": params.data.embedded.world,
        "seeds": list(seeds),
        "n_test_questions": n_questions,
        "sft": {**sft["metrics"], "per_split": sft["per_split"], "train_seconds": sft["train_seconds"]},
        "estimators": {
            arm: {
                "per_seed": [
                    {"seed": s, **runs[arm][s]["metrics"], "per_split": runs[arm][s]["per_split"]} for s in seeds
                ],
                "mean": {k: statistics.fmean(runs[arm][s]["metrics"][k] for s in seeds) for k in METRICS},
                "settings": ARMS[arm],
                "train_seconds": [runs[arm][s]["train_seconds"] for s in seeds],
            }
            for arm in arms
        },
        "paired": paired_results(out, arms, seeds, QUICK_BOOTSTRAP if args.quick else BOOTSTRAP),
        "interval": "two-level percentile bootstrap over seeds and questions, paired by seed and question "
        "(evisrag_core.stats.paired_bootstrap; docs/study_estimators.md)",
        "budget": {
            "sft": {
                k: getattr(params.sft, k)
                for k in ("max_steps", "stop_at_step", "learning_rate", "per_device_train_batch_size")
            },
            "rsgrpo": {k: getattr(params.rsgrpo, k) for k in ("steps", "rollout_batch_size", "n", "learning_rate")},
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
        "command": shlex.join([Path(sys.executable).name, "scripts/study_estimators.py", *(argv or sys.argv[1:])]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    results = args.results or (out / "estimators.json" if args.quick else DEFAULT_RESULTS)
    write_json_atomic(results, result)
    figure(result, runs, results.with_suffix(".png"))
    print(yaml.safe_dump({"sft": result["sft"], "paired": result["paired"]}, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
