"""RS-GRPO maths of spec §5: group advantages, token advantages, the clipped loss, KL, filtering, entropy."""

from __future__ import annotations

import math

import pytest
import torch

from evisrag_core.rsgrpo.objective import (
    active_components,
    entropy_from_logits,
    filter_groups,
    gdpo_advantages,
    group_advantages,
    kl_penalty,
    low_var_kl,
    policy_loss,
    span_share,
    token_advantages,
)

# --- advantages ---------------------------------------------------------------------------------------------------

# R = 1, 2, 3, 4: mean 2.5, Bessel std = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3) = 1.2909944
A_1234 = [-1.1618941038629222, -0.3872980346209741, 0.3872980346209741, 1.1618941038629222]


def test_advantages_of_one_group_by_hand() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    advantages = group_advantages(rewards, ["p"] * 4)
    assert advantages[:, 0].tolist() == pytest.approx(A_1234, rel=1e-12)


def test_each_component_is_normalised_on_its_own() -> None:
    rewards = torch.tensor([[1.0, 0.0], [2.0, 10.0], [3.0, 0.0], [4.0, 0.0]], dtype=torch.float64)
    advantages = group_advantages(rewards, [0, 0, 0, 0])
    assert advantages[:, 0].tolist() == pytest.approx(A_1234, rel=1e-12)
    # 0, 10, 0, 0: mean 2.5, std = sqrt((3 * 6.25 + 56.25) / 3) = 5
    assert advantages[:, 1].tolist() == pytest.approx([-0.5, 1.5, -0.5, -0.5], rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_variance_group_gets_exactly_zero(dtype: torch.dtype) -> None:
    # naively, mean([0.1] * 3) in float64 is 1.4e-17 off 0.1 and A would be ~1e-11: not 0, so the loss would count
    # the component as active
    rewards = torch.tensor([[0.1, 1.0], [0.1, 1.0], [0.1, 1.0]], dtype=dtype)
    advantages = group_advantages(rewards, ["p", "p", "p"])
    assert torch.equal(advantages, torch.zeros_like(rewards))
    assert advantages.dtype == dtype


def test_interleaved_groups() -> None:
    # group a: 0, 1, 2 → mean 1, std 1 → -1, 0, 1 (÷ (1 + 1e-6)); group b: 10, 30 → mean 20, std √200
    rewards = torch.tensor([[0.0], [10.0], [1.0], [30.0], [2.0]], dtype=torch.float64)
    advantages = group_advantages(rewards, ["a", "b", "a", "b", "a"])[:, 0].tolist()
    b = 10 / (math.sqrt(200) + 1e-6)
    assert advantages == pytest.approx([-1 / (1 + 1e-6), -b, 0.0, b, 1 / (1 + 1e-6)], rel=1e-12)


def test_group_order_does_not_matter() -> None:
    rewards = torch.randn(12, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    groups = [i % 3 for i in range(12)]
    permutation = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    shuffled = group_advantages(rewards[permutation], [groups[i] for i in permutation.tolist()])
    assert torch.allclose(shuffled, group_advantages(rewards, groups)[permutation], atol=1e-12)


def test_a_group_of_one_is_refused_like_the_reference() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    with pytest.raises(ValueError, match="single rollout"):
        group_advantages(rewards, ["a", "a", "b"])


def test_group_ids_must_cover_the_batch() -> None:
    with pytest.raises(ValueError, match="2 entries for a batch of 3"):
        group_advantages(torch.zeros(3, 1), ["a", "a"])


def test_token_advantages_follow_the_spans() -> None:
    advantages = torch.tensor([[2.0, -1.0]])  # (1, 2)
    spans = torch.tensor([[[1, 1, 0], [0, 1, 1]]], dtype=torch.bool)  # (1, 2, 3)
    assert token_advantages(advantages, spans).tolist() == [[[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]]]


# --- policy loss --------------------------------------------------------------------------------------------------


def one_token_loss(ratio: float, advantage: float) -> tuple[float, float, dict[str, float]]:
    """Loss, d loss / d log π_θ and stats for one token, one component whose span is that token."""
    log_probs = torch.tensor([[math.log(ratio)]], requires_grad=True)
    loss, stats = policy_loss(log_probs, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1, 1))
    loss.backward()
    return loss.item(), log_probs.grad.item(), stats


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss", "clipped", "clip_stat"),
    [
        pytest.param(1.1, 2.0, -2.2, False, None, id="inside the clip range"),
        pytest.param(1.5, 1.0, -1.28, True, "clip_frac_high", id="above 1+0.28, A > 0: clipped"),
        pytest.param(1.5, -1.0, 1.5, False, None, id="above 1+0.28, A < 0: not clipped"),
        pytest.param(0.5, -1.0, 0.8, True, "clip_frac_low", id="below 1-0.2, A < 0: clipped"),
        pytest.param(0.5, 1.0, -0.5, False, None, id="below 1-0.2, A > 0: not clipped"),
        pytest.param(10.0, -2.0, 6.0, True, "clip_frac_dual", id="dual clip: ratio 10, A < 0 → 3·|A|"),
        pytest.param(2.9, -1.0, 2.9, False, None, id="below the dual clip"),
        pytest.param(10.0, 1.0, -1.28, True, "clip_frac_high", id="ratio 10, A > 0: PPO clip, no dual"),
    ],
)
def test_clipping_branches(ratio: float, advantage: float, loss: float, clipped: bool, clip_stat: str | None) -> None:
    value, grad, stats = one_token_loss(ratio, advantage)
    assert value == pytest.approx(loss, rel=1e-6)
    # the clipped objective is flat in θ; the unclipped one has d(-A ρ)/d log π = -A ρ
    assert grad == (0.0 if clipped else pytest.approx(-advantage * ratio, rel=1e-6))
    for name in ("clip_frac_high", "clip_frac_low", "clip_frac_dual"):
        assert stats[name] == (1.0 if name == clip_stat else 0.0), name


