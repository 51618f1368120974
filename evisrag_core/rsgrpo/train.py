"""RS-GRPO training (spec §4, §5): rollout → rewards → filter → spans → advantages → loss → update.

One step, for a rollout batch of prompts x_g with tagged ground truths G_g (g = 1..P, P = rollout_batch_size):

    1. rollout     y_{g,1..n} ~ π_θ(· | x_g)                                      (evisrag_core.rsgrpo.rollout)
    2. rewards     R[i, j] = score_j(y_i, G_{g(i)}),  j ∈ accuracy, evidence, format, overlong, is_observe, is_think
                   (weighted; overall = Σ_j R[i, j])                               (evisrag_core.rsgrpo.rewards.score)
    3. filter      keep group g iff filter_low < mean_{i ∈ g} overall_i < filter_high; draw more prompts until P
                   groups are kept, at most max_filter_tries rounds                (rsgrpo.filter_groups)
    4. spans       span[i, j, t] = 1 on the tokens of y_i that component j judges  (spans.component_span_masks)
    5. advantages  A[i, j] = (R[i, j] − mean_g R[·, j]) / (std_g R[·, j] + 1e-6)   (rsgrpo.group_advantages)
    6. loss        ρ_t = π_θ(y_t) / π_old(y_t); per component the PPO-clip token mean over span_j
                   (ρ clipped to [1 − ε_low, 1 + ε_high], dual clip c when A < 0), averaged over the active
                   components (non-zero advantage on their span; see Micro-batches) (rsgrpo.policy_loss)
                   + β · token mean of k3(π_θ ‖ π_ref) when kl_coef β > 0          (rsgrpo.low_var_kl)
    7. update      one AdamW step on ∇L, ‖∇L‖ clipped to max_grad_norm; vision tower frozen

Plain GRPO (`mode: grpo`) is the same step with one component, `overall`, whose span is the whole response.

π_old. The reference's actor batch is the whole rollout batch, so each rollout batch gives exactly one update and
π_old is the policy being updated: old_log_probs = log_probs.detach(), ρ = 1 exactly, and the clip terms never
bind (the clip fractions are logged and read 0). The gradient is that of −Σ A·log π over the spans.

Micro-batches. With micro_batch_size m > 0 the B = P·n responses go through forward/backward m at a time and the
gradients add up. Component j's advantages in a micro-batch are scaled by its share of j's span tokens,
N_j(micro-batch) / N_j(batch), which is the reference's rescaling (the loss is linear in A); the mean over active
components is then taken per micro-batch, as the reference does. With m = 0 there is one micro-batch, the shares are
exactly 1, and L is the formula above. "Active" means a non-zero advantage somewhere on the component's span (see
the comment in `policy_update` for why not a non-zero loss value); a step with no active component has no gradient
and is skipped (the reference's loss is 0/0 = NaN there and its optimizer skips it).

Log-probabilities are those of the sampling distribution: logits divided by the rollout temperature, as in the
reference. Vision placeholder tokens are never sampled (see `rollout.vision_token_ids`).

Resumable: every `save_every` steps a checkpoint (weights as safetensors, optimizer, RNG states, step and prompt
cursor) is written atomically to checkpoint_dir; a new run resumes from the latest one and continues exactly (same
weights, bit for bit on CPU). The prompt order of epoch e is a permutation seeded by (seed, e), so the cursor alone
says which prompts come next.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evisrag_core.bad_records import BadRecords
from evisrag_core.config import RSGRPOParams
from evisrag_core.data.hub import RL_VAL_FILE
from evisrag_core.io import atomic_dir, write_json_atomic
from evisrag_core.metrics import score_prediction
from evisrag_core.resume import fingerprinted_checkpoint
from evisrag_core.rsgrpo import distributed as rsgrpo_dist
from evisrag_core.rsgrpo.objective import entropy_from_logits, filter_groups, group_advantages, low_var_kl, policy_loss
from evisrag_core.rsgrpo.report import report_samples, write_step_report
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS, score
from evisrag_core.rsgrpo.rollout import (
    Group,
    PromptEncoder,
    RLPrompt,
    Sampling,
    TransformersRollout,
    VllmRollout,
    batch_to,
    group_ids,
    load_rl_prompts,
    pad_responses,
    policy_inputs,
)
from evisrag_core.rsgrpo.spans import (
    SpanLocator,
    component_span_masks,
    span_locator,
    tag_token_ids,
    whole_response_masks,
)

log = logging.getLogger(__name__)

REWARD_KEYS = ("overall", *REWARD_COMPONENTS)  # the columns of a rewards tensor
_CHECKPOINT = re.compile(r"^step-(\d+)$")
OnStep = Callable[[int, dict[str, float]], None]


class FilterExhaustedError(RuntimeError):
    """Online filtering kept fewer than rollout_batch_size groups in max_filter_tries rounds."""


@dataclass
class Run:
    """Everything a step reads or changes."""

    cfg: RSGRPOParams
    seed: int
    policy: Any
    processor: Any
    optimizer: torch.optim.Optimizer
    rollout: TransformersRollout | VllmRollout
    train_prompts: list[RLPrompt]
    val_prompts: list[RLPrompt]
    reference: Any = None  # frozen π_ref, only when kl_coef > 0
    step: int = 0  # optimizer steps done
    cursor: int = 0  # training prompts drawn so far, over all epochs
    tag_ids: dict[str, list[int]] = field(default_factory=dict)
    locate_spans: SpanLocator | None = None  # rsgrpo.span_locator: char_offsets; None: token-id search with tag_ids
    dist: rsgrpo_dist.Distributed | None = None  # several ranks under DeepSpeed; None: this process alone

    @property
    def pad_id(self) -> int:
        return self.processor.tokenizer.pad_token_id


# --- 1-3. rollouts, rewards and online filtering ------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def epoch_order(n_prompts: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(random.Random(f"{seed}-rsgrpo-epoch-{epoch}").sample(range(n_prompts), n_prompts))


def next_prompts(run: Run, count: int) -> list[RLPrompt]:
    """The next `count` training prompts; the cursor moves on (epochs follow each other, each reshuffled)."""
    prompts = []
    for _ in range(count):
        epoch, index = divmod(run.cursor, len(run.train_prompts))
        prompts.append(run.train_prompts[epoch_order(len(run.train_prompts), run.seed, epoch)[index]])
        run.cursor += 1
    return prompts


def group_rewards(group: Group, cfg: RSGRPOParams) -> torch.Tensor:
    """(n, 7) rewards of a group's responses, columns REWARD_KEYS (overall first)."""
    limits = {"max_length": cfg.max_length, "buffer_length": cfg.buffer_length, "min_length": cfg.min_length}
    rows = [
        score(text, group.prompt.ground_truth, len(ids), **limits)
        for text, ids in zip(group.texts, group.responses, strict=True)
    ]
    return torch.tensor([[row[key] for key in REWARD_KEYS] for row in rows], dtype=torch.float32)


