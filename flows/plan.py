"""`evisrag plan`: will the paper's 7B SFT and RS-GRPO runs fit on N GPUs of a type? (estimates, no GPU needed)

The arithmetic lives in evisrag_core/capacity/model.py and evisrag_core/capacity/plan.py; this module only wires the
command's options to it. No Prefect flow: the command reads the params file (--params) and prints, nothing else.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from evisrag_core.capacity.model import GPUS
from evisrag_core.capacity.plan import PlanRequest, build_plan, format_plan, paper_profiles
from evisrag_core.config import load_params

_DEFAULTS = {f.name: f.default for f in fields(PlanRequest)}


def cmd_plan(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    sft, rsgrpo = params.sft, params.rsgrpo
    if args.profile == "paper":
        sft, rsgrpo = paper_profiles(sft, rsgrpo)
    request = PlanRequest(
        gpus=args.gpus,
        gpu_type=args.gpu_type,
        mfu=args.mfu,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel=args.tp,
        images=args.images,
        kl=args.kl,
        arch_config=args.arch_config,
    )
    plan = build_plan(request, sft, rsgrpo)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan))
    return 0


def register_plan_command(sub: argparse._SubParsersAction) -> None:
    plan = sub.add_parser(
        "plan",
        help="estimate parameters, per-GPU memory and throughput of the 7B paper runs on N GPUs (no GPU needed)",
    )
    plan.add_argument("--gpus", type=int, default=_DEFAULTS["gpus"], help="GPU count (default: 8, as the paper)")
    plan.add_argument("--gpu-type", choices=sorted(GPUS), default=_DEFAULTS["gpu_type"])
    plan.add_argument(
        "--profile",
        choices=["paper", "params"],
        default="paper",
        help="paper: the released SFT/RS-GRPO settings (default); params: the params file's sft/rsgrpo as they are",
    )
    plan.add_argument("--mfu", type=float, default=_DEFAULTS["mfu"], help="model FLOPs utilisation assumed")
    plan.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=_DEFAULTS["gpu_memory_utilization"],
        help="share of each GPU the colocated vLLM engine takes during rollouts",
    )
    plan.add_argument("--tp", type=int, default=_DEFAULTS["tensor_parallel"], help="vLLM tensor-parallel size")
    plan.add_argument("--images", type=int, default=_DEFAULTS["images"], help="images per prompt (top-K)")
    plan.add_argument(
        "--kl",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count a reference model for the KL term (default: when rsgrpo.kl_coef > 0)",
    )
    plan.add_argument("--arch-config", default=_DEFAULTS["arch_config"], help="model config JSON (default: 7B)")
    plan.add_argument("--json", action="store_true", help="print the whole plan as JSON")
    plan.set_defaults(func=cmd_plan)
