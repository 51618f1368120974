"""One RS-GRPO run from a finished project's SFT model, printing the held-out rewards of every validation.

The README's "sampled held-out reward" budgets were measured with it, e.g. in a project where `evisrag pipeline` ran:

    .venv/bin/python scripts/rsgrpo_sweep.py --project . --name lr1e4 learning_rate=1e-4 steps=60 val_every=20

Keys after the flags override `rsgrpo.*` of the project's params.yaml (YAML values). Outputs go to
`<out>/<name>/` (model, checkpoints, log, val.json), never into the project's DVC outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import yaml

from evisrag_core.config import parse_params
from evisrag_core.data.schema import RL_FILE, RL_VAL_FILE
from evisrag_core.rsgrpo import train as rsgrpo_train
from evisrag_core.rsgrpo.prompt_stream import split_prompts


def fixed_split(rl_file: Path, val_size: int, split_seed: int, folder: Path) -> Path:
    """An rl.jsonl of the training prompts of `split_seed`'s split, beside an rl_val.jsonl of its held-out ones, so
    a run with another seed validates on the same prompts (split_prompts reads rl_val.jsonl when it exists)."""
    train, val = split_prompts(rl_file, val_size, split_seed)
    rows = [line for line in rl_file.read_text().splitlines() if line.strip()]
    by_id = {json.loads(line)["id"]: line for line in rows}
    folder.mkdir(parents=True, exist_ok=True)
    for prompt in (*train, *val):  # copies, not symlinks: the loader refuses images that resolve outside the folder
        for ref in prompt.image_refs:
            (folder / ref).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rl_file.parent / ref, folder / ref)
    (folder / RL_FILE).write_text("".join(by_id[p.id] + "\n" for p in train))
    (folder / RL_VAL_FILE).write_text("".join(by_id[p.id] + "\n" for p in val))
    return folder / RL_FILE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=Path("."), help="a folder where the sft stage has run")
    parser.add_argument("--name", required=True, help="the run's folder under --out")
    parser.add_argument("--out", type=Path, default=Path("work/sweeps"))
    parser.add_argument(
        "--seed",
        type=int,
        help="train with this seed instead of params.yaml's (rollout draws, prompt order), holding out the same "
        "validation prompts: they are written to <out>/<name>/data/rl_val.jsonl and the rest to rl.jsonl",
    )
    parser.add_argument("overrides", nargs="*", help="rsgrpo KEY=VALUE pairs")
    args = parser.parse_args()

    raw = yaml.safe_load((args.project / "params.yaml").read_text())
    out = args.out / args.name
    for pair in args.overrides:
        key, _, value = pair.partition("=")
        raw["rsgrpo"][key] = yaml.safe_load(value)
    raw["rsgrpo"].update(
        model_dir=str(args.project / raw["rsgrpo"]["model_dir"]),
        out_dir=str(out / "model"),
        checkpoint_dir=str(out / "ckpt"),
        log_file=str(out / "log.json"),
        val_log_file=str(out / "val_plot.json"),
        val_sampled_log_file=str(out / "val_sampled_plot.json"),
        report_every=0,
        save_every=10_000,
    )
    params = parse_params(raw, source=str(args.project / "params.yaml"))
    rl_file = args.project / params.data.out_dir / "train" / RL_FILE
    seed = params.seed if args.seed is None else args.seed
    if seed != params.seed:
        rl_file = fixed_split(rl_file, params.rsgrpo.val_size, params.seed, out / "data")
    rows: list[dict[str, float]] = []
    start = time.time()

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if any(key.startswith("val") for key in metrics):
            row = {"step": step, "seconds": round(time.time() - start, 1)}
            row |= {key: round(value, 3) for key, value in metrics.items() if key.startswith("val")}
            rows.append(row)
            print(json.dumps(row), flush=True)

    rsgrpo_train.train_rsgrpo(params.rsgrpo, rl_file, seed, on_step=on_step)
    out.mkdir(parents=True, exist_ok=True)
    (out / "val.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