def test_huge_log_ratio_is_clamped() -> None:
    log_probs = torch.tensor([[50.0]], requires_grad=True)
    loss, _ = policy_loss(log_probs, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1, 1))
    assert loss.item() == pytest.approx(3.0)  # dual clip
    loss.backward()
    assert torch.isfinite(log_probs.grad).all()


def test_token_mean_over_the_span_of_the_whole_mini_batch() -> None:
    # ratio 1 everywhere, so each token's loss is -A. Response 0 owns 1 token (A = 1), response 1 owns 3 (A = -1):
    # the token mean is (-1 + 3·1) / 4 = 0.5, not the mean of sequence means (-1 + 1) / 2 = 0.
    log_probs = torch.zeros(2, 3)
    spans = torch.tensor([[[1, 0, 0]], [[1, 1, 1]]], dtype=torch.bool)  # (2, 1, 3)
    loss, stats = policy_loss(log_probs, log_probs, torch.tensor([[1.0], [-1.0]]), spans)
    assert loss.item() == pytest.approx(0.5)
    assert stats["loss_0"] == pytest.approx(0.5)


def test_tokens_outside_every_span_do_not_matter() -> None:
    spans = torch.tensor([[[1, 1, 0, 0]]], dtype=torch.bool)
    advantages = torch.tensor([[1.0]])
    base, _ = policy_loss(torch.zeros(1, 4), torch.zeros(1, 4), advantages, spans)
    moved, _ = policy_loss(torch.tensor([[0.0, 0.0, 5.0, -5.0]]), torch.zeros(1, 4), advantages, spans)
    assert moved.item() == base.item() == pytest.approx(-1.0)


