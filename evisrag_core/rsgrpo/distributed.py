"""RS-GRPO on several ranks: DeepSpeed ZeRO-2 for the update, the rollout batch's prompt groups split over ranks.

`DeepSpeedUpdate` is the `state.UpdateStrategy` that `evisrag_core.rsgrpo.train.build_run` picks when
`rsgrpo.deepspeed` is set and the process was started by `torchrun` with WORLD_SIZE > 1 (else `step.LocalUpdate`);
the step never asks which one it has. This module is the only rank logic. With W ranks, P prompt groups per rollout
batch and n rollouts per prompt (B = P·n responses):

- Rollouts (steps 1-2). Every rank draws the same P prompts (the prompt order and cursor are shared), samples and
  scores the contiguous P/W of them it owns, then all ranks exchange the response ids, texts and rewards (small),
  so filtering, spans and advantages (steps 3-5) run on the whole batch, identically on every rank. A group is never
  split: its advantages are normalised inside it. With `rollout_seeding: group` a group's samples depend on its
  seed only, so W ranks sample exactly what one process samples.
- Update (steps 6-7). The B responses are cut into micro-batches of m (`micro_batch_size`, or B/W when 0); rank r
  takes the r-th contiguous W-th of them. With `micro_batch_tokens` rank r packs its contiguous W-th of the rows by
  the token budget (`packing`), all ranks into the largest count any of them needs, as the reference does; the
  number varies from step to step, so the last micro-batch is marked as DeepSpeed's accumulation boundary by hand.
  The span-token counts N_j behind each micro-batch's share N_j(mb)/N_j come from the whole batch, so the
  micro-batch losses add up to the single-process loss of the same micro-batches.
  DeepSpeed averages gradients over ranks, so each rank's loss is multiplied by W; `engine.backward` runs without
  its 1/accumulation scaling (the shares already weight the micro-batches). `engine.step` clips the global
  gradient norm (`gradient_clipping` = max_grad_norm) and applies the AdamW update.
- ZeRO-2, not ZeRO-3: rollouts call `generate` on every rank. ZeRO-2 partitions optimizer states and gradients but
  keeps each rank's parameters whole, so `generate` runs as in one process. ZeRO-3 partitions the parameters too;
  generate would need them gathered (`deepspeed.zero.GatheredParameters` over the whole model) around every rollout
  and all ranks in lock-step through every decoding step (`synced_gpus`), which costs ZeRO-3's memory saving back
  and is refused here with that explanation.
- Rank 0 alone writes logs, reports, validation and the final model; checkpoints hold the model and step state from
  rank 0 and one DeepSpeed optimizer partition per rank (`engine.save_checkpoint`), and resume restores them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from evisrag_core.config import RSGRPOParams
from evisrag_core.data.schema import RLPrompt
from evisrag_core.rsgrpo.objective import active_components
from evisrag_core.rsgrpo.packing import micro_batch_count, micro_batches
from evisrag_core.rsgrpo.rollout import Group, PromptEncoder
from evisrag_core.rsgrpo.state import Batch, Rewards, Run, Sample, Scored
from evisrag_core.rsgrpo.step import CLIP_KEYS, TOTAL_KEYS, accumulate_gradients, update_metrics

log = logging.getLogger(__name__)
DEEPSPEED_TAG = "deepspeed"  # the engine checkpoint's sub-folder inside a step-NNNNNN checkpoint


def launched_world() -> tuple[int, int]:
    """(rank, world size) of a torchrun launch; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def use_deepspeed(cfg: RSGRPOParams) -> bool:
    """The distributed update runs when a DeepSpeed config is set and torchrun started more than one rank."""
    if not cfg.deepspeed:
        return False
    if launched_world()[1] < 2:
        log.warning("rsgrpo.deepspeed is set but this is a single process: the plain single-process update runs")
        return False
    return True


def responses_per_rank(cfg: RSGRPOParams, world: int) -> int:
    """A rank's share of a rollout batch's responses: rollout_batch_size × n / ranks."""
    return cfg.rollout_batch_size * cfg.n // world


def micro_batch_size(cfg: RSGRPOParams, world: int) -> int:
    """Responses per forward/backward on a rank: micro_batch_size, or a rank's whole share when it is 0. With
    micro_batch_tokens the packed micro-batches vary in size and number; DeepSpeed is then told 1 response × a rank's
    share as accumulation steps (an upper bound) and the update marks the last micro-batch itself."""
    if cfg.micro_batch_tokens:
        return 1
    return cfg.micro_batch_size or responses_per_rank(cfg, world)


