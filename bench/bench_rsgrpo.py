"""RS-GRPO step time: our step vs TRL's `GRPOTrainer`, and our step's scaling with n, images and response length.

    .venv/bin/python bench/bench_rsgrpo.py [--quick] [--only compare,scaling] [--out FILE]

compare  Ours (`evisrag_core.rsgrpo.train`: rollout → rewards → spans → advantages → clipped loss → AdamW) against
         `trl.GRPOTrainer` on the same tiny Qwen2.5-VL (untrained, random weights), the same multi-image prompts
         (TRL 1.16 takes a conversational `prompt` with `{"type": "image"}` entries and an `images` column for
         vision-language models), n = 4 samples per prompt, the same prompts per step, the same maximum response
         length, temperature 1, top-p 1, no top-k, no KL (beta 0), one update per generation batch, vision tower
         frozen on both sides, fp32 CPU. TRL's reward is our `overall` reward (rsgrpo.rewards.score), so both
         sides pay for the same reward code; ours also computes the six component spans (that is the method).
         Online filtering is off on our side (TRL has none; a random model's groups would all be filtered).
         Each side runs in its own process; sides alternate across rounds. A step is timed from one optimizer step
         to the next (TRL: `on_log` per step; ours: around `train_step`), after warm-up steps.
scaling  Our step alone, split into rollout (generate + rewards) and update (spans, advantages, forward/backward,
         AdamW), for n ∈ {2, 4, 8}, images per prompt ∈ {1, 3, 5} and response length ∈ {32, 64, 128} tokens,
         varying one at a time around n = 4, 3 images, 64 tokens.

The untrained model rarely emits end-of-turn, so responses run to the maximum length on both sides; the measured
mean response lengths are reported beside the times so a difference there is visible.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_sft import machine, vm_rss_mib

from evisrag_core.config import RSGRPOParams, load_params
from evisrag_core.data.generator import GeneratorSpec, generate_dataset
from evisrag_core.data.schema import RL_FILE, SFT_FILE
from evisrag_core.io import read_jsonl, write_json_atomic

log = logging.getLogger("bench_rsgrpo")
REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "params.yaml"
SIDES = ("ours", "trl")


def build_inputs(work: Path, images_per_prompt: int, n_rl: int) -> tuple[Path, Path]:
    """Generated RL prompts with `images_per_prompt` images each and an untrained tiny model (params.yaml sizes)."""
    from evisrag_core.modeling import build_tiny_model

    params = load_params(PARAMS_FILE)
    emb = params.data.embedded
    spec = GeneratorSpec(params.seed, emb.image_size, images_per_prompt, emb.insufficient_fraction)
    data = work / f"data-k{images_per_prompt}"
    generate_dataset(data, spec, list(emb.splits), n_test_per_split=1, n_sft=8, n_rl=n_rl)
    model_dir = work / "model"
    if not (model_dir / "config.json").is_file():
        texts = [str(m["content"]) for row in read_jsonl(data / "train" / SFT_FILE) for m in row["messages"]]
        build_tiny_model(model_dir, params.model.tiny, texts, params.seed, emb.image_size**2 // 4, emb.image_size**2)
    return data / "train" / RL_FILE, model_dir


def rl_config(model_dir: Path, run_dir: Path, n: int, prompts: int, max_new_tokens: int) -> tuple[RSGRPOParams, int]:
    params = load_params(PARAMS_FILE)
    cfg = params.rsgrpo.model_copy(
        update={
            "model_dir": str(model_dir),
            "out_dir": str(run_dir / "out"),
            "checkpoint_dir": str(run_dir / "checkpoints"),
            "report_dir": str(run_dir / "report"),
            "n": n,
            "rollout_batch_size": prompts,
            "max_new_tokens": max_new_tokens,
            "max_length": max_new_tokens,
            "buffer_length": min(params.rsgrpo.buffer_length, max_new_tokens),
            "min_length": 0,
            "online_filtering": False,
            "val_every": 0,
            "val_size": 1,
            "report_every": 0,
            "micro_batch_size": 0,
            "kl_coef": 0.0,
        }
    )
    return cfg, params.seed


# --- our side -----------------------------------------------------------------------------------------------------


def ours_steps(cfg: RSGRPOParams, rl_file: Path, seed: int, warmup: int, steps: int) -> list[dict[str, float]]:
    """Run warmup + steps RS-GRPO steps; per timed step: wall/CPU seconds, rollout/update split, response length."""
    from evisrag_core.rsgrpo import step as loop
    from evisrag_core.rsgrpo.estimators import Estimator
    from evisrag_core.rsgrpo.train import build_run

    run = build_run(cfg, rl_file, seed)
    timed = []
    for step in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        groups, rewards, metrics, edges = loop.collect_groups(run)  # 1-3: rollouts, rewards (filtering off)
        t1 = time.perf_counter()
        estimator = Estimator.from_params(cfg, edges)
        batch = loop.spans_and_advantages(
            groups, rewards, cfg.mode, run.tag_ids, run.pad_id, run.locate_spans, estimator
        )  # 4-5
        loop.policy_update(run, batch)  # 6-7
        run.step += 1
        t2 = time.perf_counter()
        if step >= warmup:
            timed.append(
                {
                    "seconds": t2 - t0,
                    "cpu_seconds": time.process_time() - c0,
                    "rollout_seconds": t1 - t0,
                    "update_seconds": t2 - t1,
                    "response_length": metrics["response_length/mean"],
                }
            )
    return timed


# --- TRL's side ---------------------------------------------------------------------------------------------------


def trl_dataset(rl_file: Path, cfg: RSGRPOParams) -> Any:
    """Our RL prompts in TRL's conversational VLM format: the same user turn (text, then one image entry per
    image), the image files in an `images` column, the tagged ground truth for the reward."""
    from datasets import Dataset, Image, List

    from evisrag_core.rsgrpo.rollout import PromptEncoder, load_rl_prompts

    prompts = load_rl_prompts(rl_file)
    encoder = PromptEncoder(None, cfg.prompt_template, (cfg.image_min_pixels, cfg.image_max_pixels), 10**9)
    rows: dict[str, list] = {"prompt": [], "images": [], "ground_truth": []}
    for prompt in prompts:
        content = [
            {"type": "image"} if part["type"] == "image" else {"type": "text", "text": part["text"]}
            for part in encoder.messages(prompt)[0]["content"]
        ]
        rows["prompt"].append([{"role": "user", "content": content}])
        rows["images"].append(list(prompt.images))
        rows["ground_truth"].append(prompt.ground_truth)
    return Dataset.from_dict(rows).cast_column("images", List(Image()))


def overall_reward(cfg: RSGRPOParams):
    from evisrag_core.rsgrpo.rewards import score

    limits = {"max_length": cfg.max_length, "buffer_length": cfg.buffer_length, "min_length": cfg.min_length}

    def reward(completions: list, completion_ids: list, ground_truth: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [
            score(text, truth, len(ids), **limits)["overall"]
            for text, ids, truth in zip(texts, completion_ids, ground_truth, strict=True)
        ]

    return reward


def trl_steps(cfg: RSGRPOParams, rl_file: Path, seed: int, warmup: int, steps: int, run_dir: Path) -> list[dict]:
    import torch
    from transformers import TrainerCallback, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from evisrag_core.modeling import freeze_vision_tower, load_model_and_processor

    set_seed(seed)
    model, processor = load_model_and_processor(cfg.model_dir, dtype=torch.float32)
    if cfg.freeze_vision_tower:
        freeze_vision_tower(model)
    stamps: dict[int, tuple[float, float, float]] = {}

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            length = float(logs.get("completions/mean_length", float("nan")))
            stamps.setdefault(state.global_step, (time.perf_counter(), time.process_time(), length))

    config = GRPOConfig(
        output_dir=str(run_dir / "trl"),
        per_device_train_batch_size=cfg.rollout_batch_size * cfg.n,
        gradient_accumulation_steps=1,
        num_generations=cfg.n,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=0,
        beta=0.0,
        epsilon=cfg.clip_low,
        epsilon_high=cfg.clip_high,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        max_steps=warmup + steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=overall_reward(cfg),
        args=config,
        train_dataset=trl_dataset(rl_file, cfg),
        processing_class=processor,
        callbacks=[Clock()],
    )
    start = (time.perf_counter(), time.process_time())
    trainer.train()
    marks = [start] + [stamps[s][:2] for s in sorted(stamps)]
    lengths = [stamps[s][2] for s in sorted(stamps)]
    return [
        {"seconds": b[0] - a[0], "cpu_seconds": b[1] - a[1], "response_length": length}
        for a, b, length in list(zip(marks, marks[1:], lengths, strict=False))[warmup : warmup + steps]
    ]


# --- worker, driver -----------------------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    cfg, seed = rl_config(args.model_dir, args.run_dir, args.n, args.prompts, args.max_new_tokens)
    if args.worker == "ours":
        steps = ours_steps(cfg, args.rl_file, seed, args.warmup, args.steps)
    else:
        steps = trl_steps(cfg, args.rl_file, seed, args.warmup, args.steps, args.run_dir)
    write_json_atomic(args.result, {"side": args.worker, "steps": steps, "rss_end_mib": vm_rss_mib()})


def run_side(side: str, rnd: int, args: argparse.Namespace, rl_file: Path, model_dir: Path, work: Path) -> dict:
    run_dir = work / "runs" / f"r{rnd}-{side}"
    run_dir.mkdir(parents=True)
    result = run_dir / "result.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--rl-file", str(rl_file)]
    command += ["--model-dir", str(model_dir), "--run-dir", str(run_dir), "--result", str(result)]
    command += ["--n", str(args.n), "--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with (run_dir / "worker.log").open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = "\n".join((run_dir / "worker.log").read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{side} worker (round {rnd}) failed:\n{tail}")
    data = json.loads(result.read_text())
    data.update(round=rnd, peak_rss_mib=usage.ru_maxrss / 1024)
    data["median_step_s"] = statistics.median(s["seconds"] for s in data["steps"])
    data["median_response_length"] = statistics.median(s["response_length"] for s in data["steps"])
    log.info(
        "round %d %-4s median step %.2f s, peak RSS %.0f MiB", rnd, side, data["median_step_s"], data["peak_rss_mib"]
    )
    return data


def compare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rl_file, model_dir = build_inputs(work, 3, max(args.prompts * (args.steps + args.warmup + 2), 8))
    runs = []
    for rnd in range(args.rounds):
        for side in SIDES if rnd % 2 == 0 else SIDES[::-1]:
            runs.append(run_side(side, rnd, args, rl_file, model_dir, work))
    ratios, cpu_ratios = [], []
    for rnd in range(args.rounds):
        by = {r["side"]: r for r in runs if r["round"] == rnd}
        ratios.append(by["trl"]["median_step_s"] / by["ours"]["median_step_s"])
        cpu = {side: statistics.median(s["cpu_seconds"] for s in by[side]["steps"]) for side in SIDES}
        cpu_ratios.append(cpu["trl"] / cpu["ours"])
    side_summary = {
        side: {
            "median_step_s": statistics.median(r["median_step_s"] for r in runs if r["side"] == side),
            "median_response_length": statistics.median(r["median_response_length"] for r in runs if r["side"] == side),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs if r["side"] == side),
        }
        for side in SIDES
    }
    return {
        "ratio_trl_over_ours_step_time": statistics.median(ratios),
        "ratio_per_round": ratios,
        "ratio_trl_over_ours_cpu_time": statistics.median(cpu_ratios),
        "sides": side_summary,
        "setup": {
            "n": args.n,
            "prompts_per_step": args.prompts,
            "max_new_tokens": args.max_new_tokens,
            "images_per_prompt": 3,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
        },
        "runs": runs,
    }


def scaling_grid(quick: bool) -> list[dict[str, int]]:
    base = {"n": 4, "images": 3, "max_new_tokens": 64}
    values = {"n": [2, 4, 8], "images": [1, 3, 5], "max_new_tokens": [32, 64, 128]}
    if quick:
        base = {"n": 2, "images": 1, "max_new_tokens": 16}
        values = {"n": [2, 4], "images": [1, 3], "max_new_tokens": [16, 32]}
    return [{**base, "vary": key, key: v} for key, vs in values.items() for v in vs]


def scaling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    points = []
    for point in scaling_grid(args.quick):
        rl_file, model_dir = build_inputs(work, point["images"], max(args.prompts * (args.steps + args.warmup + 2), 8))
        run_dir = work / "scaling" / f"{point['vary']}-{point[point['vary']]}"
        cfg, seed = rl_config(model_dir, run_dir, point["n"], args.prompts, point["max_new_tokens"])
        steps = ours_steps(cfg, rl_file, seed, args.warmup, args.steps)
        row = {**point, "prompts": args.prompts}
        for key in ("seconds", "rollout_seconds", "update_seconds", "response_length"):
            row[key] = statistics.median(s[key] for s in steps)
        log.info("scaling %s", row)
        points.append(row)
    return {"points": points, "prompts_per_step": args.prompts, "steps": args.steps, "warmup": args.warmup}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round, 1 step, short responses")
    parser.add_argument("--only", default="compare,scaling")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2, help="prompt groups per step")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "rsgrpo.json")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--rl-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.worker:
        args.steps, args.warmup, args.rounds, args.max_new_tokens, args.n = 1, 1, 1, 16, 4
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="bench_rsgrpo_") as tmp:
        if "compare" in args.only:
            results["compare"] = compare(args, Path(tmp))
        if "scaling" in args.only:
            results["scaling"] = scaling(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, results)
    print(json.dumps({k: v for k, v in results.items() if k != "machine"}, indent=2)[:4000])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
