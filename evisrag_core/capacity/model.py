"""Capacity planning on paper: parameter counts, per-GPU memory and throughput of the paper's 7B runs.

No GPU is available to this project, so `evisrag plan` answers "does the paper profile fit on N × <GPU>?" with
arithmetic, stated here once so it can be audited and changed:

Parameters. Counted on a model instantiated on the meta device from a config file (shapes only, no memory, no
download): total, vision tower (ViT + merger), language model (decoder + lm_head).

Model states per GPU, mixed precision with Adam (the ZeRO paper's accounting, T = trainable parameters, P = all,
N = data-parallel ranks): bf16 weights 2P, bf16 gradients 2T, optimizer states 12T (fp32 master weights, Adam m, v).

    ZeRO-2:  2P        + 2T/N + 12T/N          ZeRO-3:  2P/N + 2T/N + 12T/N + gathered working set
    CPU optimizer offload moves the 12T/N term to host RAM.

ZeRO-3 gathers one module's full weights at a time and prefetches the next: the working set is 2 × the largest
module × 2 bytes (the embedding or lm_head, 545 M parameters for 7B).

Activations, bf16, flash/SDPA attention (no seq² term), per token and decoder layer the tensors autograd keeps:
the two RMSNorm inputs and outputs (4h), q/k/v (h + 2·kv_dim), the attention output (h), and in the SwiGLU MLP gate,
up, act(gate) and their product (4I): 2 · (6h + 2·kv_dim + 4I) bytes. With gradient checkpointing only each layer's
input is kept (L · s · h · 2 bytes) plus one layer recomputed during backward. The loss adds the logits:
LOGITS_BYTES per (token, vocab) element (bf16 logits, their fp32 copy, the fp32 log-softmax kept for backward and its
gradient), which at 152 k vocabulary and 32 k tokens is the largest single term. A frozen vision tower keeps no
activations; its forward transient is small next to the decoder's and is not added.

Rollouts (vLLM, colocated as in the reference): the engine takes gpu_memory_utilization × GPU memory while it
generates (weights 2P/TP + KV cache + its own workspace); in sleep mode it releases all of it for the update.
KV cache per token: 2 (K, V) · L · kv_heads · head_dim · 2 bytes. The n samples of a prompt share its KV blocks
(vLLM parallel sampling), so a rollout batch needs prompts · (prompt_len + n · response_len) tokens of cache.

Time. FLOPs per token: forward 2·P_lm (+ attention 4·L·ctx·h_attn, small next to it below 32 k), backward twice
that, recomputation once more with gradient checkpointing; the vision tower costs 2·P_vision per patch forward.
Compute time = FLOPs / (GPUs · peak bf16 · MFU). Decoding is bounded by memory bandwidth as well: each step reads the
weights once per tensor-parallel group and every sequence's KV cache; the step time is the larger of the two bounds.
These are estimates to within tens of percent; the MFU is an input, not a measurement.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evisrag_core.config import PATCH_PIXELS
from evisrag_core.errors import InputNotFoundError, UserError

GIB = 2**30
BF16 = 2  # bytes per bf16 element
ADAM_STATE_BYTES = 12  # fp32 master weight + Adam m + Adam v, per trainable parameter
LOGITS_BYTES = 14  # per (token, vocab) element: bf16 logits 2 + fp32 copy 4 + fp32 log-softmax 4 + fp32 grad 4
DEFAULT_ARCH_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "models" / "qwen2_5_vl_7b.json"


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float  # dense peak, no sparsity
    hbm_tb_s: float


# Vendor data sheets (dense bf16 tensor-core peak; SXM parts where there are two form factors). A800/H800 are the
# export variants: same compute and memory, slower NVLink (not modelled here).
GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("A100-40GB", 40, 312, 1.555),
        GPU("A100-80GB", 80, 312, 2.039),
        GPU("A800-80GB", 80, 312, 2.039),
        GPU("H100-80GB", 80, 989, 3.35),
        GPU("H800-80GB", 80, 989, 3.35),
        GPU("H200-141GB", 141, 989, 4.8),
        GPU("L40S-48GB", 48, 362, 0.864),
    )
}


@dataclass(frozen=True)
class Architecture:
    """The sizes the formulas read, plus the parameter counts of the instantiated (meta) model."""

    total_params: int
    vision_params: int
    language_params: int  # decoder + embedding + lm_head
    embedding_params: int  # input embedding + lm_head (no matmul FLOPs for the first)
    largest_module_params: int  # the biggest single weight ZeRO-3 has to gather at once
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def load_arch_config(path: str | Path = DEFAULT_ARCH_CONFIG) -> Any:
    """A Qwen2_5_VLConfig from a JSON file (hub `config.json` or our nested form; `_comment` keys are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"--arch-config {path} not found; give a model's config.json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--arch-config {path} is not a JSON config ({err}); give a model's config.json") from None
    if not isinstance(raw, dict):
        raise UserError(f"--arch-config {path}: expected a JSON object (a model's config.json)")
    from transformers import Qwen2_5_VLConfig  # seconds to import: after the file checks

    return Qwen2_5_VLConfig(**{k: v for k, v in raw.items() if not k.startswith("_")})


