"""SFT optimizer steps/s of our stage vs TRL's `SFTTrainer`, on the same tiny model, data and batch, in one run.

    .venv/bin/python bench/bench_sft.py [--steps N --warmup W --rounds R --out bench/results]

(a) ours: `evisrag_core.sft.train.train_sft`, i.e. transformers' `Trainer` + `SFTCollator` (labels on the answer and its
    `<|im_end|>` only).
(b) TRL:  `trl.SFTTrainer` on a dataset in TRL's conversational VLM format (`messages` with `{"type": "image"}`
    placeholders + an `images` column), the same processor, `assistant_only_loss=True` with TRL's own Qwen2.5-VL
    training chat template (the `{% generation %}` markers TRL needs; it cannot patch our restated template).

Both sides take their hyper-parameters from the `sft` section of params.yaml (the embedded default run) with
`max_steps = warmup + steps`, `logging_steps = 1` and no checkpoint inside the timed window; the TRL config copies our
`TrainingArguments` field by field and the worker refuses to run if a shared field differs. fp32 on CPU, gradient
checkpointing as params.yaml says (TRL's default would turn it on), vision tower frozen or not by the same function.

Timing: a clock in each trainer's `on_log` (called once per optimizer step on both sides) stamps every step; the
figure is `steps / (t[warmup + steps] - t[warmup])`, so model loading, data set-up and the warm-up step(s) are not
counted. Each side of each round runs in its own subprocess; its peak RSS is the kernel's `ru_maxrss` for that child
(`os.wait4`). Sides alternate order across rounds; the headline ratio is the median of the per-round ratios of
1 / median step time (also reported: from total timed seconds and from CPU seconds per step). Before the rounds, the
driver checks on the first batch that both sides feed the model identical inputs, and times each side's collator and
forward + backward interleaved in one process (see `components`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evisrag_core.config import SFTParams, load_params
from evisrag_core.data.generator import GeneratorSpec, generate_dataset
from evisrag_core.data.schema import SFT_FILE
from evisrag_core.io import read_jsonl, write_json_atomic, write_text_atomic

log = logging.getLogger("bench_sft")
REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO_ROOT / "params.yaml"
SIDES = ("ours", "trl")
# TrainingArguments fields the TRL config must share with ours (checked on the constructed trainer).
SHARED_FIELDS = (
    "learning_rate",
    "weight_decay",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_steps",
    "lr_scheduler_type",
    "max_grad_norm",
    "bf16",
    "fp16",
    "activation_checkpointing",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "save_strategy",
    "save_steps",
    "logging_steps",
    "logging_first_step",
    "report_to",
    "seed",
    "data_seed",
    "remove_unused_columns",
    "dataloader_num_workers",
    "use_cpu",
    "disable_tqdm",
)


# --- set-up: generated data, tiny model, per-run config ----------------------------------------------------------


def build_inputs(work: Path, n_sft: int) -> tuple[Path, Path]:
    """The embedded dataset (params.yaml sizes, `n_sft` SFT rows) and the tiny model built from it, as the pipeline
    builds them (tasks/model.py). Returns (sft_file, model_dir)."""
    from evisrag_core.modeling import build_tiny_model

    params = load_params(PARAMS_FILE)
    emb = params.data.embedded
    spec = GeneratorSpec(params.seed, emb.image_size, emb.images_per_question, emb.insufficient_fraction)
    generate_dataset(work / "data", spec, list(emb.splits), n_test_per_split=1, n_sft=n_sft, n_rl=1)
    sft_file = work / "data" / "train" / SFT_FILE
    texts = [str(m["content"]) for row in read_jsonl(sft_file) for m in row["messages"]]
    model_dir = build_tiny_model(
        work / "model", params.model.tiny, texts, params.seed, params.predict.min_pixels, params.predict.max_pixels
    )
    return sft_file, model_dir


def run_config(model_dir: Path, run_dir: Path, total_steps: int) -> tuple[SFTParams, int]:
    """params.yaml's `sft` section for one timed run: fresh checkpoint dir, a log every step, no mid-run checkpoint."""
    params = load_params(PARAMS_FILE)
    cfg = params.sft.model_copy(
        update={
            "model_dir": str(model_dir),
            "out_dir": str(run_dir / "out"),
            "checkpoint_dir": str(run_dir / "checkpoints"),
            "log_file": str(run_dir / "log.jsonl"),
            "max_steps": total_steps,
            "logging_steps": 1,
            "save_steps": total_steps + 1,
        }
    )
    return cfg, params.seed


