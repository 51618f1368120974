"""RS-GRPO: Reward-Scoped GRPO (spec §4, §5), one step per rollout batch.

For a rollout batch of prompts x_g with tagged ground truths G_g (g = 1..P, P = rollout_batch_size), B = P·n:

    1. rollout     y_{g,1..n} ~ π_θ(· | x_g)                                        (logits / rollout temperature)
    2. rewards     R[i, j] = w_j · score_j(y_i, G_{g(i)}),  j ∈ accuracy, evidence, format, overlong, is_observe,
                   is_think;  overall_i = Σ_j R[i, j]
    3. filter      keep group g iff filter_low < mean_{i ∈ g} overall_i < filter_high; draw more prompts until P
                   groups are kept, at most max_filter_tries rounds
    4. spans       span[i, j, t] = 1 on the tokens of y_i that component j judges
    5. advantages  A[i, j] = (R[i, j] − mean_g R[·, j]) / (std_g R[·, j] + 1e-6)
    6. loss        ρ_t = π_θ(y_t) / π_old(y_t);  L_j = PPO-clip token mean over span_j (ρ clipped to
                   [1 − ε_low, 1 + ε_high], dual clip c when A < 0);  L = Σ_j L_j / |active j|, active = a non-zero
                   advantage on j's span;  + β · token mean of k3(π_θ ‖ π_ref) when kl_coef β > 0
    7. update      one AdamW step on ∇L, ‖∇L‖ clipped to max_grad_norm; vision tower frozen

Estimators (`rsgrpo.mode`, docs/rsgrpo.md). Plain GRPO (`grpo`) is the same step with one component, `overall`,
whose span is the whole response. GDPO (`gdpo`) also has one component on the whole response, with the advantage
A[i] = whiten_B(Σ_j w_j A[i, j]) (`objective.gdpo_advantages`). `span_masks: released` keeps step 5 and changes step
4 to the reference's masks before its commit 6d43409 (`spans.released_span_masks`).

π_old. The reference's actor batch is the whole rollout batch, so each rollout batch gives exactly one update and
π_old is the policy being updated: old_log_probs = log_probs.detach(), ρ = 1 exactly, and the clip terms never
bind (the clip fractions are logged and read 0). The gradient is that of −Σ A·log π over the spans.

Micro-batches. With micro_batch_size m > 0 the B responses go through forward/backward m at a time, with
micro_batch_tokens they are packed by a token budget as the reference packs them (`packing`), and the gradients add
up. Component j's advantages in a micro-batch are scaled by its share of j's span tokens,
N_j(mb) / N_j (`objective.span_share`, the reference's rescaling; the loss is linear in A), and the mean over active
components is taken per micro-batch, as the reference does. With m = 0 there is one micro-batch, the shares are
exactly 1, and L is the formula above. "Active" counts advantages, not the reference's `L_j != 0` value test (with
ρ ≡ 1 a cancelling group makes L_j exactly 0 while its gradient is not; `objective` module docstring); a step
with no active component has no gradient and is skipped (the reference's loss is 0/0 = NaN there and its optimizer
skips it).

Log-probabilities are those of the sampling distribution: logits divided by the rollout temperature, as in the
reference. Vision placeholder tokens are never sampled (`rollout.vision_token_ids`).

Map of the package (an audit reads the first five, in this order):

    step.py           steps 1-7 top to bottom in one process: train_step, collect_groups, spans_and_advantages,
                      accumulate_gradients, LocalUpdate
    state.py          Run, Rewards (overall + components by name), Batch, the UpdateStrategy interface
    rewards.py        step 2: score(response, ground_truth, response_length), the six components and weights
    spans.py          step 4: component_span_masks, the token span of each component
    objective.py      steps 3, 5, 6: filter_groups, group_advantages, gdpo_advantages, span_share, policy_loss,
                      kl_penalty
    estimators.py     what rsgrpo.mode and rsgrpo.span_masks add to steps 4-5 (gdpo weights, reward-call edges)
    packing.py        step 6's micro-batches: fixed size, or the reference's token-budget packing
    prompt_stream.py  which prompts come next (epochs reshuffled by seed), the train/validation split
    rollout.py        step 1: prompt encoding and sampling (TransformersRollout; vllm_rollout.py: VllmRollout)
    fast_decode.py    the shared-prefix sampler behind TransformersRollout (one prefill per prompt)
    distributed.py    DeepSpeedUpdate: the same step over torchrun ranks (the only rank logic)
    checkpoint.py     resumable checkpoints (weights, optimizer, RNG, prompt cursor), bit for bit on CPU
    validate.py       held-out rewards and answer accuracy
    report.py         HTML pages of rollouts with each component's span highlighted
    train.py          the stage: build_run (picks the update strategy), train_rsgrpo (the loop), save_final
    preflight.py      `evisrag rsgrpo --dry-run`: the plan and its problems before a launch
"""

from evisrag_core.rsgrpo.objective import group_advantages, policy_loss
from evisrag_core.rsgrpo.rewards import score

__all__ = ["group_advantages", "policy_loss", "score"]
