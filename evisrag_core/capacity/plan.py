"""`evisrag plan`: the paper profile's SFT and RS-GRPO runs checked against N GPUs of a type, on paper.

Builds the 7B architecture on the meta device (capacity.model), takes the batch and length settings from the
SFT / RS-GRPO params (the paper profile unless told otherwise) and returns a plain dict: parameter counts, per-GPU
memory for each ZeRO variant, rollout and step time estimates, and a verdict against the paper's 8-GPU setup.
`format_plan` renders it as text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evisrag_core.capacity import model as cap
from evisrag_core.config import MERGED_PATCH_PIXELS, PAPER_RSGRPO, PAPER_SFT, RSGRPOParams, SFTParams
from evisrag_core.errors import UserError

PAPER_GPUS = 8  # spec §5 and §6: both stages ran on 8 GPUs (the spec does not name the GPU type)
TEXT_TOKENS = 1024  # prompt text + chat scaffolding + evidence response budget beside the image tokens (SFT)
RL_TEXT_TOKENS = 512  # RL prompt text beside the image tokens


@dataclass(frozen=True)
class PlanRequest:
    gpus: int = PAPER_GPUS
    gpu_type: str = "A100-80GB"
    mfu: float = 0.35
    gpu_memory_utilization: float = 0.6
    tensor_parallel: int = 1
    images: int = 3  # top-3 images per question (spec §7)
    kl: bool | None = None  # None: as rsgrpo.kl_coef says
    arch_config: str = str(cap.DEFAULT_ARCH_CONFIG)


def paper_profiles(sft: SFTParams, rsgrpo: RSGRPOParams) -> tuple[SFTParams, RSGRPOParams]:
    """The given sections with every released value of the paper profile, even over keys the params file set:
    `evisrag plan` sizes the paper's run itself (`--profile params` sizes the params file's run instead)."""
    return (
        SFTParams.model_validate({**sft.model_dump(), **PAPER_SFT, "profile": "paper"}),
        RSGRPOParams.model_validate({**rsgrpo.model_dump(), **PAPER_RSGRPO, "profile": "paper"}),
    )


def image_tokens(images: int, max_pixels: int) -> int:
    return images * max_pixels // MERGED_PATCH_PIXELS


def _sft_rows(arch: cap.Architecture, gpu: cap.GPU, req: PlanRequest, sft: SFTParams) -> dict[str, Any]:
    typical = min(sft.cutoff_len, image_tokens(req.images, sft.image_max_pixels) + TEXT_TOKENS)
    rows = []
    for stage in (2, 3):
        for offload in (False, True):
            shape = cap.SFTShape(
                world=req.gpus,
                zero_stage=stage,
                offload_optimizer=offload,
                tokens=sft.per_device_train_batch_size * sft.cutoff_len,
                freeze_vision=sft.freeze_vision_tower,
                gradient_checkpointing=sft.gradient_checkpointing,
            )
            at_typical = cap.sft_memory(arch, gpu, cap.SFTShape(**{**asdict(shape), "tokens": typical}))
            rows.append(
                {
                    "zero_stage": stage,
                    "offload_optimizer": offload,
                    "at_cutoff": cap.sft_memory(arch, gpu, shape).to_dict(),
                    "at_typical": at_typical.to_dict(),
                    "max_tokens_that_fit": cap.max_tokens_that_fit(arch, gpu, shape),
                }
            )
    global_batch = sft.per_device_train_batch_size * sft.gradient_accumulation_steps * req.gpus
    tps = cap.sft_tokens_per_second(arch, gpu, req.gpus, typical, req.mfu, sft.gradient_checkpointing)
    return {
        "cutoff_tokens": sft.cutoff_len,
        "typical_tokens": typical,
        "typical_definition": f"{req.images} images at sft.image_max_pixels={sft.image_max_pixels} "
        f"(+{TEXT_TOKENS} text tokens), capped at the cut-off",
        "deepspeed_config": sft.deepspeed,
        "global_batch": global_batch,
        "rows": rows,
        "tokens_per_s": tps,
        "step_seconds_at_typical": global_batch * typical / tps,
    }


def _rl_shape(req: PlanRequest, rl: RSGRPOParams, stage: int, offload: bool, kl: bool) -> cap.RLShape:
    prompt = min(rl.max_prompt_length, image_tokens(req.images, rl.image_max_pixels) + RL_TEXT_TOKENS)
    return cap.RLShape(
        world=req.gpus,
        zero_stage=stage,
        offload_optimizer=offload,
        prompts=rl.rollout_batch_size,
        n=rl.n,
        prompt_tokens=prompt,
        response_tokens=rl.max_new_tokens,
        micro_batch=rl.micro_batch_size or rl.rollout_batch_size * rl.n,
        kl=kl,
        gpu_memory_utilization=req.gpu_memory_utilization,
        tensor_parallel=req.tensor_parallel,
        gradient_checkpointing=rl.gradient_checkpointing,
        freeze_vision=rl.freeze_vision_tower,
    )


def _rl_rows(arch: cap.Architecture, gpu: cap.GPU, req: PlanRequest, rl: RSGRPOParams) -> dict[str, Any]:
    kl = rl.kl_coef > 0 if req.kl is None else req.kl
    rows = []
    for stage, offload in ((3, False), (3, True), (2, False)):
        rollout, update, kv = cap.rl_memory(arch, gpu, _rl_shape(req, rl, stage, offload, kl))
        peak = max(rollout.total_gib, update.total_gib)
        rows.append(
            {
                "zero_stage": stage,
                "offload_optimizer": offload,
                "reference_model": kl,
                "rollout_phase": rollout.to_dict(),
                "update_phase": update.to_dict(),
                "peak_gib": peak,
                "headroom_gib": gpu.memory_gib - peak,
                "fits": peak <= gpu.memory_gib,
                "kv_cache": kv,
            }
        )
    shape = _rl_shape(req, rl, 3, False, kl)
    rollout_t = cap.rollout_time(arch, gpu, shape, req.images, rl.image_max_pixels, req.mfu)
    update_s = cap.update_seconds(arch, gpu, shape, req.images, rl.image_max_pixels, req.mfu)
    return {
        "prompt_tokens": shape.prompt_tokens,
        "response_tokens": shape.response_tokens,
        "prompts_per_step": shape.prompts,
        "n": shape.n,
        "micro_batch": shape.micro_batch,
        "gpu_memory_utilization": req.gpu_memory_utilization,
        "tensor_parallel": req.tensor_parallel,
        "rows": rows,
        "rollout": asdict(rollout_t),
        "update_seconds": update_s,
        "step_seconds": rollout_t.prefill_s + rollout_t.decode_s + update_s,
        "time_assumes": "every response runs to max_new_tokens; one update per rollout batch (no old-log-prob pass)",
    }


def build_plan(req: PlanRequest, sft: SFTParams, rsgrpo: RSGRPOParams) -> dict[str, Any]:
    if req.gpu_type not in cap.GPUS:
        raise UserError(f"unknown GPU type {req.gpu_type!r}; known: {', '.join(cap.GPUS)}")
    if req.gpus < 1 or req.gpus % req.tensor_parallel:
        raise UserError(f"--gpus {req.gpus} must be a positive multiple of --tp {req.tensor_parallel}")
    gpu = cap.GPUS[req.gpu_type]
    arch = cap.architecture(cap.meta_model(cap.load_arch_config(req.arch_config)))
    plan = {
        "request": asdict(req),
        "gpu": asdict(gpu),
        "parameters": {
            "total": arch.total_params,
            "vision": arch.vision_params,
            "language": arch.language_params,
            "trainable_sft": cap.trainable_params(arch, sft.freeze_vision_tower),
        },
        "architecture": asdict(arch),
        "sft": _sft_rows(arch, gpu, req, sft),
        "rsgrpo": _rl_rows(arch, gpu, req, rsgrpo),
    }
    plan["verdict"] = verdict(plan)
    return plan


def verdict(plan: dict[str, Any]) -> list[str]:
    """One line per stage for the configuration the paper used (ZeRO-3, no offload), plus the comparison."""
    req, sft, rl = plan["request"], plan["sft"], plan["rsgrpo"]
    setup = f"{req['gpus']} × {req['gpu_type']}"
    z3 = next(r for r in sft["rows"] if r["zero_stage"] == 3 and not r["offload_optimizer"])
    typical, cutoff = z3["at_typical"], z3["at_cutoff"]
    lines = [
        f"SFT, ZeRO-3 (the paper's choice) on {setup}: "
        + _fit_text(typical, f"a {sft['typical_tokens']}-token sample ({sft['typical_definition']})")
        + "; "
        + _fit_text(cutoff, f"a sample at the full cut-off of {sft['cutoff_tokens']} tokens")
        + f"; up to {z3['max_tokens_that_fit']} tokens per micro-batch fit. The fp32 logits/loss term is "
        f"{cutoff['breakdown_gib']['logits']:.1f} GiB at the cut-off (a fused/chunked cross-entropy removes most "
        "of it)."
    ]
    rl_z3 = next(r for r in rl["rows"] if r["zero_stage"] == 3 and not r["offload_optimizer"])
    kv = rl_z3["kv_cache"]
    lines.append(
        f"RS-GRPO, ZeRO-3 + colocated vLLM at gpu_memory_utilization {rl['gpu_memory_utilization']} on {setup}: "
        f"peak {rl_z3['peak_gib']:.1f} of {plan['gpu']['memory_gib']:.0f} GiB "
        f"({'fits' if rl_z3['fits'] else 'does NOT fit'}, headroom {rl_z3['headroom_gib']:+.1f} GiB); "
        f"KV cache for {rl['prompts_per_step']} prompts × n={rl['n']} × ({rl['prompt_tokens']} prompt + "
        f"{rl['response_tokens']} response) tokens needs {kv['kv_needed_gib_per_gpu']:.1f} GiB per GPU of "
        f"{kv['kv_available_gib_per_gpu']:.1f} GiB available ({_waves(kv['waves'])})."
    )
    same = req["gpus"] == PAPER_GPUS
    lines.append(
        f"Paper setup: {PAPER_GPUS} GPUs for both stages (type not stated in the spec). "
        + ("This plan uses the same GPU count." if same else f"This plan uses {req['gpus']} GPUs instead.")
        + f" Estimated SFT step (global batch {sft['global_batch']}, typical samples) "
        f"{sft['step_seconds_at_typical']:.0f} s; RS-GRPO step {rl['step_seconds']:.0f} s (rollout "
        f"{rl['rollout']['prefill_s'] + rl['rollout']['decode_s']:.0f} s, decode {rl['rollout']['bound']}-bound; "
        f"update {rl['update_seconds']:.0f} s) at MFU {req['mfu']}."
    )
    return lines


def _fit_text(est: dict[str, Any], what: str) -> str:
    state = "fits" if est["fits"] else "does NOT fit"
    return f"{what} needs {est['total_gib']:.1f} GiB per GPU: {state} (headroom {est['headroom_gib']:+.1f} GiB)"


def _waves(waves: int) -> str:
    if waves == 0:
        return "no room left for a KV cache"
    return "one wave" if waves == 1 else f"{waves} waves: the engine queues the rest"


def _gib_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    keys = list(dict.fromkeys(k for _, est in rows for k in est["breakdown_gib"]))
    header = ["variant", *keys, "total", "headroom", "fits"]
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for name, est in rows:
        values = [f"{est['breakdown_gib'].get(k, 0.0):.1f}" for k in keys]
        verdict_cell = "yes" if est["fits"] else "NO"
        lines.append(
            " | ".join([name, *values, f"{est['total_gib']:.1f}", f"{est['headroom_gib']:+.1f}", verdict_cell])
        )
    return lines


def format_plan(plan: dict[str, Any]) -> str:
    p, sft, rl, gpu = plan["parameters"], plan["sft"], plan["rsgrpo"], plan["gpu"]
    out = [
        f"Architecture: {Path(plan['request']['arch_config']).name} on the meta device (no weights)",
        f"  parameters: total {p['total']:,}  vision {p['vision']:,}  language {p['language']:,}  "
        f"trainable in SFT {p['trainable_sft']:,}",
        f"GPU: {plan['request']['gpus']} × {gpu['name']} ({gpu['memory_gib']:.0f} GiB, {gpu['bf16_tflops']:.0f} "
        f"TFLOPS bf16, {gpu['hbm_tb_s']} TB/s); MFU assumed {plan['request']['mfu']}",
        "",
        f"SFT per-GPU memory, GiB (micro-batch tokens: cut-off {sft['cutoff_tokens']}, typical "
        f"{sft['typical_tokens']} = {sft['typical_definition']}):",
    ]
    rows = []
    for r in sft["rows"]:
        name = f"ZeRO-{r['zero_stage']}{' +offload' if r['offload_optimizer'] else ''}"
        rows += [(f"{name} @cut-off", r["at_cutoff"]), (f"{name} @typical", r["at_typical"])]
    out += _gib_table(rows)
    out += [
        "max tokens per micro-batch that fit: "
        + ", ".join(
            f"ZeRO-{r['zero_stage']}{' +offload' if r['offload_optimizer'] else ''} {r['max_tokens_that_fit']}"
            for r in sft["rows"]
        ),
        f"throughput: {sft['tokens_per_s']:,.0f} tokens/s on all GPUs; one optimizer step (global batch "
        f"{sft['global_batch']}) ≈ {sft['step_seconds_at_typical']:.0f} s at typical length",
        "",
        f"RS-GRPO per-GPU memory, GiB ({rl['prompts_per_step']} prompts × n={rl['n']}, prompt {rl['prompt_tokens']} "
        f"+ response {rl['response_tokens']} tokens, micro-batch {rl['micro_batch']}, vLLM TP {rl['tensor_parallel']} "
        f"at gpu_memory_utilization {rl['gpu_memory_utilization']}, sleep mode during the update):",
    ]
    rows = []
    for r in rl["rows"]:
        name = f"ZeRO-{r['zero_stage']}{' +offload' if r['offload_optimizer'] else ''}"
        name += " +ref" if r["reference_model"] else ""
        rows += [(f"{name} rollout", r["rollout_phase"]), (f"{name} update", r["update_phase"])]
    out += _gib_table(rows)
    ro = rl["rollout"]
    out += [
        f"rollout: prefill {ro['prefill_s']:.1f} s + decode {ro['decode_s']:.1f} s ({ro['bound']}-bound), "
        f"{ro['tokens_per_s']:,.0f} generated tokens/s; update {rl['update_seconds']:.1f} s; step ≈ "
        f"{rl['step_seconds']:.0f} s ({rl['time_assumes']})",
        "",
        "Verdict:",
        *[f"  - {line}" for line in plan["verdict"]],
        "",
        "Formulas and assumptions: evisrag_core/capacity/model.py (module docstring). Estimates, not measurements.",
    ]
    return "\n".join(out)