# --- TRL's side: dataset format, config, chat template -----------------------------------------------------------


def trl_training_template() -> str:
    """TRL's Qwen2.5-VL chat template with `{% generation %}` markers around the assistant turn."""
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl_training.jinja").read_text(encoding="utf-8")


def trl_dataset(sft_file: Path) -> Any:
    """Our SFT conversations in TRL's conversational VLM format, in the order our collator renders them (the system
    turn, the user text with an image placeholder at each marker), the `images` column holds the files."""
    from datasets import Dataset, Image, List

    from evisrag_core.prompts import content_parts
    from evisrag_core.sft.train import load_conversations

    def messages(c: Any) -> list[dict[str, Any]]:
        system = [{"role": "system", "content": [{"type": "text", "text": c.system}]}] if c.system else []
        user = [p if p["type"] == "text" else {"type": "image"} for p in content_parts(c.user_text, c.images)]
        answer = {"role": "assistant", "content": [{"type": "text", "text": c.response}]}
        return [*system, {"role": "user", "content": user}, answer]

    conversations = load_conversations(sft_file)
    rows = {
        "messages": [messages(c) for c in conversations],
        "images": [c.images for c in conversations],
    }
    return Dataset.from_dict(rows).cast_column("images", List(Image()))


def trl_config(ours: Any, cfg: SFTParams, template_path: str) -> Any:
    """An `SFTConfig` holding the values of our `TrainingArguments` (`ours`), plus TRL's assistant-only loss."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=ours.output_dir,
        save_total_limit=ours.save_total_limit,
        **{name: getattr(ours, name) for name in SHARED_FIELDS},
        max_length=cfg.cutoff_len,
        assistant_only_loss=True,
        chat_template_path=template_path,
    )


def differing_arguments(ours: Any, theirs: Any) -> dict[str, tuple[Any, Any]]:
    return {n: (getattr(ours, n), getattr(theirs, n)) for n in SHARED_FIELDS if getattr(ours, n) != getattr(theirs, n)}


# --- worker: one side, one timed run, in its own process ---------------------------------------------------------


def vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class StepClock:
    """Stamps the first log of each optimizer step with wall time and this process's CPU time (all threads); RSS is
    read once, right after the warm-up."""

    def __init__(self, warmup: int):
        self.warmup, self.times, self.cpu_times, self.rss_after_warmup_mib = warmup, {}, {}, float("nan")
        self.losses: dict[int, float] = {}

    def mark(self, step: int, logs: dict[str, Any]) -> None:
        if step in self.times:
            return
        self.times[step] = time.perf_counter()
        self.cpu_times[step] = time.process_time()
        if "loss" in logs:
            self.losses[step] = float(logs["loss"])
        if step == self.warmup:
            self.rss_after_warmup_mib = vm_rss_mib()

    def timed(self, steps: int) -> float:
        last = self.warmup + steps
        missing = [s for s in range(self.warmup, last + 1) if s not in self.times]
        if missing:
            raise RuntimeError(f"no log for optimizer steps {missing}; logging_steps must be 1")
        return self.times[last] - self.times[self.warmup]

    def step_seconds(self, steps: int, cpu: bool = False) -> list[float]:
        times = self.cpu_times if cpu else self.times
        stamps = [times[s] for s in range(self.warmup, self.warmup + steps + 1)]
        return [round(b - a, 4) for a, b in itertools.pairwise(stamps)]


def run_ours(cfg: SFTParams, sft_file: Path, seed: int, clock: StepClock) -> None:
    from evisrag_core.sft.train import train_sft

    train_sft(cfg, sft_file, seed, on_log=clock.mark)


def make_trl_trainer(cfg: SFTParams, sft_file: Path, seed: int, template_path: str, callbacks: list) -> Any:
    """TRL's SFTTrainer over the model prepared exactly as train_sft prepares it; refuses differing arguments."""
    import torch
    from transformers import set_seed
    from trl import SFTTrainer

    from evisrag_core.modeling import freeze_vision_tower, load_model_and_processor
    from evisrag_core.sft.train import training_arguments

    # The same preparation as train_sft: seed, fp32 load, right padding, train mode, vision tower per params.yaml.
    set_seed(seed)
    model, processor = load_model_and_processor(cfg.model_dir, dtype=torch.float32)
    processor.tokenizer.padding_side = "right"
    model.train()
    if cfg.freeze_vision_tower:
        freeze_vision_tower(model)
    # Built before the trainer: a TrainingArguments made later resets the accelerate state the trainer holds.
    ours = training_arguments(cfg, seed)
    trainer = SFTTrainer(
        model=model,
        args=trl_config(ours, cfg, template_path),
        train_dataset=trl_dataset(sft_file),
        processing_class=processor,
        callbacks=callbacks,
    )
    differ = differing_arguments(ours, trainer.args)
    if differ:
        raise RuntimeError(f"TRL's training arguments differ from ours: {differ}")
    return trainer