@pytest.mark.parametrize("active", ["advantage", "loss"])
def test_step_loss_is_the_mean_over_the_active_components(active: str) -> None:
    # ratio 1: component loss = -mean A over its span. Component 0: A = 2 → -2. Component 1: empty span → 0.
    # Component 2: A = 0 (its group agreed) → 0. Component 3: A = -1 → 1. Step loss = (-2 + 1) / 2, not / 4: both
    # tests of "active" agree here.
    log_probs = torch.zeros(1, 3, requires_grad=True)
    advantages = torch.tensor([[2.0, 5.0, 0.0, -1.0]])
    spans = torch.tensor([[[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 1, 1]]], dtype=torch.bool)
    loss, stats = policy_loss(log_probs, log_probs.detach(), advantages, spans, active=active)
    assert loss.item() == pytest.approx(-0.5)
    assert stats["n_active_components"] == 2.0
    assert [stats[f"loss_{j}"] for j in range(4)] == pytest.approx([-2.0, 0.0, 0.0, 1.0])
    loss.backward()
    # d/d log π_t of (1/2)·(-(2ρ_0 + 2ρ_1)/2 + (ρ_1 + ρ_2)/2) at ρ = 1
    assert log_probs.grad[0].tolist() == pytest.approx([-0.5, -0.25, 0.25])


def test_a_cancelling_group_is_active_by_its_advantages_not_by_its_loss_value() -> None:
    # ratio 1, two responses of one group with equal spans and A = +1, -1: L_0 = -(1 - 1) / 2 = 0 exactly, but its
    # gradient is not 0. Component 1 (A = 2 on one token) has L_1 = -2. The loop's test counts 2 components; the
    # reference's value test counts 1.
    log_probs = torch.zeros(2, 2, requires_grad=True)
    advantages = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])
    spans = torch.tensor([[[1, 1], [1, 0]], [[1, 1], [0, 0]]], dtype=torch.bool)  # (2, 2, 2)
    by_advantage, stats = policy_loss(log_probs, log_probs.detach(), advantages, spans)
    by_value, value_stats = policy_loss(log_probs, log_probs.detach(), advantages, spans, active="loss")
    assert stats["loss_0"] == 0.0 and stats["loss_1"] == pytest.approx(-2.0)
    assert (stats["n_active_components"], value_stats["n_active_components"]) == (2.0, 1.0)
    assert (by_advantage.item(), by_value.item()) == pytest.approx((-1.0, -2.0))
    by_advantage.backward()
    # d/d log π of (1/2)·(-(ρ_00 + ρ_01 - ρ_10 - ρ_11)/4 - 2ρ_00) at ρ = 1
    assert log_probs.grad.flatten().tolist() == pytest.approx([-1.125, -0.125, 0.125, 0.125])


def test_the_loss_keeps_the_released_float_sequence() -> None:
    # ρ = 1: L_j = -a_j for components 0-2 (one token each); component 3's group cancels (A = +1, -1 on equal
    # spans), so L_3 = 0 exactly: 3 components by value, 4 by advantage. The loss divides by the value count,
    # multiplies it back and divides by the advantage count, the float sequence the released models were trained
    # with; for these inputs it differs from Σ_j L_j / 4 in the last bit, so a "simplified" loss fails here.
    advantages = torch.tensor([[-1.551, -1.386, -1.033, 1.0], [0.0, 0.0, 0.0, -1.0]])
    spans = torch.zeros(2, 4, 4, dtype=torch.bool)
    for j in range(3):
        spans[0, j, j] = True
    spans[:, 3, 3] = True
    log_probs = torch.zeros(2, 4)
    loss, stats = policy_loss(log_probs, log_probs, advantages, spans)
    by_value, value_stats = policy_loss(log_probs, log_probs, advantages, spans, active="loss")
    assert (stats["n_active_components"], value_stats["n_active_components"]) == (4.0, 3.0)
    assert torch.equal(loss, by_value * 3.0 / 4)
    component_sum = torch.tensor([stats[f"loss_{j}"] for j in range(4)]).sum()
    assert not torch.equal(loss, component_sum / 4)
    assert loss.item() == pytest.approx(component_sum.item() / 4)