def rollout_seeds(seed: int, first_draw: int, count: int) -> list[int]:
    """`rollout_seeding: group`: the seed of the prompts drawn at positions first_draw … first_draw + count - 1 of
    the run's prompt stream (positions never repeat, so neither do seeds; a resumed run draws the same ones)."""
    return [random.Random(f"{seed}-rsgrpo-rollout-{first_draw + k}").getrandbits(63) for k in range(count)]


def sample_and_score(
    run: Run, sampling: Sampling, prompts: list[RLPrompt], seeds: list[int] | None
) -> tuple[list[Group], list[torch.Tensor]]:
    groups = run.rollout.generate(prompts, sampling, seeds)
    return groups, [group_rewards(group, run.cfg) for group in groups]


def rollout_and_score(run: Run, sampling: Sampling) -> tuple[list[Group], list[torch.Tensor]]:
    """Steps 1-2 for the next rollout_batch_size prompts: their groups and (n, 7) rewards, in prompt order (on
    several ranks each samples its share: rsgrpo_dist)."""
    first = run.cursor
    prompts = next_prompts(run, run.cfg.rollout_batch_size)
    seeds = rollout_seeds(run.seed, first, len(prompts)) if run.cfg.rollout_seeding == "group" else None
    if run.dist is not None:
        return run.dist.rollout_and_score(prompts, seeds, functools.partial(sample_and_score, run, sampling))
    return sample_and_score(run, sampling, prompts, seeds)


