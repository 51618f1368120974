"""`rsgrpo.mode` (rsgrpo | gdpo | grpo) and `rsgrpo.span_masks` (fixed | released): which settings are accepted, and
what steps 4-5 (`step.spans_and_advantages`) give for each on hand-built groups."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import ValidationError

from evisrag_core.config import RSGRPOParams
from evisrag_core.config.training import GDPO_WEIGHTS
from evisrag_core.rsgrpo.estimators import Estimator
from evisrag_core.rsgrpo.objective import gdpo_advantages, group_advantages
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS, WEIGHTS
from evisrag_core.rsgrpo.rollout import Group
from evisrag_core.rsgrpo.state import Rewards
from evisrag_core.rsgrpo.step import spans_and_advantages

TAG_IDS = {"<think>": [7, 8], "<evidence>": [5], "<answer>": [9]}
NORMAL = [1, 5, 2, 7, 8, 3, 9, 4]  # observe, <evidence>, text, <think>, text, <answer>, text
ACCURACY, IS_THINK = REWARD_COMPONENTS.index("accuracy"), REWARD_COMPONENTS.index("is_think")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "grpo", "span_masks": "released"}, "mode grpo applies one advantage to every response token"),
        ({"mode": "gdpo", "span_masks": "released"}, "mode gdpo applies one advantage to every response token"),
        ({"span_masks": "released", "span_locator": "char_offsets"}, "needs span_locator: token_ids"),
        ({"gdpo_weights": {"accuracy": 1.0}}, "one weight to each reward component"),
        ({"micro_batch_size": 2, "micro_batch_tokens": 4096}, "both set the micro-batches; set one of them to 0"),
        ({"mode": "ppo"}, "mode"),
        ({"span_masks": "buggy"}, "span_masks"),
        ({"micro_batch_tokens": -1}, "micro_batch_tokens"),
    ],
)
def test_settings_that_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RSGRPOParams(**settings)


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "rsgrpo", "span_masks": "released"},  # the fourth arm
        {"mode": "gdpo", "gdpo_weights": {name: 1.0 for name in REWARD_COMPONENTS}},
        {"mode": "grpo"},
        {"micro_batch_tokens": 4096},
    ],
)
def test_settings_that_are_accepted(settings: dict[str, Any]) -> None:
    cfg = RSGRPOParams(**settings)
    assert all(getattr(cfg, key) == value for key, value in settings.items())


def test_gdpo_default_weights_are_the_overall_rewards_emphasis_in_component_order() -> None:
    assert list(GDPO_WEIGHTS) == list(REWARD_COMPONENTS)
    assert GDPO_WEIGHTS == WEIGHTS
    assert Estimator().weights().tolist() == [3.0, 3.0, 1.0, 1.0, 1.0, 1.0]
    shuffled = {name: float(j) for j, name in reversed(list(enumerate(REWARD_COMPONENTS)))}
    assert Estimator.from_params(RSGRPOParams(gdpo_weights=shuffled), []).weights().tolist() == [0, 1, 2, 3, 4, 5]


def groups_of(responses: list[list[list[int]]]) -> list[Group]:
    """Groups holding only what steps 4-5 read: the response ids."""
    return [Group(None, None, tuple(torch.tensor(r) for r in group), ("",) * len(group)) for group in responses]  # type: ignore[arg-type]


# two groups of two identical, fully tagged responses (rewards differ, texts need not)
GROUPS = groups_of([[NORMAL, NORMAL[:6]], [NORMAL, NORMAL]])
TABLE = torch.tensor(
    [
        # overall, accuracy, evidence, format, overlong, is_observe, is_think
        [4.0, 3.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
        [3.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    ]
)
REWARDS = Rewards.from_table(TABLE)


def test_rsgrpo_gives_each_component_its_span_and_group_advantage() -> None:
    batch = spans_and_advantages(GROUPS, REWARDS, "rsgrpo", TAG_IDS, pad_id=0)
    assert batch.components == REWARD_COMPONENTS and batch.span_masks.shape == (4, 6, 8)
    assert torch.equal(batch.advantages, group_advantages(REWARDS.components, [0, 0, 1, 1]))
    assert batch.span_masks[:, ACCURACY].sum(dim=1).tolist() == [5, 3, 5, 5]  # from <think> to the end


def test_gdpo_gives_one_whitened_advantage_on_every_response_token() -> None:
    batch = spans_and_advantages(GROUPS, REWARDS, "gdpo", TAG_IDS, pad_id=0)
    assert batch.components == ("gdpo",)
    assert torch.equal(batch.span_masks[:, 0], batch.response_mask.bool())
    expected = gdpo_advantages(REWARDS.components, [0, 0, 1, 1], torch.tensor([3.0, 3, 1, 1, 1, 1]))
    assert torch.equal(batch.advantages, expected)
    assert batch.advantages[:, 0].tolist() == pytest.approx([1.0190, -1.0190, 0.6794, -0.6794], abs=1e-4)


def test_gdpo_uses_the_configured_weights() -> None:
    only_format = Estimator(gdpo_weights=tuple((name, float(name == "format")) for name in REWARD_COMPONENTS))
    batch = spans_and_advantages(GROUPS, REWARDS, "gdpo", TAG_IDS, 0, estimator=only_format)
    assert batch.advantages[:, 0].tolist() == pytest.approx([0.0, 0.0, -1.2247, 1.2247], abs=1e-4)


def test_grpo_gives_overalls_group_advantage_on_every_response_token() -> None:
    batch = spans_and_advantages(GROUPS, REWARDS, "grpo", TAG_IDS, pad_id=0)
    assert batch.components == ("overall",)
    assert torch.equal(batch.span_masks[:, 0], batch.response_mask.bool())
    assert torch.equal(batch.advantages, group_advantages(REWARDS.overall.unsqueeze(1), [0, 0, 1, 1]))


@pytest.mark.parametrize(
    ("edges", "rows_keeping_accuracy"),
    [
        (None, [0]),  # the whole batch one reward call
        (((True, False), (False, True)), [0]),  # one round kept whole
        (((True, True), (True, True)), [0, 2]),  # two rounds, one group kept from each
        (((False, True), (True, True)), [2]),  # the first round's first group was filtered out
    ],
)
def test_released_span_masks_keep_accuracy_and_is_think_in_row_0_of_each_reward_call(
    edges: tuple[tuple[bool, bool], ...] | None, rows_keeping_accuracy: list[int]
) -> None:
    fixed = spans_and_advantages(GROUPS, REWARDS, "rsgrpo", TAG_IDS, pad_id=0)
    released = spans_and_advantages(
        GROUPS, REWARDS, "rsgrpo", TAG_IDS, 0, estimator=Estimator("released", group_edges=edges)
    )
    for j in (ACCURACY, IS_THINK):
        keeping = [row for row in range(4) if released.span_masks[row, j].any()]
        assert keeping == rows_keeping_accuracy
        assert all(torch.equal(released.span_masks[r, j], fixed.span_masks[r, j]) for r in rows_keeping_accuracy)
    others = [j for j in range(6) if j not in (ACCURACY, IS_THINK)]
    assert torch.equal(released.span_masks[:, others], fixed.span_masks[:, others])  # <answer> after every end tag
    assert torch.equal(released.advantages, fixed.advantages)  # only the spans change


def test_released_span_masks_need_an_edge_per_group() -> None:
    with pytest.raises(ValueError, match="1 reward-call edges for 2 groups"):
        spans_and_advantages(
            GROUPS, REWARDS, "rsgrpo", TAG_IDS, 0, estimator=Estimator("released", group_edges=((True, True),))
        )
