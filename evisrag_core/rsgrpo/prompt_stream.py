"""Which prompts an RS-GRPO run trains and validates on, and in which order (step 1's input).

The training prompts are drawn as a stream: epoch e is a permutation of them seeded by (seed, e), so the number of
prompts drawn so far (`Run.cursor`) alone says which come next, and a resumed run continues the same stream.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

from evisrag_core.bad_records import BadRecords
from evisrag_core.data.schema import RL_VAL_FILE, RLPrompt, load_rl_prompts
from evisrag_core.rsgrpo.state import Run


def split_prompts(
    rl_file: Path, val_size: int, seed: int, bad: BadRecords | None = None
) -> tuple[list[RLPrompt], list[RLPrompt]]:
    """Training prompts and validation prompts: `rl_val.jsonl` beside `rl_file` when it exists (its first
    val_size rows), otherwise val_size prompts held out of `rl_file` by a seeded draw. Bad records follow `bad`'s
    `on_bad_record` policy (an error, or left out and counted)."""
    prompts = load_rl_prompts(rl_file, bad)
    val_file = rl_file.with_name(RL_VAL_FILE)
    if val_file.is_file():
        return prompts, load_rl_prompts(val_file, bad)[:val_size]
    if val_size >= len(prompts):
        raise ValueError(f"rsgrpo.val_size={val_size} leaves no training prompt of the {len(prompts)} in {rl_file}")
    held_out = set(random.Random(f"{seed}-rsgrpo-val").sample(range(len(prompts)), val_size))
    train = [p for i, p in enumerate(prompts) if i not in held_out]
    return train, [p for i, p in enumerate(prompts) if i in held_out]


@functools.lru_cache(maxsize=4)
def epoch_order(n_prompts: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(random.Random(f"{seed}-rsgrpo-epoch-{epoch}").sample(range(n_prompts), n_prompts))


def next_prompts(run: Run, count: int) -> list[RLPrompt]:
    """The next `count` training prompts; the cursor moves on (epochs follow each other, each reshuffled)."""
    prompts = []
    for _ in range(count):
        epoch, index = divmod(run.cursor, len(run.train_prompts))
        prompts.append(run.train_prompts[epoch_order(len(run.train_prompts), run.seed, epoch)[index]])
        run.cursor += 1
    return prompts


def rollout_seeds(seed: int, first_draw: int, count: int) -> list[int]:
    """`rollout_seeding: group`: the seed of the prompts drawn at positions first_draw … first_draw + count - 1 of
    the run's prompt stream (positions never repeat, so neither do seeds; a resumed run draws the same ones)."""
    return [random.Random(f"{seed}-rsgrpo-rollout-{first_draw + k}").getrandbits(63) for k in range(count)]