def collect_groups(run: Run) -> tuple[list[Group], torch.Tensor, dict[str, float]]:
    """Steps 1-3: sample, score and filter until rollout_batch_size groups are kept.

    Returns the kept groups, their rewards (B, 7) and rollout metrics: reward means over *every* sampled response
    of the step (kept or not), the fraction of groups filtered out and the number of rounds.
    """
    cfg = run.cfg
    sampling = Sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    kept: list[Group] = []
    kept_rewards: list[torch.Tensor] = []
    all_rewards: list[torch.Tensor] = []
    lengths: list[int] = []
    rounds = 0
    while len(kept) < cfg.rollout_batch_size:
        if rounds == cfg.max_filter_tries:
            raise FilterExhaustedError(
                f"step {run.step + 1}: online filtering kept {len(kept)} of {cfg.rollout_batch_size} groups after "
                f"{rounds} rounds; the mean overall reward of every other group was ≤ {cfg.filter_low} or ≥ "
                f"{cfg.filter_high}. The policy fails (or solves) almost every prompt; check the start model "
                "(rsgrpo.model_dir), or widen rsgrpo.filter_low/filter_high, or set rsgrpo.online_filtering: false."
            )
        rounds += 1
        groups, rewards = rollout_and_score(run, sampling)  # P groups, P × (n, 7)
        overall = torch.cat([r[:, 0] for r in rewards])  # (P·n,)
        keep = filter_groups(overall, group_ids(groups), cfg.filter_low, cfg.filter_high)  # (P·n,)
        for g, (group, reward) in enumerate(zip(groups, rewards, strict=True)):
            if keep[g * cfg.n] or not cfg.online_filtering:
                kept.append(group)
                kept_rewards.append(reward)
        all_rewards.extend(rewards)
        lengths.extend(len(ids) for group in groups for ids in group.responses)
    sampled = torch.cat(all_rewards)  # (rounds·P·n, 7)
    metrics = {f"reward/{key}": float(sampled[:, c].mean()) for c, key in enumerate(REWARD_KEYS)}
    metrics["filter/dropped_fraction"] = 1.0 - len(kept) / len(all_rewards)
    metrics["filter/rounds"] = float(rounds)
    metrics["response_length/mean"] = float(np.mean(lengths))
    size = cfg.rollout_batch_size
    return kept[:size], torch.cat(kept_rewards[:size]), metrics


# --- 4-7. spans, advantages, loss and the update ------------------------------------------------------------------


def response_log_probs(
    model: Any, inputs: dict[str, torch.Tensor], response_ids: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t | x, y_<t) of every response token and the logits it came from: (b, T), (b, T, V)."""
    width = response_ids.shape[1]
    inputs = batch_to(inputs, model.device)
    logits = model(**inputs, use_cache=False, logits_to_keep=width + 1).logits[:, :-1].float()  # (b, T, V)
    logits = logits / temperature
    targets = response_ids.to(logits.device).unsqueeze(-1)  # (b, T, 1)
    log_probs = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (b, T)
    return log_probs, logits


def micro_batches(batch: int, size: int) -> list[list[int]]:
    size = size or batch
    return [list(range(start, min(start + size, batch))) for start in range(0, batch, size)]


@dataclass
class Batch:
    """A step's kept rollouts and what steps 4-5 computed on them (the update and the report read it)."""

    groups: list[Group]
    rewards: torch.Tensor  # (B, 7) columns REWARD_KEYS
    components: tuple[str, ...]  # the rewards the advantages are computed for (n_c of them)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T)
    span_masks: torch.Tensor  # (B, n_c, T)
    advantages: torch.Tensor  # (B, n_c)

    def reward_rows(self) -> list[dict[str, float]]:
        return [dict(zip(REWARD_KEYS, row, strict=True)) for row in self.rewards.tolist()]


