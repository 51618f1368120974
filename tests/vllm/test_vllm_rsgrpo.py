"""RS-GRPO rollouts through a real vLLM engine (`rsgrpo.rollout_backend: vllm`): the weight sync reaches the engine,
and three steps run end to end through the CLI.

The reward table is replaced by a checksum of the generated text (as in tests/integration/test_rsgrpo_loop.py) so a
group's responses get different rewards and the update moves the weights; vLLM, the policy and the update are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT, clean_env

from evisrag_core.config import RSGRPOParams
from evisrag_core.data.schema import RL_FILE
from evisrag_core.rsgrpo import step as rsgrpo_step
from evisrag_core.rsgrpo.rewards import REWARD_COMPONENTS
from evisrag_core.rsgrpo.rollout import Group, pad_responses, policy_inputs
from evisrag_core.rsgrpo.step import response_log_probs, train_step
from evisrag_core.rsgrpo.train import build_run
from evisrag_core.vllm_engine.protocol import PYTHON_ENV

pytestmark = [pytest.mark.vllm, pytest.mark.usefixtures("vllm_env")]


def text_reward(response: str, ground_truth: str, response_length: int, **limits: int) -> dict[str, float]:
    bits = zlib.crc32(response.encode("utf-8"))
    components = {name: float((bits >> (3 * j)) % 3) for j, name in enumerate(REWARD_COMPONENTS)}
    return {"overall": sum(components.values()), **components}


def policy_log_probs(run, prompt, response: torch.Tensor) -> torch.Tensor:
    """log π_θ(y_t | x, y_<t) of `response` under the policy, through the update's own forward (fp32)."""
    group = Group(prompt, run.rollout.encode([prompt])[0], (response,), ("",))
    pad_id = run.processor.tokenizer.pad_token_id
    ids, mask = pad_responses([group], pad_id)
    run.policy.eval()
    with torch.no_grad():
        log_probs, _ = response_log_probs(run.policy, policy_inputs([group], [0], ids, mask, pad_id), ids, 1.0)
    return log_probs[0]


def test_vllm_log_probs_follow_the_policy_after_an_update(
    vllm_sft_model_dir: Path, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rsgrpo_step, "score", text_reward)
    cfg = RSGRPOParams(
        model_dir=str(vllm_sft_model_dir),
        out_dir=str(tmp_path / "model"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        report_dir=str(tmp_path / "report"),
        log_file=str(tmp_path / "log.json"),
        rollout_backend="vllm",
        steps=1,
        rollout_batch_size=2,
        n=4,
        max_new_tokens=24,
        learning_rate=1e-2,  # a large step: the log-probs must move far more than the tolerance
        val_every=0,
        val_size=1,
        report_every=0,
        filter_low=-100.0,
        filter_high=100.0,
        bf16="off",
    )
    run = build_run(cfg, tiny_dataset / "train" / RL_FILE, seed=0)
    try:
        prompt = run.train_prompts[0]
        tokenizer = run.processor.tokenizer
        text = "<observe>The first image shows a red square on a plain blue background.</observe>"
        response = torch.tensor([*tokenizer.encode(text), tokenizer.convert_tokens_to_ids("<|im_end|>")])
        before = policy_log_probs(run, prompt, response)

        metrics, _ = train_step(run)  # rollouts through vLLM (weights synced first), then one real update
        assert metrics["actor/grad_norm"] > 0
        run.rollout.sync_weights()
        after = policy_log_probs(run, prompt, response)
        engine = torch.tensor(run.rollout.response_log_probs(prompt, response.tolist()))
    finally:
        run.rollout.close()
    moved = (after - before).abs().max().item()
    gap = (engine - after).abs().max().item()
    print(f"policy log-probs moved by up to {moved:.4f}; vLLM vs policy after the sync: max |Δ| {gap:.2e}")
    assert moved > 0.05  # the update changed the policy well beyond the tolerance below
    assert gap < 1e-3  # and the engine now scores the response as the updated policy does (fp32)


def test_three_rsgrpo_steps_with_vllm_rollouts_end_to_end(
    vllm_sft_model_dir: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """`evisrag rsgrpo` (Prefect flow, MLflow run, checkpoints, final model) with a small params file."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["out_dir"] = str(tiny_dataset)
    params["rsgrpo"].update(
        model_dir=str(vllm_sft_model_dir),
        out_dir=str(tmp_path / "models/rsgrpo"),
        rollout_backend="vllm",
        steps=3,
        rollout_batch_size=2,
        n=4,
        max_new_tokens=48,
        online_filtering=False,
        val_every=0,
        val_size=1,
        report_every=0,
        save_every=3,
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    env = clean_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    env[PYTHON_ENV] = os.environ.get(PYTHON_ENV) or str(REPO_ROOT / ".venv-vllm" / "bin" / "python")
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--params", str(params_file), "rsgrpo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    steps = json.loads((tmp_path / params["rsgrpo"]["log_file"]).read_text())
    assert [row["step"] for row in steps] == [1, 2, 3]
    assert (tmp_path / "models/rsgrpo" / "model.safetensors").is_file()
