"""The reward components and the overall reward's weights (spec §4), kept apart from the reward functions so that the
params (rsgrpo.gdpo_weights' default and its check) can use them without importing the training code and torch."""

from __future__ import annotations

REWARD_COMPONENTS: tuple[str, ...] = ("accuracy", "evidence", "format", "overlong", "is_observe", "is_think")
# The overall reward's emphasis: 3 for accuracy and evidence, 1 for the others. gdpo's default w_k too (spec §9).
WEIGHTS: dict[str, float] = {
    "accuracy": 3.0,
    "evidence": 3.0,
    "format": 1.0,
    "overlong": 1.0,
    "is_observe": 1.0,
    "is_think": 1.0,
}
