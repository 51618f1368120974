"""RS-GRPO validation on the held-out prompts: mean rewards and answer accuracy (spec §3), near-greedy and sampled."""

from __future__ import annotations

import random

import numpy as np
import torch

from evisrag_core.metrics import score_prediction
from evisrag_core.rsgrpo.rollout import Group, Sampling
from evisrag_core.rsgrpo.state import Rewards, Run
from evisrag_core.rsgrpo.step import group_rewards


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
    """Mean of every reward and the answer accuracy over `sampling.n` responses per held-out prompt."""
    cfg = run.cfg
    rewards, accuracy = [], []
    chunk = max(1, cfg.rollout_batch_size * cfg.n // sampling.n)  # prompts per call: a rollout batch's responses
    for start in range(0, len(run.val_prompts), chunk):
        for group in run.rollout.generate(run.val_prompts[start : start + chunk], sampling):
            rewards.append(group_rewards(group, cfg))
            accuracy.extend(answer_accuracies(group))
    metrics = Rewards.cat(rewards).means(f"{prefix}/")
    metrics[f"{prefix}/answer_accuracy"] = float(np.mean(accuracy))
    return metrics