def meta_model(config: Any) -> Any:
    """The model with every tensor on the meta device: real module tree and shapes, no storage."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(config)


def architecture(model: Any) -> Architecture:
    """Count a Qwen2.5-VL model's parameters (shared/tied tensors once) and read its sizes from its config."""
    total = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for p in model.model.visual.parameters())
    embedding = model.model.language_model.embed_tokens.weight.numel()
    lm_head = model.lm_head.weight
    tied = lm_head is model.model.language_model.embed_tokens.weight
    text = model.config.text_config
    return Architecture(
        total_params=total,
        vision_params=vision,
        language_params=total - vision,
        embedding_params=embedding + (0 if tied else lm_head.numel()),
        largest_module_params=max(p.numel() for p in model.parameters()),
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        vocab=text.vocab_size,
    )


# --- memory ---------------------------------------------------------------------------------------------------------


def model_state_bytes(
    total: int, trainable: int, world: int, zero_stage: int, offload_optimizer: bool
) -> dict[str, float]:
    """Per-GPU bytes of weights, gradients and optimizer states under ZeRO-2 or ZeRO-3 (module docstring)."""
    if zero_stage not in (2, 3):
        raise ValueError(f"zero_stage must be 2 or 3, got {zero_stage}")
    weights = BF16 * total / (world if zero_stage == 3 else 1)
    return {
        "weights": weights,
        "gradients": BF16 * trainable / world,
        "optimizer": 0.0 if offload_optimizer else ADAM_STATE_BYTES * trainable / world,
    }


def zero3_working_set_bytes(largest_module_params: int) -> float:
    """The gathered full weights of the current and the prefetched module."""
    return 2 * BF16 * largest_module_params


def activation_bytes_per_token_layer(arch: Architecture) -> float:
    """bf16 bytes autograd keeps per token in one decoder layer (module docstring)."""
    return BF16 * (6 * arch.hidden + 2 * arch.kv_dim + 4 * arch.intermediate)


def activation_bytes(
    arch: Architecture, tokens: int, logit_tokens: int, gradient_checkpointing: bool
) -> dict[str, float]:
    """Activations of one micro-batch holding `tokens` tokens, `logit_tokens` of which get logits."""
    per_layer = activation_bytes_per_token_layer(arch) * tokens
    if gradient_checkpointing:
        layers = {"checkpoints": BF16 * arch.layers * tokens * arch.hidden, "recomputed_layer": per_layer}
    else:
        layers = {"checkpoints": 0.0, "recomputed_layer": arch.layers * per_layer}
    return {**layers, "logits": float(LOGITS_BYTES * logit_tokens * arch.vocab)}


def kv_bytes_per_token(arch: Architecture) -> float:
    return 2 * arch.layers * arch.kv_dim * BF16


def rollout_kv_tokens(prompts: int, n: int, prompt_tokens: int, response_tokens: int) -> int:
    """Cache tokens of a rollout batch when the n samples of a prompt share its prompt blocks."""
    return prompts * (prompt_tokens + n * response_tokens)


@dataclass(frozen=True)
class Estimate:
    """Per-GPU peak bytes and what they are made of; `fits` leaves `headroom_gib` free (negative: short by)."""

    label: str
    breakdown_gib: dict[str, float]
    total_gib: float
    capacity_gib: float
    cpu_offload_gib: float = 0.0  # host RAM per GPU for offloaded optimizer states

    @property
    def headroom_gib(self) -> float:
        return self.capacity_gib - self.total_gib

    @property
    def fits(self) -> bool:
        return self.headroom_gib >= 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "headroom_gib": self.headroom_gib, "fits": self.fits}


def _estimate(label: str, parts: dict[str, float], capacity_gib: float, cpu_bytes: float = 0.0) -> Estimate:
    gib = {k: v / GIB for k, v in parts.items()}
    return Estimate(label, gib, sum(gib.values()), capacity_gib, cpu_bytes / GIB)


