"""The shared-prefix sampler of the RS-GRPO rollouts (rsgrpo/fast_decode.py): the distribution `generate` samples
from, `generate`'s greedy tokens, and logits that are the full forward's at every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evisrag_core.rsgrpo.fast_decode import LeanDecoder, next_tokens, sample_shared_prefix, top_p_filter
from evisrag_core.rsgrpo.rollout import (
    PromptEncoder,
    Sampling,
    TransformersRollout,
    collate_prompts,
    load_rl_prompts,
    pad_responses,
    policy_inputs,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def rl_file(tiny_dataset: Path) -> Path:
    return tiny_dataset / "train" / "rl.jsonl"


@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.7, 0.3, 0.01])
@pytest.mark.parametrize("seed", [0, 1])
def test_top_p_filter_is_transformers_top_p_warper(top_p: float, seed: int):
    from transformers.generation.logits_process import TopPLogitsWarper

    logits = torch.randn((5, 50), generator=torch.Generator().manual_seed(seed)) * 3
    expected = logits if top_p >= 1.0 else TopPLogitsWarper(top_p)(None, logits)
    assert torch.equal(top_p_filter(logits, top_p), expected)


@pytest.mark.parametrize(
    ("logits", "temperature", "top_p", "suppressed", "expected"),
    [
        ([[0.0, 5.0, 1.0]], 0.0, 1.0, [], [1]),  # greedy
        ([[0.0, 5.0, 1.0]], 0.0, 1.0, [1], [2]),  # the best token suppressed
        ([[0.0, 50.0, 1.0]], 1.0, 1.0, [], [1]),  # a near-certain token
        ([[9.0, 8.9, -9.0]], 1.0, 0.01, [], [0]),  # top-p keeps only the most probable token
        ([[3.0, 3.0, 3.0]], 1.0, 1.0, [0, 2], [1]),  # everything else suppressed
    ],
)
def test_next_tokens_table(logits, temperature, top_p, suppressed, expected):
    torch.manual_seed(0)
    tokens = next_tokens(torch.tensor(logits), temperature, top_p, torch.tensor(suppressed, dtype=torch.long))
    assert tokens.tolist() == expected


def test_sampling_draws_each_token_with_its_probability():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40_000, -1).contiguous()
    torch.manual_seed(0)
    counts = torch.bincount(next_tokens(logits, 1.0, 1.0, torch.tensor([], dtype=torch.long)), minlength=4)
    frequencies = counts.float() / counts.sum()
    assert torch.allclose(frequencies, probs, atol=0.01), frequencies  # 4σ ≈ 0.01 at 40k draws


def test_temperature_flattens_the_distribution():
    logits = torch.tensor([[2.0, 0.0]]).expand(20_000, -1).contiguous()
    torch.manual_seed(0)
    hot = next_tokens(logits, 4.0, 1.0, torch.tensor([], dtype=torch.long)).float().mean()
    expected = torch.softmax(torch.tensor([0.5, 0.0]), dim=0)[1]  # P(token 1) at temperature 4
    assert abs(float(hot) - float(expected)) < 0.015


def _encoded_batch(tiny_model, rl_file: Path, count: int):
    model, processor = tiny_model
    rollout = TransformersRollout(model, processor, PromptEncoder(processor, "model_card", (3136, 12544), 15000))
    prompts = load_rl_prompts(rl_file)[:count]
    return rollout, prompts, collate_prompts(rollout.encode(prompts), rollout.pad_id)


@pytest.mark.parametrize("lean", [True, False])
def test_greedy_shared_prefix_gives_generates_tokens(tiny_model, rl_file: Path, monkeypatch, lean: bool):
    """Two prompts of different lengths (left padding), n = 2: both copies of a prompt decode generate's tokens,
    through the lean decoder and through the model's own forward and cache."""
    model, _ = tiny_model
    assert LeanDecoder.supported(model)
    if not lean:
        monkeypatch.setattr(LeanDecoder, "supported", staticmethod(lambda model: False))
    rollout, _, batch = _encoded_batch(tiny_model, rl_file, 2)
    sampling = Sampling(n=2, temperature=0.0, top_p=1.0, max_new_tokens=24)
    ours = sample_shared_prefix(model, batch, sampling, rollout.suppressed, rollout.end_ids, rollout.pad_id)
    with torch.no_grad():
        reference = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=24,
            suppress_tokens=rollout.suppressed,
            eos_token_id=sorted(rollout.end_ids),
            pad_token_id=rollout.pad_id,
        )[:, batch["input_ids"].shape[1] :]
    assert torch.equal(ours, reference.repeat_interleave(2, dim=0))


