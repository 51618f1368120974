"""RS-GRPO maths (spec §5): group advantages per reward component, scoped to spans, and the clipped policy loss.

Notation (shapes in brackets): B responses, n_c reward components, T response tokens. (The two other estimators,
`rsgrpo.mode` gdpo and grpo, have one component covering the whole response; gdpo's advantage is `gdpo_advantages`.)

    R        [B, n_c]     component rewards of each response (`evisrag_core.rsgrpo.rewards.score`, weighted)
    g(i)                  the group of response i: the `rsgrpo.n` rollouts of the same prompt
    A        [B, n_c]     A[i, j] = (R[i, j] - mean_{k∈g(i)} R[k, j]) / (std_{k∈g(i)} R[k, j] + eps)   (Bessel's std)
    span     [B, n_c, T]  span[i, j, t] = 1 when token t of response i belongs to component j (`rsgrpo.spans`)
    ratio    [B, T]       ρ = exp(log π_θ(y_t) - log π_old(y_t))

Per component j, with clipped ratio ρ̄ = clip(ρ, 1 - ε_low, 1 + ε_high) and dual clip c (Ye et al. 2020):

    ℓ[i, j, t] = max(-A ρ, -A ρ̄)                  if A ≥ 0
               = min(max(-A ρ, -A ρ̄), -A c)        if A < 0
    L_j        = Σ_{i,t} span ℓ / (Σ_{i,t} span + 1e-8)             (token mean over j's span in the mini-batch)
    L          = Σ_j L_j / max(|active|, 1)                          (mean over the active components)

Which components are active is `policy_loss(active=...)`:

- "advantage" (the training loop's): j is active when A[i, j] ≠ 0 on some token of j's span in the mini-batch.
- "loss" (the reference's exact float test `L_j != 0.0`): a component whose advantages are all 0 on its span
  (every group agreed on it) drops out, and so does one whose span is empty in the mini-batch. With ρ ≡ 1 (on-policy,
  one update per rollout batch) L_j = −Σ A / N_j is also exactly 0 when a group's advantages cancel over
  equal-length spans, while ∇L_j = −Σ A ∇log π / N_j is not; the reference never has ρ exactly 1 (its π_old comes
  from a separate pass), so in practice its active components are those of "advantage".

Either way a component with an empty span drops out. (The reference rescales each L_j by its micro-batch share of
the mini-batch's span tokens, `span_share`, which is 0/0 = NaN for an empty span: its whole step turns NaN and its
optimizer skips it. Here that component simply drops out.)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

MASK_EPS = 1e-8  # the reference's masked-mean epsilon
ACTIVE_BY = ("advantage", "loss")  # policy_loss(active=...): module docstring


def _group_indices(group_ids: Sequence[Hashable], batch: int) -> list[list[int]]:
    if len(group_ids) != batch:
        raise ValueError(f"group_ids has {len(group_ids)} entries for a batch of {batch} responses")
    groups: dict[Hashable, list[int]] = {}
    for i, group in enumerate(group_ids):
        groups.setdefault(group, []).append(i)
    return list(groups.values())


def group_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable], eps: float = 1e-6) -> torch.Tensor:
    """A[i, j] = (R[i, j] - mean_g R[·, j]) / (std_g R[·, j] + eps), each component normalised inside its group.

    rewards: (B, n); group_ids: B hashable ids (responses to the same prompt share one; groups may interleave).
    Returns (B, n) in the dtype of `rewards`.

    - A group whose rewards for component j are all equal gets A[·, j] = 0 exactly (std = 0, numerator 0). The
      group is shifted by its first member's rewards before averaging, which leaves A unchanged mathematically and
      keeps `R - mean` exactly 0 in floating point.
    - A group of one response has no Bessel std (0/0); the reference stops with "GRPO needs rollout.n > 1", and so
      does this function: ValueError.
    """
    batch = rewards.shape[0]
    rewards64 = rewards.detach().to(torch.float64)
    advantages = torch.zeros_like(rewards64)  # (B, n)
    for members in _group_indices(group_ids, batch):
        if len(members) < 2:
            raise ValueError(
                f"group of response {members[0]} has a single rollout; GRPO needs at least 2 rollouts per prompt"
            )
        index = torch.tensor(members, device=rewards.device)
        group = rewards64[index] - rewards64[index[0]]  # (group size, n), shifted by the first member
        advantages[index] = (group - group.mean(dim=0)) / (group.std(dim=0, correction=1) + eps)
    return advantages.to(rewards.dtype)


def gdpo_advantages(
    rewards: torch.Tensor, group_ids: Sequence[Hashable], weights: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """GDPO's one advantage per response (spec §9): per-component group normalisation, weighted sum, batch whitening.

        A_k[i] = group_advantages(R)[i, k]                       (eps inside each group's std, as in spec §5)
        S[i]   = Σ_k w_k A_k[i]
        A[i]   = (S[i] - mean_B S) / (std_B S + eps)             (Bessel's std over the batch's B responses)

    rewards (B, n); weights (n,); returns (B, 1) in the dtype of `rewards`. TRL's `normalize_then_sum` is this formula
    with eps = 1e-4 in both places; ours is 1e-6. A batch whose S is constant gets A = 0 exactly.
    """
    if weights.shape != rewards.shape[1:]:
        raise ValueError(f"gdpo_advantages: {tuple(weights.shape)} weights for {rewards.shape[1]} reward components")
    per_component = group_advantages(rewards.detach().to(torch.float64), group_ids, eps)  # (B, n)
    summed = per_component @ weights.to(torch.float64)  # (B,)
    summed = summed - summed[0]  # as in group_advantages: a constant S centres to exactly 0
    whitened = (summed - summed.mean()) / (summed.std(correction=1) + eps)  # (B,)
    return whitened.unsqueeze(1).to(rewards.dtype)


def token_advantages(advantages: torch.Tensor, span_masks: torch.Tensor) -> torch.Tensor:
    """A[i, j] on every token t of component j's span, 0 elsewhere. (B, n), (B, n, T) → (B, n, T)."""
    return advantages.unsqueeze(-1) * span_masks.to(advantages.dtype)


def span_share(span_masks: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """N_j(mb) / N_j: the share of component j's span tokens in the batch that lie in the micro-batch `rows`.

    span_masks (B, n, T) of the whole batch → (n,). N_j = Σ_{i,t} span[i, j, t] over the batch is clamped to 1, so a
    component with an empty span gets share 0. The loss is linear in A, so scaling a micro-batch's advantages by its
    share makes the micro-batch losses add up to the whole batch's token mean (the reference's rescaling).
    """
    batch_tokens = span_masks.sum(dim=(0, 2)).float()  # (n,) N_j
    return span_masks[rows].sum(dim=(0, 2)).float() / batch_tokens.clamp(min=1)


def active_components(advantages: torch.Tensor, span_masks: torch.Tensor) -> torch.Tensor:
    """(n,) bool: component j has a non-zero advantage on some token of its span. (B, n), (B, n, T) → (n,)."""
    return ((advantages.unsqueeze(-1) * span_masks) != 0).any(dim=2).any(dim=0)


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    span_masks: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float = 3.0,
    active: str = "advantage",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward-scoped PPO loss L of the module docstring, over one mini-batch, normalised by its active components.

    log_probs (B, T) with gradient; old_log_probs (B, T); advantages (B, n); span_masks (B, n, T), padding excluded.
    The log ratio is clamped to [-20, 20] before exp, as in the reference. `active` is "advantage" (the loop's) or
    "loss" (the reference's `L_j != 0` test); see the module docstring.

    Returns (L, stats). With no active component the divisor is clamped to 1 and L = Σ_j L_j: a tensor that still
    carries the graph, where the reference divides 0 by 0 and gets NaN (its optimizer then skips the step);
    `stats["n_active_components"]` is 0 so the caller can skip the step too. Stats, as token fractions over all
    (i, j, t) span positions:
      clip_frac_high  A > 0 and ρ > 1 + ε_high     clip_frac_low  A < 0 and ρ < 1 - ε_low
      clip_frac_dual  A < 0 and max(ρ, ρ̄) > c     (the reference logs high + low as "pg_clipfrac_higher" and dual
                                                     as "pg_clipfrac_lower")
    plus ppo_kl (mean of log π_old - log π_θ over span positions), n_active_components (the divisor's count) and
    loss_<j> per component.
    """
    if active not in ACTIVE_BY:
        raise ValueError(f"policy_loss(active={active!r}): choose one of {ACTIVE_BY}")
    span = span_masks.to(torch.float32)  # (B, n, T)
    adv = advantages.to(torch.float32).unsqueeze(-1) * span  # (B, n, T)
    log_ratio = (log_probs.float() - old_log_probs.float()).clamp(-20.0, 20.0).unsqueeze(1)  # (B, 1, T)
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.exp(log_ratio.clamp(math.log(1.0 - clip_low), math.log(1.0 + clip_high)))

    loss_unclipped = -adv * ratio  # (B, n, T)
    loss_clipped = -adv * clipped_ratio
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    loss_dual = torch.minimum(loss_ppo, -adv * dual_clip)
    token_loss = torch.where(adv < 0, loss_dual, loss_ppo)  # (B, n, T)

    component_loss = (token_loss * span).sum(dim=(0, 2)) / (span.sum(dim=(0, 2)) + MASK_EPS)  # (n,) L_j
    nonzero = component_loss != 0.0  # (n,) the reference's test
    loss = component_loss.sum() / nonzero.sum().clamp(min=1)
    n_active = float(nonzero.sum())
    if active == "advantage":
        by_advantage = int(active_components(advantages, span_masks).sum())
        # Mathematically Σ_j L_j / max(by_advantage, 1). The detour through the value count is the exact float
        # sequence earlier versions of this pipeline ran (rounding of the loss and of its gradient), kept so that
        # trained models stay bit-identical across the refactor.
        loss = loss * max(n_active, 1.0) / max(by_advantage, 1)
        n_active = float(by_advantage)

    with torch.no_grad():
        n_span = span.sum().clamp(min=1.0)
        ratio_b = ratio.expand_as(adv)
        measured = {
            "clip_frac_high": (((adv > 0) & (ratio_b > 1.0 + clip_high)) * span).sum() / n_span,
            "clip_frac_low": (((adv < 0) & (ratio_b < 1.0 - clip_low)) * span).sum() / n_span,
            "clip_frac_dual": (((adv < 0) & (loss_ppo > -adv * dual_clip)) * span).sum() / n_span,
            "ppo_kl": (-log_ratio * span).sum() / n_span,
        }
        stats = {key: float(value) for key, value in measured.items()}
        stats["n_active_components"] = n_active
        stats.update({f"loss_{j}": float(value) for j, value in enumerate(component_loss)})
    return loss, stats


def low_var_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ ‖ π_ref) per token, clamped as in the reference:

    x = clamp(log π_ref - log π_θ, -20, 20),   k3 = clamp(exp(x) - x - 1, -10, 10)   (≥ 0, unbiased)
    """
    x = (ref_log_probs.float() - log_probs.float()).clamp(-20.0, 20.0)
    return (torch.exp(x) - x - 1.0).clamp(-10.0, 10.0)


def kl_penalty(
    log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor, response_tokens: torch.Tensor
) -> torch.Tensor:
    """The KL term of L for one micro-batch: Σ_{i,t} mask · k3 / (response tokens of the whole batch), so the
    micro-batches' terms add up to the token mean over the batch. (b, T), (b, T), (b, T), () → ()."""
    return (low_var_kl(log_probs, ref_log_probs) * mask).sum() / response_tokens


def filter_groups(
    overall: torch.Tensor, group_ids: Sequence[Hashable], low: float = 0.01, high: float = 6.9
) -> torch.Tensor:
    """DAPO-style online filter: keep a group only when low < mean overall reward of its rollouts < high.

    overall: (B,); returns a bool keep mask (B,). Groups whose rollouts all fail (mean ≤ low) or all succeed
    (mean ≥ high) carry almost no advantage signal and are dropped whole.
    """
    keep = torch.zeros(overall.shape[0], dtype=torch.bool, device=overall.device)
    values = overall.detach().to(torch.float64)
    for members in _group_indices(group_ids, overall.shape[0]):
        index = torch.tensor(members, device=overall.device)
        mean = values[index].mean().item()
        keep[index] = low < mean < high
    return keep


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis: H = logsumexp(z) - Σ_v softmax(z)_v z_v. (..., V) → (...)."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