@pytest.mark.parametrize(
    ("advantages", "spans", "active"),
    [
        pytest.param([[1.0, 0.0]], [[[1, 0], [1, 1]]], [True, False], id="A = 0: inactive"),
        pytest.param([[1.0, 2.0]], [[[1, 0], [0, 0]]], [True, False], id="empty span: inactive"),
        pytest.param([[1.0], [-1.0]], [[[1, 1]], [[1, 1]]], [True], id="cancelling group: active"),
    ],
)
def test_active_components(advantages: list, spans: list, active: list[bool]) -> None:
    assert active_components(torch.tensor(advantages), torch.tensor(spans, dtype=torch.bool)).tolist() == active


def test_an_unknown_active_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1, 1), active="value")


# --- micro-batch span share ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spans", "rows", "share"),
    [
        pytest.param([[[1, 1, 0]], [[1, 0, 0]]], [0, 1], [1.0], id="the whole batch: share 1"),
        pytest.param([[[1, 1, 0]], [[1, 0, 0]]], [0], [2 / 3], id="2 of the 3 span tokens"),
        pytest.param([[[1, 1, 0]], [[1, 0, 0]]], [1], [1 / 3], id="1 of the 3 span tokens"),
        pytest.param([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], [1], [0.0, 0.0], id="no span tokens in the micro-batch"),
        pytest.param([[[1, 1], [0, 0]], [[1, 1], [0, 0]]], [0], [0.5, 0.0], id="an empty span anywhere: share 0"),
        pytest.param([[[1, 0], [1, 1]], [[1, 1], [0, 0]], [[0, 0], [0, 1]]], [0, 2], [1 / 3, 1.0], id="per component"),
    ],
)
def test_span_share_is_the_micro_batch_part_of_each_components_span_tokens(
    spans: list, rows: list[int], share: list[float]
) -> None:
    assert span_share(torch.tensor(spans, dtype=torch.bool), rows).tolist() == pytest.approx(share)


def test_span_shares_of_the_micro_batches_add_up_to_one() -> None:
    spans = torch.rand(8, 6, 7, generator=torch.Generator().manual_seed(2)) > 0.5
    total = sum(span_share(spans, rows) for rows in ([0, 1, 2], [3, 4, 5], [6, 7]))
    assert total.tolist() == pytest.approx([1.0] * 6)


@pytest.mark.parametrize(
    ("micro_batches", "loss"),
    [
        # one micro-batch: L_0 = -(1 + 1 + 0 + 0) / 4, L_1 = -4 / 4, both active → (-0.5 - 1) / 2
        ([[0, 1]], -0.75),
        # one row each, shares 1/2: row 0 has both active → (-0.5 - 0.5) / 2; row 1 only component 1 → -0.5 / 1
        ([[0], [1]], -1.0),
    ],
)
def test_the_mean_over_active_components_is_taken_per_micro_batch(micro_batches: list, loss: float) -> None:
    """Why the packing matters (rsgrpo.micro_batch_tokens): a component inactive in a micro-batch leaves the mean of
    that micro-batch, so the same batch gives another loss in other micro-batches (ρ = 1, every token in both spans)."""
    advantages = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # (B=2, n=2): component 0 active in row 0 only
    spans = torch.ones(2, 2, 2, dtype=torch.bool)  # (B, n, T=2)
    log_probs = torch.zeros(2, 2)
    total = 0.0
    for rows in micro_batches:
        scaled = advantages[rows] * span_share(spans, rows)
        total += float(policy_loss(log_probs[rows], log_probs[rows], scaled, spans[rows])[0])
    assert total == pytest.approx(loss)


def test_all_zero_components_give_a_finite_zero_loss() -> None:
    log_probs = torch.zeros(2, 3, requires_grad=True)
    spans = torch.ones(2, 2, 3, dtype=torch.bool)
    loss, stats = policy_loss(log_probs, log_probs.detach(), torch.zeros(2, 2), spans)
    loss.backward()
    assert loss.item() == 0.0 and stats["n_active_components"] == 0.0
    assert torch.equal(log_probs.grad, torch.zeros(2, 3))


