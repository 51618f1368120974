"""Steps 4-5 by `rsgrpo.mode` (docs/rsgrpo.md, spec §5, §9): which tokens get which advantage.

    rsgrpo   n_c = 6   span[i, j, t] from the tags   A[i, j] = group z-score of R[·, j]
    gdpo     n_c = 1   the whole response            A[i] = batch z-score of Σ_j w_j · (group z-score of R[·, j])
    grpo     n_c = 1   the whole response            A[i] = group z-score of overall

z-scores use Bessel's std + 1e-6 (spec §5's epsilon), the batch one too (TRL's normalize_then_sum: 1e-4).

rsgrpo's spans are `fixed` (spec §5) or, with `span_masks: released`, the released checkpoints' masks, for which the
estimator must know where each reward call began and ended (`group_edges`, from step.collect_groups)."""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from evisrag_core.config import RSGRPOParams
from evisrag_core.config.training import GDPO_WEIGHTS
from evisrag_core.rsgrpo.objective import gdpo_advantages, group_advantages
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS
from evisrag_core.rsgrpo.rollout import Group
from evisrag_core.rsgrpo.spans import (
    SpanLocator,
    component_span_bounds,
    component_span_masks,
    released_span_masks,
    row_edges,
    whole_response_masks,
)
from evisrag_core.rsgrpo.state import Rewards


@dataclass(frozen=True)
class Estimator:
    """rsgrpo.span_masks, rsgrpo.gdpo_weights, and per kept group whether it was the first / last group of its
    reward call (None: the whole batch is one call)."""

    span_masks: str = "fixed"
    gdpo_weights: tuple[tuple[str, float], ...] = tuple(GDPO_WEIGHTS.items())
    group_edges: tuple[tuple[bool, bool], ...] | None = None

    @classmethod
    def from_params(cls, cfg: RSGRPOParams, group_edges: Sequence[tuple[bool, bool]]) -> Estimator:
        return cls(cfg.span_masks, tuple(cfg.gdpo_weights.items()), tuple(group_edges))

    def weights(self) -> torch.Tensor:
        """(6,) w_k in REWARD_COMPONENTS order."""
        by_name = dict(self.gdpo_weights)
        return torch.tensor([by_name[name] for name in REWARD_COMPONENTS], dtype=torch.float64)

    def spans_and_advantages(
        self,
        mode: str,
        rewards: Rewards,
        group_ids: Sequence[Hashable],
        locate: SpanLocator,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
    ) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
        """(component names, span masks (B, n_c, T), advantages (B, n_c)) of `mode` (module docstring)."""
        if mode == "rsgrpo":
            span_masks = locate(response_ids, response_mask)  # (B, 6, T)
            return REWARD_COMPONENTS, span_masks, group_advantages(rewards.components, group_ids)
        whole = whole_response_masks(response_mask)  # (B, 1, T)
        if mode == "gdpo":
            return ("gdpo",), whole, gdpo_advantages(rewards.components, group_ids, self.weights())
        if mode == "grpo":
            return ("overall",), whole, group_advantages(rewards.overall.unsqueeze(1), group_ids)
        raise ValueError(f"unknown rsgrpo.mode {mode!r}; use rsgrpo, gdpo or grpo")

    def locator(
        self, tag_ids: dict[str, list[int]], groups: Sequence[Group], chosen: SpanLocator | None
    ) -> SpanLocator:
        """rsgrpo's span masks: the released ones, else `chosen` (rsgrpo.span_locator), else the token-id search."""
        if self.span_masks == "released":
            return self.released_locator(tag_ids, groups)
        return chosen or functools.partial(component_span_masks, tag_ids=tag_ids)

    def released_locator(self, tag_ids: dict[str, list[int]], groups: Sequence[Group]) -> SpanLocator:
        """span_masks: released for these groups: the token-id spans, cut as the reference's reward call cut them."""
        edges = self.group_edges
        if edges is None:
            edges = tuple((g == 0, g == len(groups) - 1) for g in range(len(groups)))
        if len(edges) != len(groups):
            raise ValueError(f"{len(edges)} reward-call edges for {len(groups)} groups")
        first, last = row_edges(list(edges), len(groups[0].responses))

        def locate(response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
            bounds = component_span_bounds(response_ids, response_mask, tag_ids)
            return released_span_masks(bounds, response_mask.bool(), first, last)

        return locate


DEFAULT_ESTIMATOR = Estimator()  # fixed spans, the default gdpo weights, the whole batch one reward call