@dataclass(frozen=True)
class SFTShape:
    world: int
    zero_stage: int
    offload_optimizer: bool
    tokens: int  # per micro-batch (micro-batch size × sequence length)
    freeze_vision: bool = True
    gradient_checkpointing: bool = True
    overhead_gib: float = 2.0  # CUDA context, NCCL buffers, allocator fragmentation


def trainable_params(arch: Architecture, freeze_vision: bool) -> int:
    return arch.language_params if freeze_vision else arch.total_params


def sft_memory(arch: Architecture, gpu: GPU, shape: SFTShape) -> Estimate:
    """Peak per-GPU memory of a full fine-tune step (loss on every token's logits, as transformers computes it)."""
    trainable = trainable_params(arch, shape.freeze_vision)
    states = model_state_bytes(arch.total_params, trainable, shape.world, shape.zero_stage, shape.offload_optimizer)
    parts = {**states, **activation_bytes(arch, shape.tokens, shape.tokens, shape.gradient_checkpointing)}
    if shape.zero_stage == 3:
        parts["zero3_gathered"] = zero3_working_set_bytes(arch.largest_module_params)
    parts["overhead"] = shape.overhead_gib * GIB
    offloaded = ADAM_STATE_BYTES * trainable / shape.world if shape.offload_optimizer else 0.0
    label = f"SFT ZeRO-{shape.zero_stage}{' + CPU optimizer offload' if shape.offload_optimizer else ''}"
    return _estimate(label, parts, gpu.memory_gib, offloaded)


def max_tokens_that_fit(arch: Architecture, gpu: GPU, shape: SFTShape) -> int:
    """The largest micro-batch token count whose SFT estimate fits (memory is affine in tokens)."""
    base = sft_memory(arch, gpu, SFTShape(**{**asdict(shape), "tokens": 0})).total_gib
    per_token = sft_memory(arch, gpu, SFTShape(**{**asdict(shape), "tokens": 1})).total_gib - base
    return max(0, math.floor((gpu.memory_gib - base) / per_token))


@dataclass(frozen=True)
class RLShape:
    world: int
    zero_stage: int
    offload_optimizer: bool
    prompts: int  # rollout batch (prompt groups per step)
    n: int  # samples per prompt
    prompt_tokens: int
    response_tokens: int
    micro_batch: int  # responses per forward/backward
    kl: bool  # a frozen reference model for the KL term
    gpu_memory_utilization: float = 0.6
    tensor_parallel: int = 1
    vllm_sleep: bool = True  # the engine frees its memory during the update (sleep mode)
    vllm_workspace_gib: float = 2.0  # vLLM's activation/sampler workspace and CUDA graphs
    gradient_checkpointing: bool = True
    freeze_vision: bool = True
    overhead_gib: float = 2.0


def rl_memory(arch: Architecture, gpu: GPU, shape: RLShape) -> tuple[Estimate, Estimate, dict[str, float]]:
    """(rollout phase, update phase, KV-cache check) per GPU for a colocated RS-GRPO step."""
    trainable = trainable_params(arch, shape.freeze_vision)
    states = model_state_bytes(arch.total_params, trainable, shape.world, shape.zero_stage, shape.offload_optimizer)
    reference = BF16 * arch.total_params / (shape.world if shape.zero_stage == 3 else 1) if shape.kl else 0.0
    resident = {**states, "reference_model": reference, "overhead": shape.overhead_gib * GIB}
    engine = shape.gpu_memory_utilization * gpu.memory_gib * GIB
    rollout = {**resident, "gradients": 0.0, "vllm_engine": engine}  # gradients are freed between steps
    tokens = shape.micro_batch * (shape.prompt_tokens + shape.response_tokens)
    logit_tokens = shape.micro_batch * shape.response_tokens  # logits_to_keep: the responses only
    update = {**resident, **activation_bytes(arch, tokens, logit_tokens, shape.gradient_checkpointing)}
    if shape.zero_stage == 3:
        update["zero3_gathered"] = zero3_working_set_bytes(arch.largest_module_params)
    if not shape.vllm_sleep:
        update["vllm_engine"] = engine
    offloaded = ADAM_STATE_BYTES * trainable / shape.world if shape.offload_optimizer else 0.0
    suffix = f"ZeRO-{shape.zero_stage}{' + offload' if shape.offload_optimizer else ''}{' + ref' if shape.kl else ''}"
    replicas = shape.world // shape.tensor_parallel
    kv_needed = kv_bytes_per_token(arch) * rollout_kv_tokens(
        shape.prompts, shape.n, shape.prompt_tokens, shape.response_tokens
    )
    kv_available = engine - BF16 * arch.total_params / shape.tensor_parallel - shape.vllm_workspace_gib * GIB
    kv = {
        "kv_needed_gib_per_gpu": kv_needed / replicas / shape.tensor_parallel / GIB,
        "kv_available_gib_per_gpu": max(kv_available, 0.0) / GIB,
        "kv_bytes_per_token": kv_bytes_per_token(arch),
    }
    kv["waves"] = math.ceil(kv["kv_needed_gib_per_gpu"] / kv["kv_available_gib_per_gpu"]) if kv_available > 0 else 0
    return (
        _estimate(f"RS-GRPO rollout phase, {suffix}", rollout, gpu.memory_gib, offloaded),
        _estimate(f"RS-GRPO update phase, {suffix}", update, gpu.memory_gib, offloaded),
        kv,
    )