def test_sampled_responses_are_scored_by_the_logits_they_were_drawn_from(tiny_model, rl_file: Path, monkeypatch):
    """Every step's logits of the lean decoder equal the full forward over prompt ⧺ response at that position (what
    the update's log-probs read), for rows that ended early too."""
    model, processor = tiny_model
    rollout, prompts, _ = _encoded_batch(tiny_model, rl_file, 2)
    seen: list[torch.Tensor] = []
    original = LeanDecoder.step

    def recording_step(self, tokens, positions, buffers):
        logits = original(self, tokens, positions, buffers)
        seen.append(logits)
        return logits

    monkeypatch.setattr(LeanDecoder, "step", recording_step)
    # the random model rarely emits end-of-turn: count one id in eight as one, so rows leave the batch early
    rollout.end_ids = rollout.end_ids | set(range(0, len(processor.tokenizer), 8))
    torch.manual_seed(5)
    groups = rollout.generate(prompts, Sampling(n=3, temperature=1.0, top_p=1.0, max_new_tokens=12))
    lengths = {len(ids) for group in groups for ids in group.responses}
    assert len(lengths) > 1, lengths  # some rows ended before others
    assert rollout.decoder == "shared_prefix" and seen
    response_ids, response_mask = pad_responses(groups, rollout.pad_id)
    inputs = policy_inputs(groups, list(range(6)), response_ids, response_mask, rollout.pad_id)
    with torch.no_grad():
        full = model(**inputs, use_cache=False).logits.float()  # (B, S + T, V)
    width = response_ids.shape[1]
    step_logits = full[:, -width - 1 : -1]  # (B, T, V): position t predicts response token t
    # decoder call k feeds response token k of the rows still running and predicts their token k + 1
    assert len(seen) == width - 1
    for k, logits in enumerate(seen):
        running = response_mask[:, k + 1].nonzero().squeeze(1)
        assert logits.shape[0] == len(running)
        assert torch.allclose(logits, step_logits[running, k + 1], atol=1e-4)


def test_reused_image_features_give_the_log_probs_of_the_pixels(tiny_model, rl_file: Path):
    """With a frozen vision tower the rollout keeps each prompt's vision output and the update's forward takes it
    instead of pixel_values: same log-probs as running the tower again."""
    from dataclasses import replace

    from evisrag_core.rsgrpo.step import response_log_probs

    model, processor = tiny_model
    encoder = PromptEncoder(processor, "model_card", (3136, 12544), 15000)
    rollout = TransformersRollout(model, processor, encoder, reuse_image_features=True)
    torch.manual_seed(2)
    groups = rollout.generate(load_rl_prompts(rl_file)[:2], Sampling(n=2, temperature=1.0, top_p=1.0, max_new_tokens=8))
    assert all(g.inputs.image_features is not None for g in groups)
    assert [len(g.inputs.image_features) for g in groups] == [len(g.inputs.image_grid_thw) for g in groups]
    without = [replace(g, inputs=replace(g.inputs, image_features=None)) for g in groups]
    response_ids, response_mask = pad_responses(groups, rollout.pad_id)
    rows = list(range(len(response_ids)))
    reused = policy_inputs(groups, rows, response_ids, response_mask, rollout.pad_id)
    recomputed = policy_inputs(without, rows, response_ids, response_mask, rollout.pad_id)
    assert "mm_encoder_outputs" in reused and "pixel_values" not in reused
    assert "pixel_values" in recomputed and "mm_encoder_outputs" not in recomputed
    with torch.no_grad():
        ours, _ = response_log_probs(model, reused, response_ids, temperature=1.0)
        theirs, _ = response_log_probs(model, recomputed, response_ids, temperature=1.0)
    assert torch.allclose(ours, theirs, atol=1e-5)
