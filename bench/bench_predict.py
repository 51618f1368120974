"""Prediction throughput: our batched predict backend vs a per-question transformers `generate` loop.

    .venv/bin/python bench/bench_predict.py [--quick] [--questions Q] [--out FILE]

Same tiny Qwen2.5-VL (untrained, params.yaml sizes), same generated test questions (3 images each, 112×112), same
greedy decoding settings from params.yaml's `predict` section (repetition penalty, max_new_tokens). "ours" is
`evisrag_core.predict.TransformersBackend` fed `predict.batch_size` questions at a time (left padding, one `generate`
per batch), as the predict stage runs it; the peer is the same backend called with one question at a time, which is
what a plain per-question transformers loop does. Both are timed in the same process, alternating, and the generated
tokens are counted by re-tokenising each answer. vLLM runs in its own venv and is measured by bench/bench_vllm.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_sft import machine

from evisrag_core.config import load_params
from evisrag_core.data.generator import GeneratorSpec, generate_dataset
from evisrag_core.data.schema import SFT_FILE, list_benchmarks, load_test_split
from evisrag_core.io import read_jsonl, write_json_atomic

log = logging.getLogger("bench_predict")
REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "params.yaml"


def setup(work: Path, questions: int) -> tuple[list[Any], Any, Any]:
    from evisrag_core.modeling import build_tiny_model, load_model_and_processor
    from evisrag_core.predict import build_requests, set_cpu_threads

    params = load_params(PARAMS_FILE)
    emb = params.data.embedded
    spec = GeneratorSpec(params.seed, emb.image_size, emb.images_per_question, emb.insufficient_fraction)
    generate_dataset(work / "data", spec, [emb.splits[0]], n_test_per_split=questions, n_sft=8, n_rl=1)
    texts = [str(m["content"]) for row in read_jsonl(work / "data" / "train" / SFT_FILE) for m in row["messages"]]
    cfg = params.predict
    model_dir = build_tiny_model(work / "model", params.model.tiny, texts, params.seed, cfg.min_pixels, cfg.max_pixels)
    set_cpu_threads()
    model, processor = load_model_and_processor(model_dir)
    split = work / "data" / "test" / list_benchmarks(work / "data")[0]
    requests = build_requests(load_test_split(split), split, cfg.top_k, cfg.max_images_per_prompt)
    return requests, model, processor


def timed_pass(backend: Any, requests: list[Any], batch_size: int, tokenizer: Any, limit: int) -> dict[str, Any]:
    started = time.perf_counter()
    answers: list[str] = []
    for start in range(0, len(requests), batch_size):
        answers += backend.generate(requests[start : start + batch_size])
    seconds = time.perf_counter() - started
    # +1 for the end-of-turn token the decoded text drops, unless the answer ran to the limit without one.
    tokens = sum(min(len(tokenizer(a, add_special_tokens=False)["input_ids"]) + 1, limit) for a in answers)
    return {"seconds": seconds, "tokens": tokens, "questions": len(requests), "answers": answers}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from evisrag_core.predict import Decoding, TransformersBackend

    params = load_params(PARAMS_FILE)
    cfg = params.predict
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        requests, model, processor = setup(Path(tmp), args.questions)
        sampling = Decoding(0.0, 1.0, cfg.repetition_penalty, args.max_new_tokens or cfg.max_new_tokens)
        backend = TransformersBackend(model, processor, sampling, cfg.prompt_template, (cfg.min_pixels, cfg.max_pixels))
        backend.generate(requests[:2])  # warm-up
        passes: dict[str, list[dict[str, float]]] = {"ours": [], "per_question": []}
        sizes = {"ours": cfg.batch_size, "per_question": 1}
        for rnd in range(args.rounds):
            for side in ("ours", "per_question")[:: 1 if rnd % 2 == 0 else -1]:
                passes[side].append(
                    timed_pass(backend, requests, sizes[side], processor.tokenizer, sampling.max_new_tokens)
                )
                log.info("round %d %s: %.1f s", rnd, side, passes[side][-1]["seconds"])
    same = sum(a == b for a, b in zip(passes["ours"][0]["answers"], passes["per_question"][0]["answers"], strict=True))
    sides = {}
    for side, runs in passes.items():
        sides[side] = {
            "batch_size": sizes[side],
            "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
            "questions_per_s": statistics.median(r["questions"] / r["seconds"] for r in runs),
            "generated_tokens": runs[0]["tokens"],
        }
    return {
        "questions": len(requests),
        "max_new_tokens": sampling.max_new_tokens,
        "rounds": args.rounds,
        "sides": sides,
        "ratio_tokens_per_s": sides["ours"]["tokens_per_s"] / sides["per_question"]["tokens_per_s"],
        "identical_answers": f"{same} of {len(requests)}",
        "vllm": "measured apart: bench/bench_vllm.py (make bench-vllm)",
        "machine": machine(),
        "command": " ".join(sys.argv),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 questions, 16 tokens, 1 round")
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: predict.max_new_tokens")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "predict.json")
    args = parser.parse_args()
    if args.quick:
        args.questions, args.max_new_tokens, args.rounds = 4, 16, 1
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