# --- time ---------------------------------------------------------------------------------------------------------


def forward_flops_per_token(arch: Architecture, context: int) -> float:
    """Matmul FLOPs of one token through the language model at `context` tokens of attention."""
    matmul_params = arch.language_params - arch.embedding_params + arch.vocab * arch.hidden  # lm_head is a matmul
    return 2 * matmul_params + 4 * arch.layers * context * arch.hidden


def vision_flops_per_image(arch: Architecture, pixels: int) -> float:
    return 2 * arch.vision_params * pixels / PATCH_PIXELS


def seconds(flops: float, gpus: int, gpu: GPU, mfu: float) -> float:
    return flops / (gpus * gpu.bf16_tflops * 1e12 * mfu)


def decode_step_seconds(arch: Architecture, gpu: GPU, sequences: int, context: int, tp: int, mfu: float) -> float:
    """One decode step of `sequences` sequences on one tensor-parallel group: compute or memory bound."""
    compute = seconds(sequences * forward_flops_per_token(arch, context), tp, gpu, mfu)
    read = (BF16 * arch.total_params + sequences * context * kv_bytes_per_token(arch)) / tp
    return max(compute, read / (gpu.hbm_tb_s * 1e12))


@dataclass(frozen=True)
class RolloutTime:
    prefill_s: float
    decode_s: float
    tokens_per_s: float  # generated tokens per second, all GPUs
    bound: str  # "compute" or "memory" for the decode phase


def rollout_time(
    arch: Architecture, gpu: GPU, shape: RLShape, images: int, pixels_per_image: int, mfu: float
) -> RolloutTime:
    """Generating n × prompts responses of full length: prefill (prompts once, images once) then decoding with
    every replica holding its share of sequences (in `waves` when the KV cache is short)."""
    replicas = shape.world // shape.tensor_parallel
    prefill = shape.prompts * (
        shape.prompt_tokens * forward_flops_per_token(arch, shape.prompt_tokens // 2)
        + images * vision_flops_per_image(arch, pixels_per_image)
    )
    sequences = math.ceil(shape.prompts * shape.n / replicas)
    context = shape.prompt_tokens + shape.response_tokens // 2  # mean context over the decode
    step = decode_step_seconds(arch, gpu, sequences, context, shape.tensor_parallel, mfu)
    compute_only = seconds(sequences * forward_flops_per_token(arch, context), shape.tensor_parallel, gpu, mfu)
    decode = step * shape.response_tokens
    generated = shape.prompts * shape.n * shape.response_tokens
    prefill_s = seconds(prefill, shape.world, gpu, mfu)
    return RolloutTime(
        prefill_s, decode, generated / (prefill_s + decode), "compute" if compute_only >= step else "memory"
    )


def train_flops_per_token(arch: Architecture, context: int, gradient_checkpointing: bool) -> float:
    """Forward + backward (2×) + recomputation (1× more with checkpointing) through the language model."""
    return (4 if gradient_checkpointing else 3) * forward_flops_per_token(arch, context)


def update_seconds(
    arch: Architecture, gpu: GPU, shape: RLShape, images: int, pixels_per_image: int, mfu: float
) -> float:
    """The RS-GRPO update over prompts × n responses (+ the reference forward when KL is on)."""
    tokens = shape.prompt_tokens + shape.response_tokens
    per_response = tokens * train_flops_per_token(arch, tokens // 2, shape.gradient_checkpointing)
    per_response += images * vision_flops_per_image(arch, pixels_per_image)  # frozen ViT: forward only
    if shape.kl:
        per_response += tokens * forward_flops_per_token(arch, tokens // 2)
    return seconds(shape.prompts * shape.n * per_response, shape.world, gpu, mfu)


def sft_tokens_per_second(arch: Architecture, gpu: GPU, gpus: int, tokens: int, mfu: float, ckpt: bool) -> float:
    return gpus * gpu.bf16_tflops * 1e12 * mfu / train_flops_per_token(arch, tokens // 2, ckpt)
