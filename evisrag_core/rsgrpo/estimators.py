"""What steps 4-5 need besides the rewards, by `rsgrpo.mode` (docs/rsgrpo.md): rsgrpo's span masks (`fixed` or the
released checkpoints' `released`, which needs to know where each reward call began and ended) and gdpo's weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from evisrag_core.config import RSGRPOParams
from evisrag_core.config.training import GDPO_WEIGHTS
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS
from evisrag_core.rsgrpo.rollout import Group
from evisrag_core.rsgrpo.spans import SpanLocator, component_span_bounds, released_span_masks, row_edges


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