def write_trl_template(run_dir: Path) -> str:
    template = run_dir / "qwen2_5_vl_training.jinja"
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_text(trl_training_template(), encoding="utf-8")
    return str(template)


def run_trl(cfg: SFTParams, sft_file: Path, seed: int, clock: StepClock, template_path: str) -> None:
    from transformers import TrainerCallback

    class _Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            clock.mark(state.global_step, logs or {})

    make_trl_trainer(cfg, sft_file, seed, template_path, [_Clock()]).train()


def worker(args: argparse.Namespace) -> None:
    cfg, seed = run_config(args.model_dir, args.run_dir, args.warmup + args.steps)
    clock = StepClock(args.warmup)
    if args.worker == "ours":
        run_ours(cfg, args.sft_file, seed, clock)
    else:
        run_trl(cfg, args.sft_file, seed, clock, write_trl_template(args.run_dir))
    seconds = clock.timed(args.steps)
    last = args.warmup + args.steps
    result = {
        "side": args.worker,
        "steps_timed": args.steps,
        "seconds": seconds,
        "steps_per_s": args.steps / seconds,
        "steps_per_s_median_step": 1 / statistics.median(clock.step_seconds(args.steps)),
        "step_seconds": clock.step_seconds(args.steps),
        "cpu_s_per_step_median": statistics.median(clock.step_seconds(args.steps, cpu=True)),
        "step_cpu_seconds": clock.step_seconds(args.steps, cpu=True),
        "rss_after_warmup_mib": clock.rss_after_warmup_mib,
        "loss_first": clock.losses.get(1),
        "loss_last": clock.losses.get(last),
    }
    write_json_atomic(args.result, result)


# --- driver: data + model once, then alternating subprocess rounds ------------------------------------------------


def _median_seconds(jobs: dict[str, Any], reps: int) -> dict[str, float]:
    """Run each job `reps` times, interleaved (the order flips every rep); median wall seconds per job."""
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for rep in range(reps):
        for name in list(jobs)[:: 1 if rep % 2 == 0 else -1]:
            started = time.perf_counter()
            jobs[name]()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(xs) for name, xs in seconds.items()}


