"""Capacity estimates (`evisrag plan`): parameter counts against real models, memory and time formulas against
hand-computed values, and the command's output."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT

from evisrag_core.capacity import model as cap
from evisrag_core.capacity.plan import PlanRequest, build_plan, paper_profiles
from evisrag_core.config import Params
from flows.cli import main

# A made-up architecture small enough to compute every formula by hand: head_dim 4, kv_dim 4.
HAND = cap.Architecture(
    total_params=1000,
    vision_params=200,
    language_params=800,
    embedding_params=160,
    largest_module_params=80,
    hidden=8,
    intermediate=16,
    layers=2,
    heads=2,
    kv_heads=1,
    vocab=10,
)
GPU_10GIB = cap.GPU("test-10GiB", 10, 100, 1.0)


@pytest.fixture(scope="module")
def arch_7b() -> cap.Architecture:
    return cap.architecture(cap.meta_model(cap.load_arch_config()))


def test_meta_count_equals_the_real_tiny_model(tiny_model_dir: Path, tiny_model: tuple[Any, Any]) -> None:
    """Counting on the meta device from a saved config.json gives the loaded model's numel, split by tower."""
    model, _ = tiny_model
    arch = cap.architecture(cap.meta_model(cap.load_arch_config(tiny_model_dir / "config.json")))
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    assert arch.vision_params == sum(p.numel() for p in model.model.visual.parameters())
    assert arch.language_params == arch.total_params - arch.vision_params
    # The tiny model ties lm_head to the embedding: one tensor, counted once.
    assert arch.embedding_params == model.model.language_model.embed_tokens.weight.numel()
    assert arch.hidden == model.config.text_config.hidden_size


def test_7b_config_matches_the_public_model(arch_7b: cap.Architecture) -> None:
    """Qwen2.5-VL-7B's published counts: 8.292 B total, 676.6 M vision (ViT + merger), 7.616 B language."""
    assert arch_7b.total_params == 8_292_166_656
    assert arch_7b.vision_params == 676_550_144
    assert arch_7b.language_params == 7_615_616_512
    assert arch_7b.embedding_params == 2 * 152_064 * 3584  # untied embedding and lm_head
    assert arch_7b.largest_module_params == 152_064 * 3584
    assert (arch_7b.hidden, arch_7b.layers, arch_7b.heads, arch_7b.kv_heads) == (3584, 28, 28, 4)
    assert (arch_7b.intermediate, arch_7b.vocab, arch_7b.head_dim) == (18944, 152064, 128)
    config = cap.load_arch_config()
    vision = config.vision_config
    assert (vision.depth, vision.hidden_size, vision.num_heads, vision.out_hidden_size) == (32, 1280, 16, 3584)
    assert list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    assert (vision.window_size, vision.patch_size, vision.spatial_merge_size) == (112, 14, 2)


@pytest.mark.parametrize(
    ("stage", "offload", "expected"),
    [
        (2, False, {"weights": 2000, "gradients": 400, "optimizer": 2400}),  # 2P, 2T/N, 12T/N
        (3, False, {"weights": 500, "gradients": 400, "optimizer": 2400}),  # 2P/N
        (2, True, {"weights": 2000, "gradients": 400, "optimizer": 0}),
        (3, True, {"weights": 500, "gradients": 400, "optimizer": 0}),
    ],
)
def test_model_state_bytes(stage: int, offload: bool, expected: dict[str, float]) -> None:
    assert cap.model_state_bytes(1000, 800, 4, stage, offload) == expected


def test_model_state_bytes_refuses_other_stages() -> None:
    with pytest.raises(ValueError, match="zero_stage"):
        cap.model_state_bytes(1000, 800, 4, 1, False)


@pytest.mark.parametrize(
    ("checkpointing", "expected"),
    [
        # per token and layer 2·(6·8 + 2·4 + 4·16) = 240 bytes; 10 tokens; logits 14·10·10 = 1400
        (True, {"checkpoints": 2 * 2 * 10 * 8, "recomputed_layer": 2400, "logits": 1400}),
        (False, {"checkpoints": 0, "recomputed_layer": 2 * 2400, "logits": 1400}),
    ],
)
def test_activation_bytes(checkpointing: bool, expected: dict[str, float]) -> None:
    assert cap.activation_bytes_per_token_layer(HAND) == 240
    assert cap.activation_bytes(HAND, 10, 10, checkpointing) == expected


def test_kv_cache_per_token_and_shared_prompts(arch_7b: cap.Architecture) -> None:
    assert cap.kv_bytes_per_token(arch_7b) == 2 * 28 * 4 * 128 * 2  # K and V, 28 layers, 4 KV heads of 128, bf16
    assert cap.rollout_kv_tokens(prompts=32, n=8, prompt_tokens=6512, response_tokens=1536) == 32 * (6512 + 8 * 1536)


