"""RS-GRPO loop on the tiny model: rollouts, one real update, plain GRPO, online filtering, resume, report, params.

The tiny model is random, so every response gets the same real reward and no advantage survives. Where a test
needs rewards that differ, it replaces the reward *table* (`rsgrpo.step.score`) with a deterministic function of
the real generated text and the prompt; the model, generation and the update are always the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from evisrag_core.config import PAPER_RSGRPO, ParamsError, RSGRPOParams, parse_params
from evisrag_core.data.schema import RL_FILE
from evisrag_core.resume import FINGERPRINT_FILE
from evisrag_core.rsgrpo import step as rsgrpo_step
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS, score
from evisrag_core.rsgrpo.state import REWARD_KEYS, Rewards
from evisrag_core.rsgrpo.train import build_run

REPO_ROOT = Path(__file__).resolve().parents[2]


def text_reward(response: str, ground_truth: str, response_length: int, **limits: int) -> dict[str, float]:
    """A stub reward table: components from a checksum of the generated text, so rollouts of a group differ."""
    bits = zlib.crc32(response.encode("utf-8"))
    components = {name: float((bits >> (3 * j)) % 3) for j, name in enumerate(REWARD_COMPONENTS)}
    return {"overall": sum(components.values()), **components}


def config(tmp_path: Path, model_dir: Path, **overrides) -> RSGRPOParams:
    values = {
        "model_dir": str(model_dir),
        "out_dir": str(tmp_path / "model"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "report_dir": str(tmp_path / "report"),
        "log_file": str(tmp_path / "log.json"),
        "steps": 1,
        "rollout_batch_size": 2,
        "n": 4,
        "max_new_tokens": 12,
        "learning_rate": 1e-2,
        "val_every": 0,
        "val_size": 1,
        "report_every": 0,
        "filter_low": -100.0,  # keep every group unless a test says otherwise
        "filter_high": 100.0,
        **overrides,
    }
    return RSGRPOParams(**values)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model's ops are too small to split: one thread is faster, by far on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def rl_file(tiny_dataset: Path) -> Path:
    return tiny_dataset / "train" / RL_FILE


@pytest.fixture
def stub_rewards(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(rsgrpo_step, "score", text_reward)


# --- rollouts -----------------------------------------------------------------------------------------------------


def test_cut_at_end_of_turn_keeps_the_end_token_and_pads_right():
    from evisrag_core.rsgrpo.rollout import Group, cut_at_end_of_turn, pad_responses

    end = {9}
    assert cut_at_end_of_turn(torch.tensor([4, 5, 9, 0, 0]), end).tolist() == [4, 5, 9]
    assert cut_at_end_of_turn(torch.tensor([4, 5, 6]), end).tolist() == [4, 5, 6]  # truncated: every token counts
    group = Group(None, None, (torch.tensor([4, 5, 9]), torch.tensor([7, 9])), ("a", "b"))  # type: ignore[arg-type]
    response_ids, response_mask = pad_responses([group], pad_id=0)
    assert response_ids.tolist() == [[4, 5, 9], [7, 9, 0]]
    assert response_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_rollouts_are_n_per_prompt_and_the_update_scores_what_was_sampled(tiny_model, rl_file: Path):
    """The rebuilt `prompt ⧺ response` input gives the log-probs `generate` sampled from, token for token (the
    shared-prefix decoder's counterpart is in tests/integration/test_decoding.py)."""
    from evisrag_core.rsgrpo.rollout import (
        PromptEncoder,
        Sampling,
        TransformersRollout,
        collate_prompts,
        load_rl_prompts,
        pad_responses,
        policy_inputs,
    )
    from evisrag_core.rsgrpo.step import response_log_probs

    model, processor = tiny_model
    prompts = load_rl_prompts(rl_file)[:2]
    encoder = PromptEncoder(processor, "model_card", (3136, 12544), 15000)
    rollout = TransformersRollout(model, processor, encoder, decoder="generate")  # same seed → same samples
    torch.manual_seed(3)
    groups = rollout.generate(prompts, Sampling(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10))
    assert [g.prompt.id for g in groups] == [p.id for p in prompts]
    assert all(len(g.responses) == 3 and len(g.texts) == 3 for g in groups)
    tokenizer = processor.tokenizer
    for group in groups:
        for ids, text in zip(group.responses, group.texts, strict=True):
            assert 1 <= len(ids) <= 10
            assert text == tokenizer.decode(ids, skip_special_tokens=True)
            assert tokenizer.convert_tokens_to_ids("<|image_pad|>") not in ids.tolist()

    # A prompt reaches the model exactly as the processor encodes it for prediction (every key, e.g. the token types
    # multimodal RoPE needs), and a batch is left-padded.
    from qwen_vl_utils import process_vision_info

    messages = rollout.encode.messages(prompts[0])
    reference = processor(
        text=[rollout.encode.text(prompts[0])], images=process_vision_info(messages)[0], return_tensors="pt"
    )
    alone = collate_prompts(rollout.encode(prompts[:1]), rollout.pad_id)
    assert alone.keys() == reference.keys()
    assert all(torch.equal(alone[k], reference[k]) for k in reference)

    # Same sampling again, now with the raw logits generate used at every position.
    torch.manual_seed(3)
    batch = collate_prompts(rollout.encode(prompts), rollout.pad_id)
    out = model.generate(
        **batch,
        do_sample=True,
        num_return_sequences=3,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        repetition_penalty=1.0,
        suppress_tokens=rollout.suppressed,
        max_new_tokens=10,
        eos_token_id=sorted(rollout.end_ids),
        pad_token_id=rollout.pad_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    response_ids, response_mask = pad_responses(groups, rollout.pad_id)
    width = response_ids.shape[1]
    assert torch.equal(
        out.sequences[:, batch["input_ids"].shape[1] :][:, :width] * response_mask, response_ids * response_mask
    )
    sampled = torch.log_softmax(torch.stack(out.logits, dim=1)[:, :width].float(), dim=-1)
    expected = sampled.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)  # (B, T)
    with torch.no_grad():
        inputs = policy_inputs(groups, list(range(6)), response_ids, response_mask, rollout.pad_id)
        log_probs, _ = response_log_probs(model, inputs, response_ids, temperature=1.0)
    valid = response_mask.bool()
    assert torch.allclose(log_probs[valid], expected[valid], atol=1e-4)


# --- one step -----------------------------------------------------------------------------------------------------


def test_one_step_updates_the_language_model_and_not_the_frozen_vision_tower(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, stub_rewards
):
    from evisrag_core.rsgrpo.step import train_step

    run = build_run(config(tmp_path, tiny_model_dir), rl_file, seed=0)
    before = {name: p.detach().clone() for name, p in run.policy.named_parameters()}
    metrics, batch = train_step(run)

    assert batch.rewards.overall.shape == (8,) and batch.rewards.components.shape == (8, len(REWARD_COMPONENTS))
    assert torch.allclose(batch.rewards.components.sum(dim=1), batch.rewards.overall)
    assert batch.span_masks.shape == (8, len(REWARD_COMPONENTS), batch.response_ids.shape[1])
    assert metrics["actor/skipped"] == 0.0 and metrics["actor/grad_norm"] > 0
    assert metrics["actor/n_active_components"] > 0
    for key in (*(f"reward/{k}" for k in REWARD_KEYS), "filter/dropped_fraction", "response_length/mean"):
        assert key in metrics
    assert metrics["actor/clip_frac_high"] == 0.0  # one update per batch: ratio 1, nothing to clip
    changed = {name for name, p in run.policy.named_parameters() if not torch.equal(p, before[name])}
    vision = {name for name, _ in run.policy.named_parameters() if ".visual." in f".{name}"}
    assert vision and not changed & vision, sorted(changed & vision)[:5]
    assert "lm_head.weight" in changed or any("language_model" in name for name in changed)
    assert run.step == 1 and run.cursor == 2


def test_a_batch_without_advantage_signal_is_skipped(tiny_model_dir: Path, rl_file: Path, tmp_path: Path):
    """Real rewards of a random model are all equal: no component is active and the weights must not move."""
    from evisrag_core.rsgrpo.step import train_step

    run = build_run(config(tmp_path, tiny_model_dir), rl_file, seed=0)
    before = [p.detach().clone() for p in run.policy.parameters()]
    metrics, batch = train_step(run)
    assert torch.equal(batch.advantages, torch.zeros_like(batch.advantages))
    assert metrics["actor/skipped"] == 1.0
    assert all(torch.equal(p, b) for p, b in zip(run.policy.parameters(), before, strict=True))


def test_sampled_validation_scores_n_responses_per_prompt_and_leaves_training_rollouts_unchanged(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, stub_rewards
):
    """val_sampled/* averages val_sampled_n responses per held-out prompt at the rollout temperature; it draws
    from a forked RNG, so the training step after it samples what it would have sampled without it."""
    from evisrag_core.rsgrpo import validate as rsgrpo_validate
    from evisrag_core.rsgrpo.step import train_step
    from evisrag_core.rsgrpo.validate import validate

    def validate_then_step(val_sampled_n: int) -> tuple[dict[str, float], list[list[str]]]:
        folder = tmp_path / f"sampled-{val_sampled_n}"
        cfg = config(folder, tiny_model_dir, val_size=2, max_new_tokens=6, val_sampled_n=val_sampled_n)
        run = build_run(cfg, rl_file, seed=0)
        torch.manual_seed(11)
        metrics = validate(run)
        _, batch = train_step(run)
        return metrics, [group.texts for group in batch.groups]

    scored: list[int] = []
    real_group_rewards = rsgrpo_step.group_rewards
    counting = lambda group, cfg: scored.append(len(group.texts)) or real_group_rewards(group, cfg)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rsgrpo_step, "group_rewards", counting)
        patch.setattr(rsgrpo_validate, "group_rewards", counting)
        with_sampled, texts_with = validate_then_step(val_sampled_n=3)
    without, texts_without = validate_then_step(val_sampled_n=0)

    assert scored[:4] == [1, 1, 3, 3]  # 2 held-out prompts near-greedy, then 3 samples each, then training
    assert texts_with == texts_without
    assert {k: v for k, v in with_sampled.items() if k.startswith("val/")} == without
    sampled = {k: v for k, v in with_sampled.items() if k.startswith("val_sampled/")}
    assert set(sampled) == {f"val_sampled/{key}" for key in REWARD_KEYS} | {"val_sampled/answer_accuracy"}
    assert 0.0 <= sampled["val_sampled/answer_accuracy"] <= 1.0