def spans_and_advantages(
    groups: list[Group],
    rewards: torch.Tensor,
    mode: str,
    tag_ids: dict[str, list[int]],
    pad_id: int,
    locate_spans: SpanLocator | None = None,
) -> Batch:
    """Steps 4-5: each component's token span and its group-normalised advantage (plain GRPO: overall only)."""
    response_ids, response_mask = pad_responses(groups, pad_id)  # (B, T)
    if mode == "rsgrpo":
        components, component_rewards = REWARD_COMPONENTS, rewards[:, 1:]  # (B, 6)
        locate = locate_spans or functools.partial(component_span_masks, tag_ids=tag_ids)
        span_masks = locate(response_ids, response_mask)  # (B, 6, T)
    else:
        components, component_rewards = ("overall",), rewards[:, :1]  # (B, 1)
        span_masks = whole_response_masks(response_mask)  # (B, 1, T)
    advantages = group_advantages(component_rewards, group_ids(groups))  # (B, n_c)
    return Batch(groups, rewards, tuple(components), response_ids, response_mask, span_masks, advantages)


def policy_update(run: Run, batch: Batch) -> dict[str, float]:
    """Steps 6-7: the scoped clipped loss (+ KL), accumulated over micro-batches, then one AdamW step.

    Under `run.dist` (several ranks, evisrag_core/rsgrpo/distributed.py) a rank runs only its own micro-batches of the
    batch, DeepSpeed reduces the gradients, clips and steps, and the metrics are summed over ranks."""
    cfg = run.cfg
    if run.dist is not None:
        return distributed_policy_update(run, batch)
    run.policy.train()
    run.optimizer.zero_grad(set_to_none=True)
    totals, clip_stats = accumulate_gradients(run, batch, micro_batches(len(batch.response_ids), cfg.micro_batch_size))
    trainable = [p for p in run.policy.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
    skipped = totals["n_active_components"] == 0 or not torch.isfinite(grad_norm)
    if not skipped:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return update_metrics(run, totals, clip_stats, float(grad_norm), skipped)


def accumulate_gradients(
    run: Run, batch: Batch, mini_batches: list[list[int]], backward: Callable[[torch.Tensor], None] | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """Forward/backward of the given micro-batches of `batch` (gradients add up); their loss and stats totals."""
    cfg = run.cfg
    model = run.dist.engine if run.dist is not None else run.policy
    span_tokens = batch.span_masks.sum(dim=(0, 2)).float()  # (n_c,) N_j over the batch
    response_tokens = batch.response_mask.sum()
    totals = dict.fromkeys(("loss", "kl", "entropy", "n_active_components"), 0.0)
    clip_stats = dict.fromkeys(("clip_frac_high", "clip_frac_low", "clip_frac_dual"), 0.0)
    for rows in mini_batches:
        inputs = policy_inputs(batch.groups, rows, batch.response_ids, batch.response_mask, run.pad_id)
        response_ids = batch.response_ids[rows]  # (b, T)
        log_probs, logits = response_log_probs(model, inputs, response_ids, cfg.temperature)  # (b, T)
        old_log_probs = log_probs.detach()  # π_old = π_θ: one update per rollout batch (module docstring)
        device = log_probs.device
        mask = batch.response_mask[rows].to(device)  # (b, T)
        span_masks = batch.span_masks[rows].to(device)  # (b, n_c, T)
        share = span_masks.sum(dim=(0, 2)).float() / span_tokens.clamp(min=1).to(device)  # (n_c,) N_j(mb) / N_j
        advantages = batch.advantages[rows].to(device) * share  # (b, n_c)
        loss, stats = policy_loss(
            log_probs, old_log_probs, advantages, span_masks, cfg.clip_low, cfg.clip_high, cfg.dual_clip
        )
        # policy_loss averages over the components whose loss *value* is non-zero. With ρ ≡ 1 that value is
        # −Σ A / N_j, exactly 0 whenever a group's advantages cancel over equal-length spans, while its gradient is
        # not. The reference never has ρ exactly 1 (π_old comes from a separate pass), so in practice its non-zero
        # components are those with a non-zero advantage on their span: average over those.
        n_active = int(((advantages.unsqueeze(-1) * span_masks) != 0).any(dim=2).any(dim=0).sum())
        loss = loss * max(stats["n_active_components"], 1.0) / max(n_active, 1)
        if run.reference is not None:
            with torch.no_grad():
                ref_log_probs, _ = response_log_probs(run.reference, inputs, response_ids, cfg.temperature)
            kl = (low_var_kl(log_probs, ref_log_probs) * mask).sum() / response_tokens  # token mean over the batch
            loss = loss + cfg.kl_coef * kl
            totals["kl"] += float(kl.detach())
        (backward or torch.Tensor.backward)(loss)
        weight = len(rows) / len(batch.response_ids)
        totals["loss"] += float(loss.detach())
        totals["n_active_components"] += n_active * weight
        for key in clip_stats:
            clip_stats[key] += stats[key] * weight
        with torch.no_grad():
            totals["entropy"] += float((entropy_from_logits(logits) * mask).sum() / response_tokens)
    return totals, clip_stats


def update_metrics(
    run: Run, totals: dict[str, float], clip_stats: dict[str, float], grad_norm: float, skipped: bool
) -> dict[str, float]:
    if run.reference is None:
        del totals["kl"]
    metrics = {f"actor/{key}": value for key, value in {**totals, **clip_stats}.items()}
    metrics.update({"actor/grad_norm": grad_norm, "actor/skipped": float(skipped)})
    return metrics


def distributed_policy_update(run: Run, batch: Batch) -> dict[str, float]:
    """Steps 6-7 on several ranks (rsgrpo_dist module docstring): this rank's micro-batches, DeepSpeed's step.

    Whether any component is active is known from the whole batch before the forward, so every rank skips the same
    steps (an update DeepSpeed starts must be finished by all ranks)."""
    dist = run.dist
    active = bool(((batch.advantages.unsqueeze(-1) * batch.span_masks) != 0).any())
    if not active:
        zero = dict.fromkeys(("loss", "kl", "entropy", "n_active_components"), 0.0)
        clips = dict.fromkeys(("clip_frac_high", "clip_frac_low", "clip_frac_dual"), 0.0)
        return update_metrics(run, zero, clips, 0.0, True)
    size = rsgrpo_dist.micro_batch_size(run.cfg, dist.world)
    mine = dist.my_micro_batches(micro_batches(len(batch.response_ids), size))
    batch = replace(batch, groups=dist.with_inputs(batch.groups, [row for rows in mine for row in rows]))
    run.policy.train()
    grad_norm = [float("nan")]

    def backward(loss: torch.Tensor) -> None:
        dist.backward(loss)
        grad_norm[0] = dist.step()  # DeepSpeed updates at the last micro-batch of the batch

    totals, clip_stats = accumulate_gradients(run, batch, mine, backward)
    return update_metrics(run, dist.sum(totals), dist.sum(clip_stats), grad_norm[0], False)


def train_step(run: Run) -> tuple[dict[str, float], Batch]:
    """One RS-GRPO step (module docstring); returns its metrics and the batch it trained on."""
    groups, rewards, metrics = collect_groups(run)  # 1-3
    batch = spans_and_advantages(groups, rewards, run.cfg.mode, run.tag_ids, run.pad_id, run.locate_spans)  # 4-5
    metrics.update(policy_update(run, batch))  # 6-7
    run.step += 1
    return metrics, batch


# --- validation ---------------------------------------------------------------------------------------------------


def validate(run: Run) -> dict[str, float]:
    """One response per held-out prompt at the validation temperature/top_p: mean rewards and answer accuracy
    (spec §3 Accuracy against the ground truth's answer block; insufficient questions against the fixed golds)."""
    cfg = run.cfg
    if cfg.rollout_seeding == "group":  # validation samples depend on the step only, not on the ranks' streams
        torch.manual_seed(random.Random(f"{run.seed}-rsgrpo-val-{run.step}").getrandbits(63))
    sampling = Sampling(1, cfg.val_temperature, cfg.val_top_p, cfg.max_new_tokens)
    metrics = held_out_metrics(run, sampling, "val")
    if cfg.val_sampled_n:
        metrics.update(validate_sampled(run))
    return metrics


def validate_sampled(run: Run) -> dict[str, float]:
    """`val_sampled_n` responses per held-out prompt at the *rollout* temperature/top_p: the expected reward of the
    distribution RS-GRPO optimises. Near-greedy validation saturates once SFT answers right (the embedded default
    reaches the maximum 7.0), while sampled responses still show what RL sharpens. Every validation starts from the
    same seed (common random numbers: an unchanged policy draws the same responses, so the curve shows the policy's
    change rather than sampling noise), on a forked RNG, so turning it on or off leaves the training rollouts as
    they were."""
    cfg = run.cfg
    sampling = Sampling(cfg.val_sampled_n, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(random.Random(f"{run.seed}-rsgrpo-val-sampled").getrandbits(63))
        return held_out_metrics(run, sampling, "val_sampled")


def answer_accuracies(group: Group) -> list[float]:
    """Each response's answer accuracy against the prompt's gold answer (the fixed golds when insufficient)."""
    prompt = group.prompt
    return [score_prediction(text, [prompt.gold_answer], prompt.is_sufficient).acc for text in group.texts]


def held_out_metrics(run: Run, sampling: Sampling, prefix: str) -> dict[str, float]:
    """Mean of every reward component and the answer accuracy over `sampling.n` responses per held-out prompt."""
    cfg = run.cfg
    rewards, accuracy = [], []
    chunk = max(1, cfg.rollout_batch_size * cfg.n // sampling.n)  # prompts per call: a rollout batch's responses
    for start in range(0, len(run.val_prompts), chunk):
        for group in run.rollout.generate(run.val_prompts[start : start + chunk], sampling):
            rewards.append(group_rewards(group, cfg))
            accuracy.extend(answer_accuracies(group))
    table = torch.cat(rewards)  # (val_size · sampling.n, 7)
    metrics = {f"{prefix}/{key}": float(table[:, c].mean()) for c, key in enumerate(REWARD_KEYS)}
    metrics[f"{prefix}/answer_accuracy"] = float(np.mean(accuracy))
    return metrics


# --- checkpoints --------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as JSON-able lists (no pickles to load back)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [kind, keys.tolist(), position, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step (a checkpoint is renamed into place only when complete)."""
    if not checkpoint_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None


# Keys that only say where and how often to write: changing them keeps a run's checkpoints resumable.
RSGRPO_WRITE_ONLY_KEYS = {
    "out_dir",
    "checkpoint_dir",
    "log_file",
    "val_log_file",
    "val_sampled_log_file",
    "report_dir",
    "save_every",
    "save_total_limit",
    "report_every",
    "report_rollouts",
}


def resumable_checkpoint(cfg: RSGRPOParams, rl_file: Path, seed: int) -> Path | None:
    """The checkpoint to resume from: the latest one, if `cfg.checkpoint_dir` belongs to this configuration (same
    params, seed, start model and prompts; evisrag_core.resume), else None (the folder is emptied)."""
    params = cfg.model_dump(mode="json", exclude=RSGRPO_WRITE_ONLY_KEYS)
    inputs = {"model": Path(cfg.model_dir), "prompts": Path(rl_file)}
    return fingerprinted_checkpoint(Path(cfg.checkpoint_dir), params, seed, inputs, latest_checkpoint)


def save_checkpoint(run: Run) -> Path:
    """Model (safetensors + processor), optimizer, RNG states and data position of the finished step, atomically."""
    checkpoint_dir = Path(run.cfg.checkpoint_dir)
    target = checkpoint_dir / f"step-{run.step:06d}"
    if run.dist is not None:  # optimizer partitions from every rank, the rest from rank 0
        run.dist.save_checkpoint(target, functools.partial(write_checkpoint, run, optimizer=False))
        if not run.dist.is_main:
            return target
    else:
        with atomic_dir(target) as tmp:
            write_checkpoint(run, tmp)
    done = sorted(p for p in checkpoint_dir.iterdir() if _CHECKPOINT.match(p.name))
    for old in done[: -run.cfg.save_total_limit]:
        shutil.rmtree(old)
    log.info("checkpoint %s", target)
    return target


def write_checkpoint(run: Run, folder: Path, optimizer: bool = True) -> None:
    run.policy.save_pretrained(folder / "model", safe_serialization=True)
    run.processor.save_pretrained(folder / "model")  # a checkpoint's model folder loads like any model
    if optimizer:
        torch.save(run.optimizer.state_dict(), folder / "optimizer.pt")
    state = {"step": run.step, "cursor": run.cursor, "rng": rng_state(), "params": run.cfg.model_dump()}
    write_json_atomic(folder / "state.json", state)


def load_checkpoint_state(path: Path) -> dict[str, Any]:
    with (path / "state.json").open(encoding="utf-8") as handle:
        return json.load(handle)


def restore(run: Run, path: Path, state: dict[str, Any]) -> None:
    """Optimizer, RNG and data position of a checkpoint (its weights were loaded with the policy)."""
    if run.dist is not None:
        run.dist.load_checkpoint(path)
    else:
        run.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    run.step, run.cursor = state["step"], state["cursor"]
    set_rng_state(state["rng"])
    changed = sorted(k for k, v in state["params"].items() if run.cfg.model_dump().get(k) != v)
    if changed:
        log.warning("resuming %s with changed rsgrpo params: %s", path, ", ".join(changed))


# --- setup and the loop -------------------------------------------------------------------------------------------


def prompt_encoder(processor: Any, cfg: RSGRPOParams) -> PromptEncoder:
    """The stage's prompt encoding: its template, image pixel bounds and prompt length limit."""
    return PromptEncoder(
        processor, cfg.prompt_template, (cfg.image_min_pixels, cfg.image_max_pixels), cfg.max_prompt_length
    )


def split_prompts(
    rl_file: Path, val_size: int, seed: int, bad: BadRecords | None = None
) -> tuple[list[RLPrompt], list[RLPrompt]]:
    """Training prompts and validation prompts: `rl_val.jsonl` beside `rl_file` when it exists (its first
    val_size rows), otherwise val_size prompts held out of `rl_file` by a seeded draw. Bad records follow `bad`'s
    `on_bad_record` policy (an error, or left out and counted)."""
    prompts = load_rl_prompts(rl_file, bad)
    val_file = rl_file.with_name(RL_VAL_FILE)
    if val_file.is_file():
        return prompts, load_rl_prompts(val_file, bad)[:val_size]
    if val_size >= len(prompts):
        raise ValueError(f"rsgrpo.val_size={val_size} leaves no training prompt of the {len(prompts)} in {rl_file}")
    held_out = set(random.Random(f"{seed}-rsgrpo-val").sample(range(len(prompts)), val_size))
    train = [p for i, p in enumerate(prompts) if i not in held_out]
    return train, [p for i, p in enumerate(prompts) if i in held_out]


def total_steps(cfg: RSGRPOParams, n_train_prompts: int) -> int:
    if cfg.epochs is None:
        return cfg.steps
    return math.ceil(cfg.epochs * n_train_prompts / cfg.rollout_batch_size)


def build_run(
    cfg: RSGRPOParams, rl_file: Path, seed: int, trust_remote_code: bool = False, bad: BadRecords | None = None
) -> Run:
    """Load the policy (from the latest checkpoint when there is one), the optimizer and the prompts."""
    from transformers import set_seed

    from evisrag_core.modeling import load_model_and_processor
    from evisrag_core.sft.train import freeze_vision_tower, use_bf16

    set_seed(seed)
    checkpoint = resumable_checkpoint(cfg, rl_file, seed)
    dtype = torch.bfloat16 if use_bf16(cfg.bf16) else torch.float32
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load = functools.partial(load_model_and_processor, trust_remote_code=trust_remote_code, dtype=dtype, device=device)
    policy, processor = load(checkpoint / "model" if checkpoint else cfg.model_dir)  # checkpoints hold the processor
    if cfg.freeze_vision_tower:
        log.info("vision tower frozen (%d parameters)", freeze_vision_tower(policy))
    if cfg.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    reference = None
    if cfg.kl_coef > 0:
        reference, _ = load(cfg.model_dir)
        reference.requires_grad_(False)
    encoder = prompt_encoder(processor, cfg)
    if cfg.rollout_backend == "vllm":
        max_len = cfg.max_prompt_length + cfg.max_new_tokens
        rollout: TransformersRollout | VllmRollout = VllmRollout(cfg.model_dir, policy, processor, encoder, max_len)
    else:
        rollout = TransformersRollout(
            policy, processor, encoder, cfg.rollout_decoder, reuse_image_features=cfg.freeze_vision_tower
        )
    train, val = split_prompts(rl_file, cfg.val_size, seed, bad)
    run = Run(cfg, seed, policy, processor, optimizer, rollout, train, val, reference)
    run.tag_ids = tag_token_ids(processor.tokenizer)
    if cfg.span_locator != "token_ids":
        run.locate_spans = span_locator(cfg.span_locator, processor.tokenizer)
    if rsgrpo_dist.use_deepspeed(cfg):
        run.dist = rsgrpo_dist.init_distributed(policy, optimizer, cfg, use_bf16(cfg.bf16), encoder)
    if checkpoint:
        restore(run, checkpoint, load_checkpoint_state(checkpoint))
        log.info("resumed from %s (step %d, prompt cursor %d)", checkpoint, run.step, run.cursor)
    return run


def save_final(run: Run) -> Path:
    """Model + processor into out_dir through a staging folder: a killed save never leaves a half model there."""
    out_dir = Path(run.cfg.out_dir)
    with atomic_dir(out_dir) as staging:
        run.policy.save_pretrained(staging, safe_serialization=True)
        run.processor.tokenizer.padding_side = "left"
        run.processor.save_pretrained(staging)
    return out_dir


def train_rsgrpo(
    cfg: RSGRPOParams,
    rl_file: Path,
    seed: int,
    on_step: OnStep = lambda step, metrics: None,
    trust_remote_code: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train from cfg.model_dir (or resume from cfg.checkpoint_dir) on the prompts of `rl_file`, then save the final
    model to cfg.out_dir. `on_step(step, metrics)` gets every step's metrics (validation ones too, when it ran).
    `stop_after` ends the run after that many steps without the final save (to test resuming)."""
    bad = BadRecords(cfg.on_bad_record)
    run = build_run(cfg, rl_file, seed, trust_remote_code, bad)
    steps = total_steps(cfg, len(run.train_prompts))
    resumed_at = run.step
    main = run.dist is None or run.dist.is_main  # on several ranks, rank 0 alone validates, reports and logs
    validating = cfg.val_every > 0 and bool(run.val_prompts) and main
    if validating and run.step == 0:
        on_step(0, validate(run))
    while run.step < steps and (stop_after is None or run.step < stop_after):
        metrics, batch = train_step(run)
        if validating and (run.step % cfg.val_every == 0 or run.step == steps):
            metrics.update(validate(run))
        if main and cfg.report_every and (run.step % cfg.report_every == 0 or run.step == 1):
            samples = report_samples(batch, run.processor.tokenizer, cfg.report_rollouts)
            write_step_report(Path(cfg.report_dir), run.step, samples)
        if main:
            on_step(run.step, metrics)
        if run.step % cfg.save_every == 0 or run.step == steps:
            save_checkpoint(run)
    if stop_after is not None and run.step < steps:
        return {"steps": run.step, "resumed_from_step": resumed_at, "finished": False}
    if main:
        save_final(run)  # ZeRO-2: every rank holds the whole parameters; rank 0 writes them
    if run.dist is not None:
        run.dist.barrier()
    summary = {"steps": run.step, "resumed_from_step": resumed_at, "finished": True, "prompts_drawn": run.cursor}
    return summary | {"skipped_records": bad.count}