def test_sft_memory_adds_up_and_max_tokens_is_the_boundary() -> None:
    shape = cap.SFTShape(world=4, zero_stage=3, offload_optimizer=False, tokens=10, overhead_gib=0.0)
    est = cap.sft_memory(HAND, GPU_10GIB, shape)
    # ZeRO-3 states with the vision tower frozen (T = 800): 500 + 400 + 2400; gathered 2·80·2 = 320;
    # activations 320 + 2400 + 1400.
    assert est.total_gib * cap.GIB == pytest.approx(500 + 400 + 2400 + 320 + 320 + 2400 + 1400)
    assert est.fits and est.headroom_gib == pytest.approx(10 - est.total_gib)
    limit = cap.max_tokens_that_fit(HAND, GPU_10GIB, shape)
    assert cap.sft_memory(HAND, GPU_10GIB, replace(shape, tokens=limit)).fits
    assert not cap.sft_memory(HAND, GPU_10GIB, replace(shape, tokens=limit + 1)).fits


def test_rl_memory_phases_reference_and_sleep() -> None:
    shape = cap.RLShape(
        world=4,
        zero_stage=3,
        offload_optimizer=False,
        prompts=2,
        n=4,
        prompt_tokens=6,
        response_tokens=4,
        micro_batch=1,
        kl=False,
        gpu_memory_utilization=0.5,
        overhead_gib=0.0,
        vllm_workspace_gib=0.0,
    )
    rollout, update, kv = cap.rl_memory(HAND, GPU_10GIB, shape)
    assert rollout.breakdown_gib["vllm_engine"] == pytest.approx(5.0)  # 0.5 × 10 GiB
    assert rollout.breakdown_gib["gradients"] == 0  # freed between steps
    assert "vllm_engine" not in update.breakdown_gib  # sleep mode: the engine gives its memory back
    # Logits only for the response tokens (logits_to_keep): 14 bytes × 4 tokens × vocab 10.
    assert update.breakdown_gib["logits"] * cap.GIB == pytest.approx(14 * 4 * 10)
    assert kv["kv_needed_gib_per_gpu"] * cap.GIB == pytest.approx(2 * (6 + 4 * 4) * 2 * 2 * 4 * 2 / 4)
    with_ref = cap.rl_memory(HAND, GPU_10GIB, replace(shape, kl=True, vllm_sleep=False))[1]
    assert with_ref.breakdown_gib["reference_model"] * cap.GIB == pytest.approx(2 * 1000 / 4)  # bf16, sharded
    assert with_ref.breakdown_gib["vllm_engine"] == pytest.approx(5.0)


def test_decode_step_is_the_slower_of_compute_and_memory() -> None:
    # Memory: (2·1000 weights + 3 seq × 5 ctx × 64 KV bytes) / 1 TB/s; compute: 3 × flops/token / 100 TFLOPS.
    read_s = (2 * 1000 + 3 * 5 * cap.kv_bytes_per_token(HAND)) / 1e12
    compute_s = 3 * cap.forward_flops_per_token(HAND, 5) / (100e12 * 0.5)
    assert cap.kv_bytes_per_token(HAND) == 2 * 2 * 4 * 2
    # matmul params: 800 language − 160 embedding/lm_head + lm_head 10 × 8; attention 4·2·5·8
    assert cap.forward_flops_per_token(HAND, 5) == 2 * (800 - 160 + 80) + 4 * 2 * 5 * 8
    assert cap.decode_step_seconds(HAND, GPU_10GIB, 3, 5, 1, 0.5) == pytest.approx(max(read_s, compute_s))


def test_plan_for_the_paper_profile(arch_7b: cap.Architecture) -> None:
    sft, rsgrpo = paper_profiles(Params().sft, Params().rsgrpo)
    plan = build_plan(PlanRequest(gpus=8, gpu_type="A100-80GB"), sft, rsgrpo)
    assert plan["parameters"]["total"] == arch_7b.total_params
    assert plan["parameters"]["trainable_sft"] == arch_7b.language_params  # the paper freezes the vision tower
    assert plan["sft"]["cutoff_tokens"] == 32000 and plan["sft"]["global_batch"] == 64
    assert plan["rsgrpo"]["n"] == 8 and plan["rsgrpo"]["prompts_per_step"] == 32
    assert [(r["zero_stage"], r["offload_optimizer"]) for r in plan["sft"]["rows"]] == [
        (2, False),
        (2, True),
        (3, False),
        (3, True),
    ]
    # More GPUs shrink ZeRO-3's per-GPU states.
    more = build_plan(PlanRequest(gpus=16, gpu_type="A100-80GB"), sft, rsgrpo)
    z3 = [p["sft"]["rows"][2]["at_typical"]["total_gib"] for p in (plan, more)]
    assert z3[1] < z3[0]
    assert len(plan["verdict"]) == 3 and plan["verdict"][0].startswith("SFT, ZeRO-3")


def test_plan_command_json_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    params = str(REPO_ROOT / "params.yaml")
    assert main(["--params", params, "plan", "--gpus", "4", "--gpu-type", "H100-80GB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["gpu"]["name"] == "H100-80GB" and plan["request"]["gpus"] == 4
    assert main(["--params", params, "plan"]) == 0
    assert "Verdict:" in capsys.readouterr().out
    assert main(["--params", params, "plan", "--gpus", "3", "--tp", "2"]) == 2
    assert "multiple of --tp" in capsys.readouterr().err
