"""One RS-GRPO step, top to bottom, in one process (the algorithm and its symbols: evisrag_core/rsgrpo/__init__.py).

    1. rollouts    rollout_and_score      y_{g,1..n} ~ π_θ(· | x_g) for the next P prompts
    2. rewards     group_rewards          `Rewards`: overall and the six components, by name
    3. filter      collect_groups         keep group g iff filter_low < mean overall < filter_high
    4-5. spans, advantages   spans_and_advantages   span[i, j, t], A[i, j] (by rsgrpo.mode)
    6. loss        accumulate_gradients   policy_loss per micro-batch (+ β·KL), gradients add up (packing.py)
    7. update      LocalUpdate.apply      clip ‖∇L‖, one AdamW step

`run.update`, chosen once in train.build_run, spreads the work over processes: `LocalUpdate` (this process alone)
or `distributed.DeepSpeedUpdate` (torchrun ranks), one interface (`state.UpdateStrategy`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evisrag_core.config import RSGRPOParams
from evisrag_core.data.schema import RLPrompt
from evisrag_core.io import atomic_dir
from evisrag_core.rsgrpo.estimators import DEFAULT_ESTIMATOR, Estimator
from evisrag_core.rsgrpo.objective import entropy_from_logits, filter_groups, kl_penalty, policy_loss, span_share
from evisrag_core.rsgrpo.packing import micro_batches
from evisrag_core.rsgrpo.prompt_stream import next_prompts, rollout_seeds
from evisrag_core.rsgrpo.rewards import score
from evisrag_core.rsgrpo.rollout import Group, Sampling, batch_to, group_ids, pad_responses, policy_inputs
from evisrag_core.rsgrpo.spans import SpanLocator
from evisrag_core.rsgrpo.state import Batch, Rewards, Run, Sample, Scored

OPTIMIZER_FILE = "optimizer.pt"  # a single-process checkpoint's AdamW state
TOTAL_KEYS = ("loss", "kl", "entropy", "n_active_components")  # summed over a step's micro-batches
CLIP_KEYS = ("clip_frac_high", "clip_frac_low", "clip_frac_dual")  # policy_loss's clip fractions, response-weighted


class FilterExhaustedError(RuntimeError):
    """Online filtering kept fewer than rollout_batch_size groups in max_filter_tries rounds."""


# --- 1-3. rollouts, rewards and online filtering ------------------------------------------------------------------


def group_rewards(group: Group, cfg: RSGRPOParams) -> Rewards:
    """R of a group's n responses: `rewards.score` of each against the prompt's tagged ground truth."""
    limits = {"max_length": cfg.max_length, "buffer_length": cfg.buffer_length, "min_length": cfg.min_length}
    texts_and_ids = zip(group.texts, group.responses, strict=True)
    return Rewards.from_scores(
        [score(text, group.prompt.ground_truth, len(ids), **limits) for text, ids in texts_and_ids]
    )


def rollout_and_score(run: Run, sampling: Sampling) -> Scored:
    """Steps 1-2 for the next rollout_batch_size prompts (`run.update` says which of them this process samples)."""
    first = run.cursor
    prompts = next_prompts(run, run.cfg.rollout_batch_size)
    seeds = rollout_seeds(run.seed, first, len(prompts)) if run.cfg.rollout_seeding == "group" else None

    def sample(share: Sequence[RLPrompt], share_seeds: Sequence[int] | None) -> Scored:
        groups = run.rollout.generate(share, sampling, share_seeds)
        return groups, [group_rewards(group, run.cfg) for group in groups]

    return run.update.rollout_and_score(prompts, seeds, sample)


def collect_groups(run: Run) -> tuple[list[Group], Rewards, dict[str, float], list[tuple[bool, bool]]]:
    """Steps 1-3: sample, score and filter until rollout_batch_size groups are kept. Returns the kept groups, their
    rewards, rollout metrics (reward means over *every* sampled response of the step, kept or not, the fraction of
    groups filtered out and the number of rounds) and, per kept group, whether it was the first / last group of its
    round: a round's rewards are one reward call of the reference (`spans.released_span_masks`)."""
    cfg = run.cfg
    sampling = Sampling(cfg.n, cfg.temperature, cfg.top_p, cfg.max_new_tokens)
    kept: list[Group] = []
    kept_rewards: list[Rewards] = []
    edges: list[tuple[bool, bool]] = []
    sampled: list[Rewards] = []
    lengths: list[int] = []
    rounds = 0
    while len(kept) < cfg.rollout_batch_size:
        if rounds == cfg.max_filter_tries:
            raise FilterExhaustedError(
                f"step {run.step + 1}: online filtering kept {len(kept)} of {cfg.rollout_batch_size} groups after "
                f"{rounds} rounds; every other group's mean overall reward was ≤ {cfg.filter_low} or ≥ "
                f"{cfg.filter_high}: the policy fails (or solves) almost every prompt. Check the start model "
                "(rsgrpo.model_dir), widen rsgrpo.filter_low/filter_high, or set rsgrpo.online_filtering: false."
            )
        rounds += 1
        groups, rewards = rollout_and_score(run, sampling)  # P groups
        overall = torch.cat([r.overall for r in rewards])  # (P·n,)
        keep = filter_groups(overall, group_ids(groups), cfg.filter_low, cfg.filter_high)  # (P·n,)
        group_kept = keep[:: cfg.n]  # (P,) a group is kept or dropped whole
        for k, (group, reward, kept_group) in enumerate(zip(groups, rewards, group_kept, strict=True)):
            if kept_group or not cfg.online_filtering:
                kept.append(group)
                kept_rewards.append(reward)
                edges.append((k == 0, k == len(groups) - 1))
        sampled.extend(rewards)
        lengths.extend(len(ids) for group in groups for ids in group.responses)
    metrics = Rewards.cat(sampled).means("reward/")
    metrics["filter/dropped_fraction"] = 1.0 - len(kept) / len(sampled)
    metrics["filter/rounds"] = float(rounds)
    metrics["response_length/mean"] = float(np.mean(lengths))
    size = cfg.rollout_batch_size
    return kept[:size], Rewards.cat(kept_rewards[:size]), metrics, edges[:size]