def test_clip_fractions_count_span_positions() -> None:
    # token 0: ratio 1.5 with A = 1 (clipped high); token 1: ratio 1 (not clipped); token 2 outside the span.
    log_probs = torch.tensor([[math.log(1.5), 0.0, math.log(1.5)]])
    spans = torch.tensor([[[1, 1, 0]]], dtype=torch.bool)
    _, stats = policy_loss(log_probs, torch.zeros(1, 3), torch.tensor([[1.0]]), spans)
    assert stats["clip_frac_high"] == pytest.approx(0.5)
    assert stats["ppo_kl"] == pytest.approx(-math.log(1.5) / 2)


# --- KL, filtering, entropy ---------------------------------------------------------------------------------------


def test_low_var_kl_known_values() -> None:
    log_probs = torch.log(torch.tensor([0.5, 0.5, 0.25]))
    ref_log_probs = torch.log(torch.tensor([0.5, 0.25, 0.5]))
    # x = log(ref/p): 0 → 0;  -ln 2 → 1/2 + ln 2 - 1;  ln 2 → 2 - ln 2 - 1
    expected = [0.0, 0.5 + math.log(2) - 1, 1 - math.log(2)]
    assert low_var_kl(log_probs, ref_log_probs).tolist() == pytest.approx(expected, abs=1e-7)


def test_low_var_kl_is_clamped_to_ten() -> None:
    # x = 30 → 20: e^20 - 21 → 10;  x = -30 → -20: e^-20 + 19 → 10;  x = -5: e^-5 + 4 is left alone
    kl = low_var_kl(torch.zeros(3), torch.tensor([30.0, -30.0, -5.0]))
    assert kl.tolist() == pytest.approx([10.0, 10.0, math.exp(-5.0) + 4.0])


def test_filter_groups_drops_all_fail_and_all_succeed_groups() -> None:
    overall = torch.tensor([0.0, 7.0, 0.0, 7.0, 3.0, 7.0, 0.0, 7.0], dtype=torch.float64)
    ids = ["fail", "pass", "fail", "pass", "mixed", "pass", "fail", "mixed"]
    keep = filter_groups(overall, ids)
    assert keep.tolist() == [False, False, False, False, True, False, False, True]


@pytest.mark.parametrize(
    ("rewards", "kept"),
    [
        ([0.01, 0.01], False),  # mean = low: dropped
        ([0.0, 0.03], True),
        ([6.9, 6.9], False),  # mean = high: dropped
        ([6.8, 6.99], True),
        ([-3.0, 7.0], True),
    ],
)
def test_filter_groups_boundaries(rewards: list[float], kept: bool) -> None:
    keep = filter_groups(torch.tensor(rewards, dtype=torch.float64), ["g"] * len(rewards))
    assert keep.tolist() == [kept] * len(rewards)


def test_entropy_from_logits() -> None:
    uniform = torch.zeros(2, 7)
    assert entropy_from_logits(uniform).tolist() == pytest.approx([math.log(7)] * 2)
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    probs = torch.softmax(logits, dim=-1)
    assert entropy_from_logits(logits).item() == pytest.approx(-(probs * probs.log()).sum().item(), rel=1e-6)


def test_kl_penalty_of_the_micro_batches_adds_up_to_the_batch_token_mean() -> None:
    log_probs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -4.0]])
    ref_log_probs = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -0.9, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the first response is 2 tokens long
    tokens = mask.sum()
    whole = (low_var_kl(log_probs, ref_log_probs) * mask).sum() / tokens
    parts = [kl_penalty(log_probs[[i]], ref_log_probs[[i]], mask[[i]], tokens) for i in (0, 1)]
    assert float(sum(parts)) == pytest.approx(float(whole), abs=1e-7)
    assert float(kl_penalty(log_probs, log_probs, mask, tokens)) == 0.0  # no divergence from itself


# --- gdpo (rsgrpo.mode: gdpo, spec §9) ------------------------------------------------------------------------------