def components(sft_file: Path, model_dir: Path, work: Path, reps: int) -> dict[str, Any]:
    """One process, the same first batch for both sides: are the inputs identical, which tokens does each side put
    in the loss (masking is the one intended difference), and, interleaved every ~second so both see the same load,
    how long each side takes to build the batch (collator) and to run forward + backward through its own loss path
    (ours: the model's loss, as Trainer.compute_loss; TRL: SFTTrainer.compute_loss)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from evisrag_core.modeling import freeze_vision_tower, load_model_and_processor
    from evisrag_core.sft.train import SFTCollator, load_conversations

    run_dir = work / "runs" / "components"
    cfg, seed = run_config(model_dir, run_dir, 1)
    trainer = make_trl_trainer(cfg, sft_file, seed, write_trl_template(run_dir), [])
    model, processor = load_model_and_processor(cfg.model_dir, dtype=torch.float32)
    processor.tokenizer.padding_side = "right"
    model.train()
    if cfg.freeze_vision_tower:
        freeze_vision_tower(model)
    batch = cfg.per_device_train_batch_size
    examples, dataset = load_conversations(sft_file)[:batch], trl_dataset(sft_file)
    ours_collate = SFTCollator(processor, cfg.image_min_pixels, cfg.image_max_pixels, cfg.cutoff_len)
    trl_collate = DataCollatorForVisionLanguageModeling(
        processor, max_length=cfg.cutoff_len, assistant_only_loss=True, chat_template=trl_training_template()
    )
    ours, theirs = ours_collate(examples), trl_collate([dataset[i] for i in range(batch)])

    def ours_step() -> None:
        model(**ours).loss.backward()
        model.zero_grad(set_to_none=True)

    def trl_step() -> None:
        trainer.compute_loss(trainer.model, dict(theirs)).backward()
        trainer.model.zero_grad(set_to_none=True)

    ours_step(), trl_step()  # warm-up
    timings = _median_seconds(
        {
            "collate_ours": lambda: ours_collate(examples),
            "collate_trl": lambda: trl_collate([dataset[i] for i in range(batch)]),
            "forward_backward_ours": ours_step,
            "forward_backward_trl": trl_step,
        },
        reps,
    )
    per_step = {side: timings[f"collate_{side}"] + timings[f"forward_backward_{side}"] for side in SIDES}
    in_ours, in_theirs = ours["labels"] != -100, theirs["labels"] != -100
    decode = processor.tokenizer.convert_ids_to_tokens
    return {
        "batch": batch,
        "model_parameters": model.num_parameters(),
        "identical_input_ids": ours["input_ids"].shape == theirs["input_ids"].shape
        and bool(torch.equal(ours["input_ids"], theirs["input_ids"])),
        "identical_pixel_values": bool(torch.allclose(ours["pixel_values"], theirs["pixel_values"])),
        "sequence_length_max": int(ours["input_ids"].shape[1]),
        "loss_tokens_ours": int(in_ours.sum()),
        "loss_tokens_trl": int(in_theirs.sum()),
        "only_in_trl_loss": dict(Counter(decode(ours["input_ids"][in_theirs & ~in_ours].tolist()))),
        "only_in_our_loss": dict(Counter(decode(ours["input_ids"][in_ours & ~in_theirs].tolist()))),
        "reps": reps,
        "median_seconds": timings,
        "ratio_ours_over_trl_collate_plus_forward_backward": per_step["trl"] / per_step["ours"],
    }


def run_side(side: str, rnd: int, args: argparse.Namespace, sft_file: Path, model_dir: Path, work: Path) -> dict:
    run_dir = work / "runs" / f"r{rnd}-{side}"
    run_dir.mkdir(parents=True)
    result_file, log_file = run_dir / "result.json", run_dir / "worker.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--steps", str(args.steps)]
    command += ["--warmup", str(args.warmup), "--sft-file", str(sft_file), "--model-dir", str(model_dir)]
    command += ["--run-dir", str(run_dir), "--result", str(result_file)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with log_file.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{side} worker (round {rnd}) exited {process.returncode}; log {log_file}:\n{tail}")
    result = json.loads(result_file.read_text())
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    result["wall_s"] = time.perf_counter() - started
    result["round"] = rnd
    log.info(
        "round %d %-4s %.3f steps/s, peak RSS %.0f MiB (%.0f s)",
        rnd,
        side,
        result["steps_per_s"],
        result["peak_rss_mib"],
        result["wall_s"],
    )
    return result


def versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("torch", "transformers", "trl", "accelerate", "datasets", "qwen-vl-utils")
    return {"python": platform.python_version(), **{n: version(n) for n in names}}


def machine() -> dict[str, Any]:
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "platform": platform.platform(),
        "note": "CPU shared with other workloads: absolute figures are noisy; the ratio comes from interleaved runs",
    }


def paired_ratios(runs: list[dict], key: str) -> list[float]:
    """ours/TRL for each round (the two runs of a round are adjacent in time, so they saw similar load)."""
    value = {(r["round"], r["side"]): r[key] for r in runs}
    return [value[k, "ours"] / value[k, "trl"] for k in sorted({r["round"] for r in runs})]


def summarise(runs: list[dict], setup: dict, command: str) -> dict[str, Any]:
    by_side = {s: [r for r in runs if r["side"] == s] for s in SIDES}
    sides = {
        s: {
            "steps_per_s_median_step": statistics.median(r["steps_per_s_median_step"] for r in rs),
            "steps_per_s_total": statistics.median(r["steps_per_s"] for r in rs),
            "steps_per_s_median_step_per_round": [round(r["steps_per_s_median_step"], 4) for r in rs],
            "steps_per_s_total_per_round": [round(r["steps_per_s"], 4) for r in rs],
            "cpu_s_per_step_median": statistics.median(r["cpu_s_per_step_median"] for r in rs),
            "peak_rss_mib_median": statistics.median(r["peak_rss_mib"] for r in rs),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in rs),
            "rss_after_warmup_mib_median": statistics.median(r["rss_after_warmup_mib"] for r in rs),
        }
        for s, rs in by_side.items()
    }
    by_step, by_total = paired_ratios(runs, "steps_per_s_median_step"), paired_ratios(runs, "steps_per_s")
    by_cpu = [1 / x for x in paired_ratios(runs, "cpu_s_per_step_median")]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "ratio_ours_over_trl": statistics.median(by_step),
        "ratio_ours_over_trl_per_round": [round(x, 4) for x in by_step],
        "ratio_ours_over_trl_total_time": statistics.median(by_total),
        "ratio_ours_over_trl_total_time_per_round": [round(x, 4) for x in by_total],
        "ratio_ours_over_trl_cpu_time": statistics.median(by_cpu),
        "ratio_ours_over_trl_cpu_time_per_round": [round(x, 4) for x in by_cpu],
        "ratio_definition": "headline: median over rounds of (ours/TRL) steps/s, each run's steps/s = 1 / median "
        "step time; *_total_time: the same from each run's total timed seconds (more sensitive to load bursts); "
        "*_cpu_time: TRL's median CPU seconds per step / ours (process CPU time of all threads, less sensitive to "
        "other processes' load)",
        "sides": sides,
        "setup": setup,
        "versions": versions(),
        "machine": machine(),
        "runs": runs,
    }


def _figures(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def markdown(summary: dict[str, Any]) -> str:
    s, st = summary["sides"], summary["setup"]
    cmp, v, m = st["in_process"], summary["versions"], summary["machine"]
    names = {"ours": "ours (`train_sft`: Trainer + SFTCollator)", "trl": "TRL `SFTTrainer`"}
    rows = [
        "| side | steps/s (1 / median step) | per round | steps/s (total time) | per round "
        "| CPU s/step (median) | peak RSS MiB (median / max) | RSS after warm-up MiB |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for side in SIDES:
        x = s[side]
        rows.append(
            f"| {names[side]} | {x['steps_per_s_median_step']:.3f} | {_figures(x['steps_per_s_median_step_per_round'])}"
            f" | {x['steps_per_s_total']:.3f} | {_figures(x['steps_per_s_total_per_round'])}"
            f" | {x['cpu_s_per_step_median']:.2f}"
            f" | {x['peak_rss_mib_median']:.0f} / {x['peak_rss_mib_max']:.0f}"
            f" | {x['rss_after_warmup_mib_median']:.0f} |"
        )
    t = cmp["median_seconds"]
    return "\n".join(
        [
            "# SFT steps/s: ours vs TRL `SFTTrainer`",
            "",
            f"**Ratio ours/TRL: {summary['ratio_ours_over_trl']:.3f}** (median over rounds of the paired ratio of "
            f"1 / median step time; per round: {_figures(summary['ratio_ours_over_trl_per_round'])}). From total "
            f"timed seconds instead: {summary['ratio_ours_over_trl_total_time']:.3f} "
            f"(per round: {_figures(summary['ratio_ours_over_trl_total_time_per_round'])}). From CPU seconds per "
            f"step: {summary['ratio_ours_over_trl_cpu_time']:.3f} "
            f"(per round: {_figures(summary['ratio_ours_over_trl_cpu_time_per_round'])}). Above 1: ours is faster.",
            "",
            *rows,
            "",
            f"- Timed: {st['steps']} optimizer steps per run after {st['warmup']} warm-up step(s), batch "
            f"{st['batch']}, {st['rounds']} rounds, sides alternating order, each run in its own process.",
            f"- Data/model: {st['n_sft']} generated SFT conversations, {st['image_size']}×{st['image_size']} images, "
            f"{st['images_per_question']} per question; tiny Qwen2.5-VL ({st['model_parameters']:,} parameters); "
            f"fp32 CPU; lr {st['learning_rate']}, {st['lr_scheduler_type']} schedule, warm-up {st['warmup_steps']}; "
            f"vision tower frozen: {st['freeze_vision_tower']}; "
            f"gradient checkpointing: {st['gradient_checkpointing']}.",
            f"- First batch through both collators: identical input_ids {cmp['identical_input_ids']}, identical "
            f"pixel_values {cmp['identical_pixel_values']}, longest sequence {cmp['sequence_length_max']} tokens; "
            f"loss tokens ours {cmp['loss_tokens_ours']} vs TRL {cmp['loss_tokens_trl']}; only in TRL's loss: "
            f"{cmp['only_in_trl_loss'] or 'none'}; only in ours: {cmp['only_in_our_loss'] or 'none'}.",
            f"- In one process, interleaved, median of {cmp['reps']} (same first batch): building it (collator) ours "
            f"{t['collate_ours']:.3f} s vs TRL {t['collate_trl']:.3f} s; forward + backward through each side's loss "
            f"ours {t['forward_backward_ours']:.3f} s vs TRL {t['forward_backward_trl']:.3f} s; ratio ours/TRL of "
            f"the sums: {cmp['ratio_ours_over_trl_collate_plus_forward_backward']:.3f} (no optimizer step, no "
            "Trainer loop).",
            f"- Versions: {', '.join(f'{k} {val}' for k, val in v.items())}.",
            f"- Machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, {m['memory_gib']} GiB. "
            f"{m['note']}.",
            f"- Date: {summary['date']}. Command: `{summary['command']}`",
            "",
        ]
    )


def driver(args: argparse.Namespace) -> None:
    params = load_params(PARAMS_FILE)
    batch = params.sft.per_device_train_batch_size * params.sft.gradient_accumulation_steps
    n_sft = max(batch * (args.steps + args.warmup), 2 * batch)
    command = shlex.join([".venv/bin/python", "bench/bench_sft.py", *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        work = Path(tmp)
        log.info("generating %d SFT conversations and the tiny model in %s", n_sft, work)
        sft_file, model_dir = build_inputs(work, n_sft)
        in_process = components(sft_file, model_dir, work, args.component_reps)
        log.info("first batch, both sides, in one process: %s", in_process)
        runs = []
        for rnd in range(args.rounds):
            for side in SIDES if rnd % 2 == 0 else tuple(reversed(SIDES)):
                runs.append(run_side(side, rnd, args, sft_file, model_dir, work))
    emb = params.data.embedded
    setup = {
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "batch": params.sft.per_device_train_batch_size,
        "gradient_accumulation_steps": params.sft.gradient_accumulation_steps,
        "n_sft": n_sft,
        "image_size": emb.image_size,
        "images_per_question": emb.images_per_question,
        "model_parameters": in_process["model_parameters"],
        "tiny_model": params.model.tiny.model_dump(),
        "learning_rate": params.sft.learning_rate,
        "lr_scheduler_type": params.sft.lr_scheduler_type,
        "warmup_steps": params.sft.warmup_steps,
        "freeze_vision_tower": params.sft.freeze_vision_tower,
        "gradient_checkpointing": params.sft.gradient_checkpointing,
        "in_process": in_process,
    }
    summary = summarise(runs, setup, command)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "sft_vs_trl.json", summary)
    table = markdown(summary)
    write_text_atomic(args.out / "sft_vs_trl.md", table)
    print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps before the clock starts")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (order alternates)")
    parser.add_argument(
        "--component-reps", type=int, default=3, help="interleaved repetitions of the in-process timings"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    # Internal: one side of one round, started by the driver.
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--sft-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.rounds, args.component_reps) < 1:
        parser.error("--steps, --warmup, --rounds and --component-reps must be at least 1")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parsed = parse_args()
    worker(parsed) if parsed.worker else driver(parsed)