# --- 4-5. spans and advantages ------------------------------------------------------------------------------------


def spans_and_advantages(
    groups: list[Group],
    rewards: Rewards,
    mode: str,
    tag_ids: dict[str, list[int]],
    pad_id: int,
    locate_spans: SpanLocator | None = None,
    estimator: Estimator = DEFAULT_ESTIMATOR,
) -> Batch:
    """Steps 4-5 by `mode` (`estimators.Estimator.spans_and_advantages`): rsgrpo, each component's token span and
    group-normalised advantage; gdpo, one whitened weighted sum on the whole response; grpo, overall's advantage on
    it."""
    response_ids, response_mask = pad_responses(groups, pad_id)  # (B, T)
    locate = estimator.locator(tag_ids, groups, locate_spans)
    components, span_masks, advantages = estimator.spans_and_advantages(
        mode, rewards, group_ids(groups), locate, response_ids, response_mask
    )  # n_c names, (B, n_c, T), (B, n_c)
    return Batch(groups, rewards, components, response_ids, response_mask, span_masks, advantages)


# --- 6. the loss, micro-batch by micro-batch ----------------------------------------------------------------------


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


def accumulate_gradients(
    run: Run, batch: Batch, rows_of: list[list[int]], model: Any, backward: Callable[[torch.Tensor], None]
) -> tuple[dict[str, float], dict[str, float]]:
    """Forward/backward of the micro-batches `rows_of` through `model` (gradients add up); loss and stats totals."""
    cfg = run.cfg
    clip = (cfg.clip_low, cfg.clip_high, cfg.dual_clip)
    response_tokens = batch.response_mask.sum()
    totals = dict.fromkeys(TOTAL_KEYS, 0.0)
    clip_stats = dict.fromkeys(CLIP_KEYS, 0.0)
    for rows in rows_of:
        inputs = policy_inputs(batch.groups, rows, batch.response_ids, batch.response_mask, run.pad_id)
        response_ids = batch.response_ids[rows]  # (b, T)
        log_probs, logits = response_log_probs(model, inputs, response_ids, cfg.temperature)  # (b, T)
        old_log_probs = log_probs.detach()  # π_old = π_θ: one update per rollout batch (package docstring)
        device = log_probs.device
        mask = batch.response_mask[rows].to(device)  # (b, T)
        span_masks = batch.span_masks[rows].to(device)  # (b, n_c, T)
        advantages = batch.advantages[rows].to(device) * span_share(batch.span_masks, rows).to(device)  # (b, n_c)
        loss, stats = policy_loss(log_probs, old_log_probs, advantages, span_masks, *clip)  # L (owns its normalisation)
        if run.reference is not None:
            with torch.no_grad():
                ref_log_probs, _ = response_log_probs(run.reference, inputs, response_ids, cfg.temperature)
            kl = kl_penalty(log_probs, ref_log_probs, mask, response_tokens)
            loss = loss + cfg.kl_coef * kl
            totals["kl"] += float(kl.detach())
        backward(loss)
        weight = len(rows) / len(batch.response_ids)
        totals["loss"] += float(loss.detach())
        totals["n_active_components"] += stats["n_active_components"] * weight
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