def distinct_reward(response: str, ground_truth: str, response_length: int, **limits: int) -> dict[str, float]:
    """A stub table whose every component differs between any two texts: all components active in any rows."""
    components = {name: zlib.crc32(f"{name}{response}".encode()) % 1000 / 1000 for name in REWARD_COMPONENTS}
    return {"overall": sum(components.values()), **components}


def test_micro_batches_add_up_to_the_whole_batch_gradient(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With every component active in every micro-batch, the reference's per-micro-batch rescaling gives the
    gradient of the whole-batch loss: one SGD step (lr 1, no clipping) lands on the same weights."""
    monkeypatch.setattr(rsgrpo_step, "score", distinct_reward)
    weights = {}
    batch = None
    for size in (0, 4, 1):
        cfg = config(tmp_path / str(size), tiny_model_dir, micro_batch_size=size, max_grad_norm=1e9)
        run = build_run(cfg, rl_file, seed=0)
        run.optimizer = torch.optim.SGD([p for p in run.policy.parameters() if p.requires_grad], lr=1.0)
        if batch is None:
            groups, rewards, _, _ = rsgrpo_step.collect_groups(run)
            batch = rsgrpo_step.spans_and_advantages(groups, rewards, "rsgrpo", run.tag_ids, run.pad_id)
        metrics = rsgrpo_step.policy_update(run, batch)
        assert metrics["actor/n_active_components"] == len(REWARD_COMPONENTS)
        weights[size] = {name: p.detach().clone() for name, p in run.policy.named_parameters()}
    base = dict(build_run(config(tmp_path / "base", tiny_model_dir), rl_file, 0).policy.named_parameters())
    for size in (4, 1):
        for name, value in weights[0].items():
            assert torch.allclose(weights[size][name], value, atol=1e-6, rtol=1e-4), (size, name)
    assert any(not torch.equal(weights[0][name], base[name]) for name in base)


def test_token_budget_micro_batches_add_up_to_the_whole_batch_gradient(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """rsgrpo.micro_batch_tokens: a budget holding the whole batch is the whole-batch update bit for bit; a budget
    that packs several responses into each of several micro-batches gives the same gradient (every component active
    in every micro-batch), as fixed micro-batches do."""
    from evisrag_core.rsgrpo.packing import micro_batches

    monkeypatch.setattr(rsgrpo_step, "score", distinct_reward)
    base = config(tmp_path / "collect", tiny_model_dir)
    run = build_run(base, rl_file, seed=0)
    groups, rewards, _, _ = rsgrpo_step.collect_groups(run)
    batch = rsgrpo_step.spans_and_advantages(groups, rewards, "rsgrpo", run.tag_ids, run.pad_id)
    rows = list(range(len(batch.response_ids)))
    lengths = batch.row_tokens(rows)
    several = max(max(lengths), -(-sum(lengths) // 3))
    packed = micro_batches(rows, 0, several, lengths)
    assert len(packed) == 3 and all(len(mb) >= 2 for mb in packed)  # several responses per micro-batch
    weights = {}
    for name, budget in (("whole", 0), ("one", sum(lengths)), ("several", several)):
        cfg = config(tmp_path / name, tiny_model_dir, micro_batch_tokens=budget, max_grad_norm=1e9)
        run = build_run(cfg, rl_file, seed=0)
        run.optimizer = torch.optim.SGD([p for p in run.policy.parameters() if p.requires_grad], lr=1.0)
        metrics = rsgrpo_step.policy_update(run, batch)
        assert metrics["actor/n_active_components"] == len(REWARD_COMPONENTS)
        weights[name] = {key: p.detach().clone() for key, p in run.policy.named_parameters()}
    assert all(torch.equal(weights["one"][key], value) for key, value in weights["whole"].items())
    for key, value in weights["whole"].items():
        assert torch.allclose(weights["several"][key], value, atol=1e-6, rtol=1e-4), key
    start = dict(build_run(config(tmp_path / "start", tiny_model_dir), rl_file, 0).policy.named_parameters())
    assert any(not torch.equal(weights["several"][key], start[key]) for key in start)


@pytest.mark.parametrize(
    "settings",
    [{"mode": "gdpo"}, {"span_masks": "released"}, {"micro_batch_tokens": 4096}],
    ids=["gdpo", "released", "tokens"],
)
def test_each_estimator_and_packing_trains(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, stub_rewards, settings: dict
):
    from evisrag_core.rsgrpo.train import train_rsgrpo

    steps: list[dict[str, float]] = []
    cfg = config(tmp_path, tiny_model_dir, steps=2, **settings)
    summary = train_rsgrpo(cfg, rl_file, seed=0, on_step=lambda s, m: steps.append(m))
    assert summary["finished"] and len(steps) == 2
    assert not all(m["actor/skipped"] for m in steps)
    trained, start = _weights(tmp_path / "model"), _weights(tiny_model_dir)
    assert any(not torch.equal(trained[k], start[k]) for k in start)


def test_kl_to_the_start_model_is_zero_until_the_policy_moves(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, stub_rewards
):
    from evisrag_core.rsgrpo.step import train_step

    run = build_run(config(tmp_path, tiny_model_dir, kl_coef=0.01), rl_file, seed=0)
    assert run.reference is not None and not any(p.requires_grad for p in run.reference.parameters())
    first, _ = train_step(run)
    second, _ = train_step(run)
    assert first["actor/kl"] == 0.0  # π_θ = π_ref before the first update: k3 = 0 exactly
    assert second["actor/kl"] > 0.0
    without = build_run(config(tmp_path / "off", tiny_model_dir), rl_file, seed=0)
    assert without.reference is None and "actor/kl" not in train_step(without)[0]


def test_vllm_rollouts_without_vllm_fail_with_a_clear_message(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from evisrag_core.vllm_engine.client import VllmUnavailable

    monkeypatch.setenv("EVISRAG_VLLM_PYTHON", str(tmp_path / "no-venv" / "bin" / "python"))
    with pytest.raises(VllmUnavailable, match=r"run `make vllm-env`"):
        build_run(config(tmp_path, tiny_model_dir, rollout_backend="vllm"), rl_file, seed=0)


def _tagged_group(processor, rl_file: Path):
    """A group of two real tagged responses (ids from the tokenizer, end-of-turn appended) to one prompt."""
    from evisrag_core.rsgrpo.rollout import Group, PromptEncoder, load_rl_prompts

    prompt = load_rl_prompts(rl_file)[0]
    good = prompt.ground_truth.replace("<evidence>", "<observe>three images</observe>\n<evidence>")
    good = good.replace("</evidence>\n", "</evidence>\n<think>I compared the colours.</think>\n")
    bad = "<observe>I see [1]</observe> <answer>blue</answer>"
    tokenizer = processor.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    responses = tuple(torch.tensor([*tokenizer.encode(t, add_special_tokens=False), end]) for t in (good, bad))
    inputs = PromptEncoder(processor, "model_card", (3136, 12544), 15000)([prompt])[0]
    group = Group(prompt, inputs, responses, (good, bad))
    rewards = Rewards.from_scores(
        [score(t, prompt.ground_truth, len(ids)) for t, ids in zip(group.texts, responses, strict=True)]
    )
    return group, rewards


def test_plain_grpo_has_one_component_over_the_whole_response(tiny_model, rl_file: Path):
    from evisrag_core.rsgrpo.objective import group_advantages
    from evisrag_core.rsgrpo.spans import tag_token_ids
    from evisrag_core.rsgrpo.step import spans_and_advantages

    _, processor = tiny_model
    group, rewards = _tagged_group(processor, rl_file)
    tag_ids, pad = tag_token_ids(processor.tokenizer), processor.tokenizer.pad_token_id

    grpo = spans_and_advantages([group], rewards, "grpo", tag_ids, pad)
    assert grpo.components == ("overall",)
    assert grpo.span_masks.shape[1] == 1
    assert torch.equal(grpo.span_masks[:, 0], grpo.response_mask.bool())
    assert torch.equal(grpo.advantages, group_advantages(rewards.overall.unsqueeze(1), [0, 0]))

    scoped = spans_and_advantages([group], rewards, "rsgrpo", tag_ids, pad)
    assert scoped.components == REWARD_COMPONENTS
    evidence, accuracy = REWARD_COMPONENTS.index("evidence"), REWARD_COMPONENTS.index("accuracy")
    good = scoped.span_masks[0]
    assert good[evidence].sum() > 0 and good[accuracy].sum() > 0
    assert not (good[evidence] & good[accuracy]).any()  # split at <think>
    assert torch.equal(good[evidence] | good[accuracy], scoped.response_mask[0].bool())


# --- online filtering ---------------------------------------------------------------------------------------------


def test_filtering_keeps_only_groups_whose_mean_is_inside_the_band(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from evisrag_core.rsgrpo.rollout import load_rl_prompts

    prompts = load_rl_prompts(rl_file)
    fate = {prompts[0].id: "failed", prompts[1].id: "solved", prompts[2].id: "failed"}  # prompts[3]: mixed

    def table(group, cfg) -> Rewards:
        """Rewards by prompt: all 0 (failed), all 7 (solved), or 0..7 from the generated text (mixed)."""
        kind = fate.get(group.prompt.id, "mixed")
        overall = [{"failed": 0.0, "solved": 7.0}.get(kind, float(zlib.crc32(t.encode()) % 8)) for t in group.texts]
        return Rewards.from_scores([{"overall": v, **dict.fromkeys(REWARD_COMPONENTS, v / 6)} for v in overall])

    rounds: list[list[str]] = []  # the prompt ids of each round (one reward call of the reference each)
    sample = rsgrpo_step.rollout_and_score

    def recorded(run, sampling):
        groups, rewards = sample(run, sampling)
        rounds.append([group.prompt.id for group in groups])
        return groups, rewards

    monkeypatch.setattr(rsgrpo_step, "group_rewards", table)
    monkeypatch.setattr(rsgrpo_step, "rollout_and_score", recorded)
    cfg = config(tmp_path, tiny_model_dir, filter_low=0.01, filter_high=6.9, n=4, val_size=0)
    run = build_run(cfg, rl_file, seed=0)
    groups, rewards, metrics, edges = rsgrpo_step.collect_groups(run)

    assert [g.prompt.id for g in groups] == [prompts[3].id] * 2  # the mixed prompt, drawn in two epochs
    means = rewards.overall.view(2, 4).mean(dim=1)
    assert ((means > 0.01) & (means < 6.9)).all()
    drawn = run.cursor
    assert drawn > len(prompts) and drawn % 2 == 0  # every prompt was drawn, in rounds of rollout_batch_size
    assert metrics["filter/rounds"] == drawn / 2
    assert metrics["filter/dropped_fraction"] == pytest.approx(1 - 2 / drawn)
    # each kept group knows whether it opened or closed its round (span_masks: released keeps row 0 of a call)
    mixed = [ids.index(prompts[3].id) for ids in rounds if prompts[3].id in ids]
    assert edges == [(k == 0, k == 1) for k in mixed[:2]]


def test_filtering_gives_up_after_max_tries(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(rsgrpo_step, "score", lambda *a, **k: {"overall": 0.0, **dict.fromkeys(REWARD_COMPONENTS, 0)})
    cfg = config(tmp_path, tiny_model_dir, filter_low=0.01, filter_high=6.9, max_filter_tries=2, max_new_tokens=4)
    run = build_run(cfg, rl_file, seed=0)
    with pytest.raises(rsgrpo_step.FilterExhaustedError, match="kept 0 of 2 groups after 2 rounds"):
        rsgrpo_step.collect_groups(run)


# --- checkpoints and resume ---------------------------------------------------------------------------------------


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights_bit_for_bit(
    tiny_model_dir: Path, rl_file: Path, tmp_path: Path, stub_rewards
):
    from evisrag_core.rsgrpo.checkpoint import latest_checkpoint
    from evisrag_core.rsgrpo.train import train_rsgrpo

    def cfg(name: str) -> RSGRPOParams:
        return config(tmp_path / name, tiny_model_dir, steps=4, save_every=2, max_new_tokens=8, n=3)

    straight_steps: list[int] = []
    summary = train_rsgrpo(cfg("straight"), rl_file, seed=0, on_step=lambda s, m: straight_steps.append(s))
    assert summary["finished"] and straight_steps == [1, 2, 3, 4]

    first = train_rsgrpo(cfg("resumed"), rl_file, seed=0, stop_after=2)
    assert first == {"steps": 2, "resumed_from_step": 0, "finished": False}
    assert not (tmp_path / "resumed" / "model").exists()
    checkpoint = latest_checkpoint(tmp_path / "resumed" / "ckpt")
    assert checkpoint is not None and checkpoint.name == "step-000002"
    state = json.loads((checkpoint / "state.json").read_text())
    assert (state["step"], state["cursor"]) == (2, 4)

    resumed_steps: list[int] = []
    second = train_rsgrpo(cfg("resumed"), rl_file, seed=0, on_step=lambda s, m: resumed_steps.append(s))
    assert second["resumed_from_step"] == 2 and resumed_steps == [3, 4]
    straight, resumed = _weights(tmp_path / "straight" / "model"), _weights(tmp_path / "resumed" / "model")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    base = _weights(tiny_model_dir)
    assert any(not torch.equal(straight[k], base[k]) for k in straight)  # training did change the model
    kept = sorted(p.name for p in (tmp_path / "resumed" / "ckpt").iterdir())
    assert kept == [FINGERPRINT_FILE, "step-000002", "step-000004"]


_DRIVER = """
import json, sys, zlib
from pathlib import Path
import torch
from evisrag_core.config import RSGRPOParams
from evisrag_core.rsgrpo import step as rsgrpo_step
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS
from evisrag_core.rsgrpo.train import train_rsgrpo

def table(response, ground_truth, response_length, **limits):
    bits = zlib.crc32(response.encode("utf-8"))
    components = {name: float((bits >> (3 * j)) % 3) for j, name in enumerate(REWARD_COMPONENTS)}
    return {"overall": sum(components.values()), **components}

rsgrpo_step.score = table
torch.set_num_threads(1)
cfg = RSGRPOParams(**json.loads(sys.argv[1]))
print(json.dumps(train_rsgrpo(cfg, Path(sys.argv[2]), seed=0)))
"""


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tiny_model_dir: Path, rl_file: Path, tmp_path: Path):
    """SIGKILL a real training process after a checkpoint, rerun it, and get the uninterrupted run's weights."""
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}

    def command(name: str) -> list[str]:
        cfg = config(tmp_path / name, tiny_model_dir, steps=8, save_every=2, max_new_tokens=16, n=4)
        return [sys.executable, str(driver), cfg.model_dump_json(), str(rl_file)]

    clean = subprocess.run(command("clean"), env=env, capture_output=True, text=True, timeout=900)
    assert clean.returncode == 0, clean.stderr[-3000:]

    victim = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "ckpt" / "step-000002"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert checkpoint.exists(), "no checkpoint appeared before the deadline"
    assert not (tmp_path / "killed" / "model").exists(), "killed too late: the run had finished"

    resumed = subprocess.run(command("killed"), env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from_step"] >= 2 and summary["steps"] == 8
    clean_weights, resumed_weights = _weights(tmp_path / "clean" / "model"), _weights(tmp_path / "killed" / "model")
    assert all(torch.equal(clean_weights[k], resumed_weights[k]) for k in clean_weights)


# --- report -------------------------------------------------------------------------------------------------------


def test_report_highlights_each_components_span_and_shows_its_reward(tiny_model, rl_file: Path, tmp_path: Path):
    import html

    from evisrag_core.rsgrpo.report import COLOURS, report_samples, write_step_report
    from evisrag_core.rsgrpo.spans import tag_token_ids
    from evisrag_core.rsgrpo.step import spans_and_advantages

    _, processor = tiny_model
    group, rewards = _tagged_group(processor, rl_file)
    batch = spans_and_advantages([group], rewards, "rsgrpo", tag_token_ids(processor.tokenizer), 0)
    samples = report_samples(batch, processor.tokenizer, count=4)
    assert len(samples) == 2  # the best and the worst of the one group
    page = write_step_report(tmp_path / "report", 3, samples).read_text()

    good = group.texts[0]
    evidence_text = html.escape(good[: good.index("<think>")])
    accuracy_text = html.escape(good[good.index("<think>") :] + "<|im_end|>")
    assert f'<mark style="background:{COLOURS["evidence"]}">{evidence_text}</mark>' in page
    assert f'<mark style="background:{COLOURS["accuracy"]}">{accuracy_text}</mark>' in page
    for name in REWARD_COMPONENTS:
        assert f'data-component="{name}"' in page
    overall = score(good, group.prompt.ground_truth, len(group.responses[0]))
    assert f"<td>{overall['overall']:+.3f}</td>" in page
    assert f"evidence</span> reward {overall['evidence']:+.3f}" in page
    assert page.count('src="data:image/png;base64,') == 2 * len(group.prompt.images)
    assert 'href="step-000003.html"' in (tmp_path / "report" / "index.html").read_text()


# --- params -------------------------------------------------------------------------------------------------------


def test_params_reject_a_single_rollout_and_unknown_keys():
    with pytest.raises(ParamsError, match=r"rsgrpo\.n: Input should be greater than or equal to 2"):
        parse_params({"rsgrpo": {"n": 1}})
    with pytest.raises(ParamsError, match=r"unknown key 'rsgrpo\.clip_hgh'; valid keys here: .*clip_high"):
        parse_params({"rsgrpo": {"clip_hgh": 0.3}})
    with pytest.raises(ParamsError, match="filter_low must be below"):
        parse_params({"rsgrpo": {"filter_low": 7.0, "filter_high": 6.9}})


def test_params_yaml_lists_every_key_and_the_paper_profile_applies_the_released_values():
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert set(raw["rsgrpo"]) == set(RSGRPOParams.model_fields)
    params = parse_params(raw)
    assert params.rsgrpo.n >= 2
    raw["rsgrpo"].update(profile="paper")  # every key at its default: all released values apply
    paper = parse_params(raw).rsgrpo
    for key, value in PAPER_RSGRPO.items():
        assert getattr(paper, key) == value, key
    assert (paper.n, paper.rollout_batch_size, paper.learning_rate, paper.epochs) == (8, 32, 1e-6, 16.0)