def check_layout(cfg: RSGRPOParams, world: int) -> list[str]:
    """Why `cfg` cannot be split over `world` ranks (empty when it can); the dry-run and the launch both ask."""
    if cfg.rollout_batch_size % world:
        return [
            f"rsgrpo.rollout_batch_size={cfg.rollout_batch_size} is not divisible by the {world} ranks: each rank "
            "rolls out whole prompt groups (group advantages must not be split), the same number on every rank"
        ]
    share, micro = responses_per_rank(cfg, world), micro_batch_size(cfg, world)
    if micro > share:
        return [f"rsgrpo.micro_batch_size={micro} exceeds a rank's {share} responses (rollout_batch_size × n / ranks)"]
    if share % micro:
        return [
            f"rsgrpo.micro_batch_size={micro} does not divide a rank's {share} responses (rollout_batch_size × n / "
            "ranks): every rank must run the same number of micro-batches"
        ]
    return []


def deepspeed_config(cfg: RSGRPOParams, world: int, bf16: bool) -> dict[str, Any]:
    """The JSON of `rsgrpo.deepspeed` with its "auto" batch, clipping and precision entries filled from params."""
    path = Path(cfg.deepspeed or "")
    ds = json.loads(path.read_text())
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage == 3:
        raise ValueError(
            f"{path}: ZeRO-3 partitions the parameters, but every rank calls generate for its rollouts; use "
            "configs/deepspeed/zero2.json (module docstring of evisrag_core/rsgrpo/distributed.py)"
        )
    micro = micro_batch_size(cfg, world)
    filled = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": responses_per_rank(cfg, world) // micro,
        "train_batch_size": cfg.rollout_batch_size * cfg.n,
        "gradient_clipping": cfg.max_grad_norm,
    }
    for key, value in filled.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(f'{path}: {key}={ds[key]} but rsgrpo params give {value}; set it to "auto"')
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds.setdefault("steps_per_print", 10**9)  # the loop logs its own metrics
    return ds