W_DEFAULT = torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)  # accuracy, evidence, format, ...
# Two groups of two; components accuracy, evidence, format, overlong, is_observe, is_think.
GDPO_R = [
    [3.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # group 0
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    [0.0, 3.0, 0.0, 0.0, 0.0, 0.0],  # group 1
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
]
# A group of two with values a ≠ b normalises to ±(|a-b|/2) / (|a-b|/√2) = ±s, s = 1/√2; equal values give 0
# (the eps in the denominator makes that 0/eps = 0; eps 1e-12 pins the eps → 0 numbers).
# S = Σ w_k A_k: row 0 3s (accuracy), row 1 -3s; row 2 3s (evidence) - s (format) = 2s, row 3 -2s.
# mean 0, Bessel std = s·√((9 + 9 + 4 + 4) / 3) = s·√(26/3)  →  A = S / std = ±3·√(3/26), ±2·√(3/26).
GDPO_A = [3 * math.sqrt(3 / 26), -3 * math.sqrt(3 / 26), 2 * math.sqrt(3 / 26), -2 * math.sqrt(3 / 26)]


@pytest.mark.parametrize(
    ("rewards", "weights", "eps", "expected", "tolerance"),
    [
        pytest.param(GDPO_R, W_DEFAULT, 1e-12, GDPO_A, 1e-9, id="by hand (eps → 0)"),
        pytest.param(GDPO_R, W_DEFAULT, 1e-6, GDPO_A, 1e-5, id="our eps 1e-6 barely moves it"),
        # equal weights: S = s, -s, s - s = 0, 0 → mean 0, std = s·√(2/3) → ±√(3/2), 0
        pytest.param(GDPO_R, torch.ones(6), 1e-12, [math.sqrt(1.5), -math.sqrt(1.5), 0, 0], 1e-9, id="weights 1"),
        # only format counts: group 1 gives -s, +s, group 0 nothing → S = 0, 0, -s, s → ±√(3/2) on rows 2, 3
        pytest.param(
            GDPO_R,
            torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
            1e-12,
            [0.0, 0.0, -math.sqrt(1.5), math.sqrt(1.5)],
            1e-9,
            id="only format",
        ),
        pytest.param([[1.0] * 6] * 4, W_DEFAULT, 1e-6, [0.0] * 4, 0.0, id="no signal: exactly 0"),
    ],
)
def test_gdpo_advantages_by_hand(
    rewards: list[list[float]], weights: torch.Tensor, eps: float, expected: list[float], tolerance: float
) -> None:
    advantages = gdpo_advantages(torch.tensor(rewards, dtype=torch.float64), [0, 0, 1, 1], weights, eps)
    assert advantages.shape == (4, 1)
    assert advantages[:, 0].tolist() == pytest.approx(expected, abs=tolerance)


def trl_normalize_then_sum(rewards: torch.Tensor, n: int, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """TRL's GRPOConfig(multi_objective_aggregation="normalize_then_sum") as its trainer computes it, written from
    its formula (groups are n consecutive rows): per-component z-score in the group (Bessel std + eps), weighted sum,
    then a z-score over the batch (Bessel std + eps)."""
    grouped = rewards.view(-1, n, rewards.shape[1])
    z = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True, correction=1) + eps)
    summed = (z.view(-1, rewards.shape[1]) * weights).sum(dim=1)
    return (summed - summed.mean()) / (summed.std(correction=1) + eps)


@pytest.mark.parametrize("seed", range(5))
def test_gdpo_equals_trls_normalize_then_sum_with_its_eps(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(-1, 4, (24, 6), generator=generator).to(torch.float64)  # ties: some zero-std groups
    weights = torch.rand(6, generator=generator, dtype=torch.float64) * 3
    ours = gdpo_advantages(rewards, [i // 8 for i in range(24)], weights, eps=1e-4)[:, 0]
    assert torch.allclose(ours, trl_normalize_then_sum(rewards, 8, weights, 1e-4), rtol=1e-9, atol=1e-9)


def test_gdpo_needs_one_weight_per_component() -> None:
    with pytest.raises(ValueError, match="weights for 6 reward components"):
        gdpo_advantages(torch.zeros(4, 6), [0, 0, 1, 1], torch.ones(5))
