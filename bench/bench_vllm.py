"""vLLM against transformers, in one run: prediction throughput four ways, and one RS-GRPO step with each rollout
backend.

    EVISRAG_VLLM_PYTHON=.venv-vllm/bin/python .venv/bin/python bench/bench_vllm.py [--quick]   # or: make bench-vllm

predict  The same tiny Qwen2.5-VL (untrained, params.yaml sizes), the same generated test questions (3 images of
         112×112 each), greedy decoding with predict's repetition penalty, fp32 on CPU:
           vllm_batched         `VllmBackend` given every question in one engine call (what `predict.backend: vllm`
                                does)
           vllm_per_question    the same engine called once per question (the reference's `predict.py` loop)
           hf_batched           `TransformersBackend`, predict.batch_size questions per `generate`
           hf_per_question      the same backend, one question per `generate`
         Tokens are counted by re-tokenising each answer (+1 for the end-of-turn token when the answer stopped
         before the limit), identically for all four. Engine start-up is reported apart, not in the tokens/s.
rsgrpo   One RS-GRPO step (rollout → rewards → spans → advantages → update) with `rollout_backend: vllm` (weights
         synced into the engine before the rollout) and with `transformers` (shared-prefix sampler), same prompts,
         n, response length; the rollout part, the update and the weight sync timed apart; median of the timed
         steps after a warm-up step.

The untrained model seldom ends a response, so answers run to the token limit on every side.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_predict import setup, timed_pass
from bench_rsgrpo import build_inputs, rl_config
from bench_sft import machine

from evisrag_core.config import load_params
from evisrag_core.io import write_json_atomic, write_text_atomic

log = logging.getLogger("bench_vllm")
REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "params.yaml"


def bench_predict(work: Path, questions: int, max_new_tokens: int) -> dict[str, Any]:
    from evisrag_core.predict import Decoding, TransformersBackend
    from evisrag_core.vllm_engine.backend import VllmBackend, predict_engine_args
    from evisrag_core.vllm_engine.client import EngineProcess

    cfg = load_params(PARAMS_FILE).predict
    requests, model, processor = setup(work, questions)
    decoding = Decoding(0.0, 1.0, cfg.repetition_penalty, max_new_tokens)
    pixels = (cfg.min_pixels, cfg.max_pixels)
    tokenizer = processor.tokenizer
    sides: dict[str, dict[str, Any]] = {}

    hf = TransformersBackend(model, processor, decoding, cfg.prompt_template, pixels)
    hf.generate(requests[:2])  # warm-up
    for side, size in (("hf_batched", cfg.batch_size), ("hf_per_question", 1)):
        sides[side] = timed_pass(hf, requests, size, tokenizer, max_new_tokens) | {"batch_size": size}
        log.info("%s: %.1f s", side, sides[side]["seconds"])

    model_dir = str(work / "model")
    started = time.perf_counter()
    engine = EngineProcess(predict_engine_args(model_dir, cfg.max_images_per_prompt))
    engine_start = time.perf_counter() - started
    try:
        vllm = VllmBackend(model_dir, processor, decoding, cfg.prompt_template, pixels, engine=engine)
        vllm.generate(requests[:2])  # warm-up
        for side, size in (("vllm_batched", len(requests)), ("vllm_per_question", 1)):
            sides[side] = timed_pass(vllm, requests, size, tokenizer, max_new_tokens) | {"batch_size": size}
            log.info("%s: %.1f s", side, sides[side]["seconds"])
    finally:
        engine.close()
    reference = sides["hf_batched"]["answers"]
    for entry in sides.values():
        answers = entry.pop("answers")
        entry["tokens_per_s"] = entry["tokens"] / entry["seconds"]
        entry["identical_to_hf_batched"] = sum(a == b for a, b in zip(answers, reference, strict=True))
    return {
        "questions": len(requests),
        "max_new_tokens": max_new_tokens,
        "engine_start_seconds": engine_start,
        "engine_versions": engine.versions,
        "sides": sides,
    }


def bench_rsgrpo(work: Path, prompts: int, n: int, max_new_tokens: int, steps: int) -> dict[str, Any]:
    from evisrag_core.rsgrpo import step as loop
    from evisrag_core.rsgrpo.train import build_run

    rl_file, model_dir = build_inputs(work, images_per_prompt=3, n_rl=prompts * (steps + 1) + 2)
    result: dict[str, Any] = {"prompts": prompts, "n": n, "max_new_tokens": max_new_tokens}
    for backend in ("vllm", "transformers"):
        cfg, seed = rl_config(model_dir, work / f"run-{backend}", n, prompts, max_new_tokens)
        cfg = cfg.model_copy(update={"rollout_backend": backend, "bf16": "off"})
        started = time.perf_counter()
        run = build_run(cfg, rl_file, seed)
        build_seconds = time.perf_counter() - started
        timed = []
        try:
            for step in range(steps + 1):
                t0 = time.perf_counter()
                groups, rewards, metrics = loop.collect_groups(run)  # rollout (with the weight sync) and rewards
                t1 = time.perf_counter()
                batch = loop.spans_and_advantages(groups, rewards, cfg.mode, run.tag_ids, run.pad_id)
                loop.policy_update(run, batch)
                run.step += 1
                t2 = time.perf_counter()
                if step > 0:  # the first step warms up
                    sync = run.rollout.sync_seconds[-1] if backend == "vllm" else 0.0
                    timed.append(
                        {
                            "seconds": t2 - t0,
                            "rollout_seconds": t1 - t0,
                            "sync_seconds": sync,
                            "update_seconds": t2 - t1,
                            "response_length": metrics["response_length/mean"],
                        }
                    )
        finally:
            if backend == "vllm":
                run.rollout.close()
        result[backend] = {key: statistics.median(t[key] for t in timed) for key in timed[0]} | {
            "build_seconds": build_seconds,
            "steps_timed": len(timed),
        }
        log.info("rsgrpo %s: %s", backend, result[backend])
    return result


def markdown(result: dict[str, Any]) -> str:
    p, r = result["predict"], result["rsgrpo"]
    base = p["sides"]["hf_per_question"]["tokens_per_s"]
    lines = [
        f"# vLLM vs transformers ({result['date']})",
        "",
        f"`{result['command']}` on {result['machine']['cores']} cores ({result['machine']['cpu']}); 1-minute load "
        f"average {result['load_average'][0]:.1f} at the start, {result['load_average'][1]:.1f} at the end (above 2: "
        "other jobs shared the cores, so absolute figures are noisy; the sides ran one after another).",
        "",
        f"Predict: {p['questions']} questions × 3 images, greedy, up to {p['max_new_tokens']} new tokens, fp32 CPU; "
        f"vLLM {p['engine_versions'].get('vllm')} engine start {p['engine_start_seconds']:.0f} s (not counted).",
        "",
        "| predict side | questions per call | seconds | tokens | tokens/s | × per-question transformers | "
        "answers identical to transformers batched |",
        "|---|---|---|---|---|---|---|",
    ]
    for side, entry in p["sides"].items():
        lines.append(
            f"| {side} | {entry['batch_size']} | {entry['seconds']:.1f} | {entry['tokens']} | "
            f"{entry['tokens_per_s']:.0f} | {entry['tokens_per_s'] / base:.2f} | "
            f"{entry['identical_to_hf_batched']}/{p['questions']} |"
        )
    lines += [
        "",
        f"RS-GRPO step: {r['prompts']} prompts × n {r['n']}, up to {r['max_new_tokens']} tokens, median of "
        f"{r['vllm']['steps_timed']} steps after a warm-up.",
        "",
        "| rollout backend | step s | rollout s (incl. sync) | weight sync s | update s | mean response length | "
        "run build s |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in ("vllm", "transformers"):
        e = r[backend]
        lines.append(
            f"| {backend} | {e['seconds']:.2f} | {e['rollout_seconds']:.2f} | {e['sync_seconds']:.3f} | "
            f"{e['update_seconds']:.2f} | {e['response_length']:.0f} | {e['build_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def rewrite_markdown(json_file: Path) -> None:
    """bench/results/vllm.md again from its JSON (after a change to the table layout)."""
    import json

    write_text_atomic(json_file.with_suffix(".md"), markdown(json.loads(json_file.read_text())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 questions, 16 tokens, 1 timed step")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rl-prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--rl-steps", type=int, default=2, help="timed steps (after one warm-up step)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "vllm.json")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.max_new_tokens, args.rl_prompts, args.n, args.rl_steps = 4, 16, 2, 2, 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_vllm_") as tmp:
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "quick": args.quick,
            "predict": bench_predict(Path(tmp) / "predict", args.questions, args.max_new_tokens),
            "rsgrpo": bench_rsgrpo(Path(tmp) / "rsgrpo", args.rl_prompts, args.n, args.max_new_tokens, args.rl_steps),
        }
    result["load_average"] = [load_at_start, os.getloadavg()[0]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    write_text_atomic(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
