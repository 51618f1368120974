"""RS-GRPO: Reward-Scoped GRPO (spec §4, §5)."""

from evisrag_core.rsgrpo.objective import group_advantages, policy_loss
from evisrag_core.rsgrpo.rewards import score

__all__ = ["group_advantages", "policy_loss", "score"]
