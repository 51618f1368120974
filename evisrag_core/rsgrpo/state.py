"""What an RS-GRPO step reads and passes along: the `Run`, the rewards by name (`Rewards`), the `Batch` it trains
on, and the interface of the strategy that spreads a step over processes (`UpdateStrategy`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from evisrag_core.config import RSGRPOParams
from evisrag_core.data.schema import RLPrompt
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS
from evisrag_core.rsgrpo.rollout import Group, response_rows
from evisrag_core.rsgrpo.spans import SpanLocator

REWARD_KEYS = ("overall", *REWARD_COMPONENTS)  # overall, then every component: the order of metrics and tables


@dataclass(frozen=True)
class Rewards:
    """Weighted rewards of B responses (spec §4): overall[i] = Σ_j components[i, j], j over `REWARD_COMPONENTS`."""

    overall: torch.Tensor  # (B,) float32
    components: torch.Tensor  # (B, 6) float32, columns REWARD_COMPONENTS

    @classmethod
    def from_scores(cls, scores: Sequence[Mapping[str, float]]) -> Rewards:
        """From one `rewards.score` dict per response."""
        return cls.from_table(torch.tensor([[row[key] for key in REWARD_KEYS] for row in scores], dtype=torch.float32))

    @classmethod
    def from_table(cls, table: torch.Tensor) -> Rewards:
        """From a (B, 7) table with columns REWARD_KEYS (the inverse of `table`)."""
        return cls(table[:, 0].clone(), table[:, 1:].clone())

    @classmethod
    def cat(cls, parts: Sequence[Rewards]) -> Rewards:
        return cls(torch.cat([p.overall for p in parts]), torch.cat([p.components for p in parts]))

    def __len__(self) -> int:
        return len(self.overall)

    def table(self) -> torch.Tensor:
        """(B, 7) with columns REWARD_KEYS, overall first."""
        return torch.cat([self.overall.unsqueeze(1), self.components], dim=1)

    def means(self, prefix: str = "") -> dict[str, float]:
        """{prefix + key: mean over the B responses} for every key of REWARD_KEYS."""
        table = self.table()  # (B, 7): the column means of one contiguous table, as the metrics always were
        return {f"{prefix}{key}": float(table[:, c].mean()) for c, key in enumerate(REWARD_KEYS)}

    def rows(self) -> list[dict[str, float]]:
        """One {key: reward} dict per response."""
        return [dict(zip(REWARD_KEYS, row, strict=True)) for row in self.table().tolist()]


@dataclass
class Batch:
    """A step's kept rollouts and what steps 4-5 computed on them (the update and the report read it)."""

    groups: list[Group]
    rewards: Rewards  # B responses
    components: tuple[str, ...]  # the rewards the advantages are computed for (n_c of them)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T)
    span_masks: torch.Tensor  # (B, n_c, T)
    advantages: torch.Tensor  # (B, n_c)

    def row_tokens(self, rows: Sequence[int]) -> list[int]:
        """Prompt + response tokens of each row, what the reference's token budget counts (the rows' groups must
        carry their encoded prompts)."""
        index = response_rows(self.groups)
        lengths = self.response_mask.sum(dim=1).tolist()  # (B,)
        return [len(self.groups[index[row][0]].inputs.input_ids) + lengths[row] for row in rows]


Scored = tuple[list[Group], list[Rewards]]  # P groups and their rewards, in prompt order
Sample = Callable[[Sequence[RLPrompt], Sequence[int] | None], Scored]  # sample and score some prompts (seeds or None)


class UpdateStrategy(Protocol):
    """Who samples which prompts (steps 1-2), how the update runs (steps 6-7) and who writes. Chosen once, in
    train.build_run: step.LocalUpdate (this process alone) or distributed.DeepSpeedUpdate (torchrun ranks)."""

    is_main: bool  # this process validates, reports, logs and writes the final model

    def rollout_and_score(self, prompts: Sequence[RLPrompt], seeds: Sequence[int] | None, sample: Sample) -> Scored:
        """Every prompt's group and rewards, in prompt order; `sample` runs on this process's share."""
        ...

    def apply(self, run: Run, batch: Batch) -> dict[str, float]:
        """Steps 6-7 on `batch`: the loss, its gradient and the optimizer step; the actor/* metrics."""
        ...

    def save_checkpoint(self, target: Path, write: Callable[[Path, bool], None]) -> bool:
        """Write a complete checkpoint at `target` (`write(folder, with_optimizer)` adds the model and step state);
        True on the process that prunes old checkpoints."""
        ...

    def load_checkpoint(self, run: Run, path: Path) -> None:
        """The optimizer state of a checkpoint (the weights were loaded with the policy)."""
        ...

    def barrier(self) -> None:
        """Wait for every process."""
        ...


@dataclass
class Run:
    """Everything a step reads or changes."""

    cfg: RSGRPOParams
    seed: int
    policy: Any
    processor: Any
    optimizer: torch.optim.Optimizer
    rollout: Any  # rollout.TransformersRollout | vllm_rollout.VllmRollout
    train_prompts: list[RLPrompt]
    val_prompts: list[RLPrompt]
    update: UpdateStrategy
    reference: Any = None  # frozen π_ref, only when kl_coef > 0
    step: int = 0  # optimizer steps done
    cursor: int = 0  # training prompts drawn so far, over all epochs
    tag_ids: dict[str, list[int]] = field(default_factory=dict)
    locate_spans: SpanLocator | None = None  # rsgrpo.span_locator: char_offsets; None: token-id search with tag_ids

    @property
    def pad_id(self) -> int:
        return self.processor.tokenizer.pad_token_id
