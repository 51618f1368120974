"""Held-out reward of two models on the RS-GRPO validation prompts, and whether the difference is beyond noise.

    .venv/bin/python bench/bench_rsgrpo_quality.py --project . [--models models/sft models/rsgrpo] [--samples 16]

Issue 4's bar: the mean overall reward on held-out prompts is higher after RS-GRPO than after SFT. The held-out
prompts are those the `rsgrpo` stage validates on (`prompt_stream.split_prompts`: val_size prompts of the project's
RL data). Each model answers every prompt `--samples` times at the rollout temperature/top_p of params.yaml, and
once at the validation temperature (near-greedy, as the reference validates).

Noise. A prompt's samples are drawn after `torch.manual_seed(seed of that prompt)`, the same seed for every model
(common random numbers: where two models agree, they draw the same responses). The comparison is paired by prompt:
d_p = mean reward of model B on prompt p − that of model A, and the gain is mean_p d_p with standard error
std(d_p) / sqrt(P). Prompts are independent, so this interval is honest whatever the coupling of the samples; the
gain is called beyond noise when its 95 % interval (± 1.96 SE) excludes 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from evisrag_core.config import ParamsError, RSGRPOParams, load_params
from evisrag_core.data.schema import RL_FILE
from evisrag_core.io import write_json_atomic
from evisrag_core.modeling import load_model_and_processor
from evisrag_core.rsgrpo.prompt_stream import split_prompts
from evisrag_core.rsgrpo.rollout import RLPrompt, Sampling, TransformersRollout
from evisrag_core.rsgrpo.state import REWARD_KEYS
from evisrag_core.rsgrpo.step import group_rewards
from evisrag_core.rsgrpo.train import prompt_encoder
from evisrag_core.rsgrpo.validate import answer_accuracies

log = logging.getLogger("bench_rsgrpo_quality")
KEYS = (*REWARD_KEYS, "answer_accuracy")  # the rewards group_rewards holds, then the answer accuracy


def prompt_seed(seed: int, index: int) -> int:
    return random.Random(f"{seed}-bench-held-out-{index}").getrandbits(63)


def load_rollout(model_dir: Path, cfg: RSGRPOParams) -> TransformersRollout:
    """The model as the rsgrpo stage samples from it (fp32 CPU, the stage's decoder and image sizes)."""
    model, processor = load_model_and_processor(model_dir, dtype=torch.float32, device="cpu")
    return TransformersRollout(model, processor, prompt_encoder(processor, cfg), cfg.rollout_decoder)


def per_prompt_means(
    rollout: TransformersRollout, cfg: RSGRPOParams, prompts: list[RLPrompt], sampling: Sampling, seed: int
) -> list[dict[str, float]]:
    """For each prompt, the mean of every reward key over `sampling.n` responses, drawn after the prompt's seed."""
    rows = []
    for index, prompt in enumerate(prompts):
        (group,) = rollout.generate([prompt], sampling, seeds=[prompt_seed(seed, index)])
        row = group_rewards(group, cfg).means()  # {key: mean over the n responses} for every key of REWARD_KEYS
        rows.append(row | {"answer_accuracy": statistics.fmean(answer_accuracies(group))})
    return rows


def paired_gain(before: list[dict[str, float]], after: list[dict[str, float]], key: str) -> dict[str, float]:
    diffs = [b[key] - a[key] for a, b in zip(before, after, strict=True)]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return {"gain": mean, "se": se, "ci95_low": mean - 1.96 * se, "ci95_high": mean + 1.96 * se}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.fmean(row[key] for row in rows) for key in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a folder where sft and rsgrpo have run")
    parser.add_argument("--models", nargs=2, default=["models/sft", "models/rsgrpo"], metavar=("BEFORE", "AFTER"))
    parser.add_argument("--samples", type=int, default=16, help="responses per prompt at the rollout temperature")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "rsgrpo_quality.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        params = load_params(args.project / "params.yaml")
    except ParamsError as err:
        parser.error(str(err))
    cfg = params.rsgrpo
    rl_file = args.project / params.data.out_dir / "train" / RL_FILE
    missing = [str(p) for p in (rl_file, *(args.project / m for m in args.models)) if not p.exists()]
    if missing:
        parser.error(f"{', '.join(missing)} not found: run the pipeline in {args.project} first (`make run`)")
    _, prompts = split_prompts(rl_file, cfg.val_size, params.seed)
    result: dict[str, Any] = {
        "project": str(args.project.resolve()),
        "prompts": len(prompts),
        "samples": args.samples,
        "sampled_at": {"temperature": cfg.temperature, "top_p": cfg.top_p},
        "near_greedy_at": {"temperature": cfg.val_temperature, "top_p": cfg.val_top_p},
        "models": {},
    }
    measured: dict[str, dict[str, list[dict[str, float]]]] = {}
    for model in args.models:
        started = time.perf_counter()
        rollout = load_rollout(args.project / model, cfg)
        sampled_at = Sampling(args.samples, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
        greedy_at = Sampling(1, cfg.val_temperature, cfg.val_top_p, cfg.max_new_tokens)
        sampled = per_prompt_means(rollout, cfg, prompts, sampled_at, params.seed)
        greedy = per_prompt_means(rollout, cfg, prompts, greedy_at, params.seed)
        measured[model] = {"sampled": sampled, "near_greedy": greedy}
        summary = {"sampled": summarise(sampled), "near_greedy": summarise(greedy)}
        result["models"][model] = summary
        elapsed = time.perf_counter() - started
        log.info("%s: %.1f s, sampled overall %.3f", model, elapsed, summary["sampled"]["overall"])
    before, after = (measured[m] for m in args.models)
    result["gain"] = {
        kind: {key: paired_gain(before[kind], after[kind], key) for key in KEYS} for kind in ("sampled", "near_greedy")
    }
    overall = result["gain"]["sampled"]["overall"]
    result["beyond_noise"] = overall["ci95_low"] > 0 or overall["ci95_high"] < 0
    write_json_atomic(args.out, result)
    print(markdown(result, args.models))


def markdown(result: dict[str, Any], models: list[str]) -> str:
    a, b = models
    lines = [
        f"{result['prompts']} held-out prompts × {result['samples']} samples at T={result['sampled_at']['temperature']}"
        f", top_p={result['sampled_at']['top_p']} (paired by prompt, common random numbers)",
        "",
        f"| reward | {a} | {b} | gain | 95 % interval |",
        "|---|---:|---:|---:|---|",
    ]
    for key in KEYS:
        g = result["gain"]["sampled"][key]
        before, after = result["models"][a]["sampled"][key], result["models"][b]["sampled"][key]
        interval = f"[{g['ci95_low']:+.3f}, {g['ci95_high']:+.3f}]"
        lines.append(f"| {key} | {before:.3f} | {after:.3f} | {g['gain']:+.3f} | {interval} |")
    greedy_a = result["models"][a]["near_greedy"]["overall"]
    greedy_b = result["models"][b]["near_greedy"]["overall"]
    lines += ["", f"near-greedy overall: {greedy_a:.3f} → {greedy_b:.3f}; beyond noise: {result['beyond_noise']}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