# --- 7. the update ------------------------------------------------------------------------------------------------


class LocalUpdate:
    """This process alone samples every prompt, runs every micro-batch and writes everything."""

    is_main = True

    def rollout_and_score(self, prompts: Sequence[RLPrompt], seeds: Sequence[int] | None, sample: Sample) -> Scored:
        return sample(prompts, seeds)

    def apply(self, run: Run, batch: Batch) -> dict[str, float]:
        """Step 7: the micro-batches' gradients add up, ‖∇L‖ is clipped to max_grad_norm, one AdamW step. A step
        with no active component (or a non-finite gradient norm) is skipped, as the reference's optimizer does."""
        run.policy.train()
        run.optimizer.zero_grad(set_to_none=True)
        rows = list(range(len(batch.response_ids)))
        budget = run.cfg.micro_batch_tokens
        rows_of = micro_batches(rows, run.cfg.micro_batch_size, budget, batch.row_tokens(rows) if budget else ())
        totals, clip_stats = accumulate_gradients(run, batch, rows_of, run.policy, torch.Tensor.backward)
        trainable = [p for p in run.policy.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, run.cfg.max_grad_norm)
        skipped = totals["n_active_components"] == 0 or not torch.isfinite(grad_norm)
        if not skipped:
            run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        return update_metrics(run, totals, clip_stats, float(grad_norm), skipped)

    def save_checkpoint(self, target: Path, write: Callable[[Path, bool], None]) -> bool:
        with atomic_dir(target) as staging:
            write(staging, True)
        return True

    def load_checkpoint(self, run: Run, path: Path) -> None:
        run.optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))

    def barrier(self) -> None:
        """One process: nothing to wait for."""


def policy_update(run: Run, batch: Batch) -> dict[str, float]:
    """Steps 6-7 by `run.update`'s strategy."""
    return run.update.apply(run, batch)


def train_step(run: Run) -> tuple[dict[str, float], Batch]:
    """One RS-GRPO step; returns its metrics and the batch it trained on."""
    groups, rewards, metrics, edges = collect_groups(run)  # 1-3
    estimator = Estimator.from_params(run.cfg, edges)
    batch = spans_and_advantages(groups, rewards, run.cfg.mode, run.tag_ids, run.pad_id, run.locate_spans, estimator)
    metrics.update(policy_update(run, batch))  # 6-7
    run.step += 1
    return metrics, batch