@dataclass
class DeepSpeedUpdate:
    """This rank's place in the launch and its DeepSpeed engine (wrapping the policy being trained)."""

    rank: int
    world: int
    engine: Any
    encoder: PromptEncoder

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- steps 1-2: each rank samples and scores its share, then everyone has everything ---------------------------

    def rollout_and_score(
        self,
        prompts: Sequence[RLPrompt],
        seeds: Sequence[int] | None,
        sample: Sample,
    ) -> Scored:
        """`sample(prompts, seeds)` on this rank's contiguous share of the prompts; the groups and rewards of all
        ranks, in prompt order. Groups sampled on other ranks carry no encoded prompt (`inputs=None`); the update
        encodes the ones it needs (`with_inputs`)."""
        per_rank = len(prompts) // self.world
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        groups, rewards = sample(prompts[mine], None if seeds is None else seeds[mine])
        payload = [
            ([ids.tolist() for ids in group.responses], list(group.texts), reward.table().tolist())
            for group, reward in zip(groups, rewards, strict=True)
        ]
        gathered: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(gathered, payload)
        all_groups, all_rewards = [], []
        for rank, shares in enumerate(gathered):
            for k, (responses, texts, reward) in enumerate(shares):
                if rank == self.rank:
                    all_groups.append(groups[k])
                else:
                    prompt = prompts[rank * per_rank + k]
                    ids = tuple(torch.tensor(r, dtype=torch.long) for r in responses)
                    all_groups.append(Group(prompt, None, ids, tuple(texts)))  # type: ignore[arg-type]
                all_rewards.append(Rewards.from_table(torch.tensor(reward, dtype=torch.float32)))
        return all_groups, all_rewards

    def with_inputs(self, groups: list[Group], rows: Sequence[int]) -> list[Group]:
        """`groups` with the encoded prompt filled in for the groups of `rows` that were sampled on another rank."""
        n = len(groups[0].responses)
        needed = sorted({row // n for row in rows if groups[row // n].inputs is None})
        groups = list(groups)
        for g in needed:
            groups[g] = replace(groups[g], inputs=self.encoder([groups[g].prompt])[0])
        return groups

    # --- steps 6-7 ---------------------------------------------------------------------------------------------------

    def apply(self, run: Run, batch: Batch) -> dict[str, float]:
        """Steps 6-7 on this rank's micro-batches; DeepSpeed reduces the gradients, clips and steps, and the metrics
        are summed over ranks. Whether any component is active is known from the whole batch before the forward, so
        every rank skips the same steps (an update DeepSpeed starts must be finished by all ranks)."""
        if not bool(active_components(batch.advantages, batch.span_masks).any()):
            return update_metrics(run, dict.fromkeys(TOTAL_KEYS, 0.0), dict.fromkeys(CLIP_KEYS, 0.0), 0.0, True)
        if run.cfg.micro_batch_tokens:
            batch, mine = self.packed_micro_batches(batch, run.cfg.micro_batch_tokens)
        else:
            size = micro_batch_size(run.cfg, self.world)
            mine = self.my_micro_batches(micro_batches(list(range(len(batch.response_ids))), size))
            batch = replace(batch, groups=self.with_inputs(batch.groups, [row for rows in mine for row in rows]))
        run.policy.train()
        grad_norm = [float("nan")]
        done = [0]

        def backward(loss: torch.Tensor) -> None:
            done[0] += 1
            if run.cfg.micro_batch_tokens:  # packed: as many micro-batches as the budget asked for, not DeepSpeed's
                self.engine.set_gradient_accumulation_boundary(done[0] == len(mine))
            self.backward(loss)
            grad_norm[0] = self.step()  # DeepSpeed updates at the last micro-batch of the batch

        totals, clip_stats = accumulate_gradients(run, batch, mine, self.engine, backward)
        return update_metrics(run, self.sum(totals), self.sum(clip_stats), grad_norm[0], False)

    def packed_micro_batches(self, batch: Batch, budget: int) -> tuple[Batch, list[list[int]]]:
        """This rank's contiguous share of the rows packed by the token budget into as many micro-batches as the
        rank that needs the most (the reference all-reduces that count with MAX), so every rank runs the same number.
        Returns the batch with this rank's prompts encoded, and the micro-batches."""
        share = len(batch.response_ids) // self.world
        rows = list(range(self.rank * share, (self.rank + 1) * share))
        batch = replace(batch, groups=self.with_inputs(batch.groups, rows))
        lengths = batch.row_tokens(rows)
        count = torch.tensor([micro_batch_count(lengths, budget)], dtype=torch.long)
        torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
        return batch, micro_batches(rows, 0, budget, lengths, int(count))

    def my_micro_batches(self, micro_batches: list[list[int]]) -> list[list[int]]:
        per_rank = len(micro_batches) // self.world
        return micro_batches[self.rank * per_rank : (self.rank + 1) * per_rank]

    def backward(self, loss: torch.Tensor) -> None:
        """∇ of this rank's part of the loss; ×W because DeepSpeed averages the ranks' gradients."""
        self.engine.backward(loss * self.world, scale_wrt_gas=False)

    def step(self) -> float:
        """The micro-batch's `engine.step`; at the last one of the batch DeepSpeed clips and updates. Returns the
        global gradient norm before clipping (meaningful after the last micro-batch)."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Element-wise sum of a metrics dict over ranks (every rank passes the same keys)."""
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return dict(zip(keys, tensor.tolist(), strict=True))

    def barrier(self) -> None:
        torch.distributed.barrier()

    # --- checkpoints ------------------------------------------------------------------------------------------------

    def save_checkpoint(self, target: Path, write: Callable[[Path, bool], None]) -> bool:
        """All ranks write their DeepSpeed partitions into a staging folder; rank 0 adds the model and the step
        state (`write(staging, False)`: the optimizer state is in the partitions) and renames it into place, so a
        kill never leaves a half checkpoint. True on rank 0, which prunes old checkpoints."""
        staging = target.with_name(f".{target.name}.saving")
        if self.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.barrier()
        self.engine.save_checkpoint(str(staging), tag=DEEPSPEED_TAG, save_latest=False)
        self.barrier()
        if self.is_main:
            write(staging, False)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        self.barrier()
        return self.is_main

    def load_checkpoint(self, run: Run, path: Path) -> None:
        """The optimizer partitions (and the module, identical to the one the policy was loaded from)."""
        self.engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG, load_lr_scheduler_states=False)


def init_distributed(
    policy: Any, optimizer: torch.optim.Optimizer, cfg: RSGRPOParams, bf16: bool, encoder: Any
) -> DeepSpeedUpdate:
    """Join the ranks (gloo on CPU, nccl on GPUs) and wrap the policy and its AdamW in a DeepSpeed engine."""
    import deepspeed

    rank, world = launched_world()
    problems = check_layout(cfg, world)
    if problems:
        raise ValueError("; ".join(problems))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend)
    engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=optimizer, config=deepspeed_config(cfg, world, bf16))
    log.info("rank %d/%d: DeepSpeed ZeRO-%d engine ready", rank, world, engine.zero_optimization_stage())
    return DeepSpeedUpdate(rank, world, engine, encoder)
