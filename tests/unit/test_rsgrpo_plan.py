"""`evisrag rsgrpo --dry-run`: the paper profile's plan, and a clear refusal of each inconsistent setting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evisrag_core.config import PAPER_RSGRPO, RSGRPOParams, parse_params
from evisrag_core.rsgrpo.preflight import PlanError, plan_rsgrpo

REPO_ROOT = Path(__file__).resolve().parents[2]
ZERO2, ZERO3 = (str(REPO_ROOT / "configs" / "deepspeed" / f"zero{s}.json") for s in (2, 3))
STEPS_1000 = 468  # paper: ceil(16 epochs × (1000 - 64 validation prompts) / 32 prompts per step)


def paper(**overrides: object) -> RSGRPOParams:
    """The paper profile as params.yaml would give it, then `overrides` (validated like a real params file)."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["rsgrpo"]
    return RSGRPOParams(**{**raw, "profile": "paper"}).model_copy(update={"deepspeed": ZERO2, **overrides})


def test_the_paper_profile_plans_8_ranks_of_zero2_with_the_released_settings() -> None:
    cfg = paper()
    plan = plan_rsgrpo(cfg, seed=0, n_prompts=1000)
    assert plan.world_size == 8 and plan.rollout_batch == 32 and plan.responses_per_step == 256
    # packed by the reference's 16536-token budget: DeepSpeed is told micro-batches of 1, at most 32 per step
    assert (plan.responses_per_rank, plan.micro_batch, plan.micro_batches_per_rank) == (32, 1, 32)
    assert cfg.micro_batch_tokens == 15000 + 1536 and cfg.micro_batch_size == 0
    assert "per rank 32 responses packed into micro-batches by 16536 prompt + response tokens" in plan.notes[0]
    assert cfg.val_size == 64 and plan.train_prompts == 1000 - 64  # val_size held out of rl.jsonl
    assert plan.steps == STEPS_1000  # ceil(16 epochs × 936 prompts / 32 per step)
    ds = plan.deepspeed
    assert ds["zero_optimization"]["stage"] == 2
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        256,
        1,
        32,
    )
    assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 8
    assert ds["gradient_clipping"] == 1.0 and ds["bf16"]["enabled"] is True
    assert plan.vllm_engine_args == {
        "model": "models/sft",
        "dtype": "bfloat16",
        "limit_mm_per_prompt": {"image": 5, "video": 0},
        "max_model_len": 15000 + 1536,
    }
    assert plan.sampling["train"] == {"n": 8, "temperature": 1.0, "top_p": 1.0, "max_tokens": 1536}
    assert plan.sampling["validation"] == {"n": 1, "temperature": 0.1, "top_p": 0.95, "every": 10}
    assert plan.launch_command == "torchrun --nproc_per_node=8 -m flows.cli --params params.yaml rsgrpo"


def test_the_paper_profile_sets_every_released_key() -> None:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["rsgrpo"]["profile"] = "paper"
    cfg = parse_params(raw).rsgrpo
    assert all(getattr(cfg, key) == value for key, value in PAPER_RSGRPO.items())
    assert (cfg.deepspeed, cfg.num_gpus, cfg.rollout_seeding) == ("configs/deepspeed/zero2.json", 8, "group")


def test_steps_from_epochs_wait_for_the_data_and_a_separate_val_file_keeps_every_prompt() -> None:
    assert plan_rsgrpo(paper(), seed=0, n_prompts=None).steps is None
    assert plan_rsgrpo(paper(), 0, n_prompts=640, separate_val_file=True).steps == 16 * 640 // 32


def test_the_default_profile_runs_in_one_process() -> None:
    cfg = parse_params(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())).rsgrpo
    plan = plan_rsgrpo(cfg, seed=0, n_prompts=400)
    assert plan.world_size == 1 and plan.deepspeed is None and plan.steps == cfg.steps
    assert plan.launch_command == "evisrag --params params.yaml rsgrpo"


def test_the_code_defaults_alone_pass_their_own_dry_run() -> None:
    plan = plan_rsgrpo(RSGRPOParams(), seed=0, n_prompts=400, params_file="exp/a.yaml")
    assert plan.steps == 60 and plan.launch_command == "evisrag --params exp/a.yaml rsgrpo"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollout_batch_size": 30}, r"rollout_batch_size=30 is not divisible by the 8 ranks"),
        ({"micro_batch_size": 3, "micro_batch_tokens": 0}, r"micro_batch_size=3 does not divide a rank's 32 responses"),
        ({"micro_batch_size": 64, "micro_batch_tokens": 0}, r"micro_batch_size=64 exceeds a rank's 32 responses"),
        ({"micro_batch_tokens": 16000}, r"micro_batch_tokens=16000 < max_prompt_length \+ max_new_tokens = 16536"),
        ({"n": 1}, r"rsgrpo\.n=1: the group std"),
        ({"clip_low": 1.0}, r"clip_low=1\.0 must be in \[0, 1\)"),
        ({"clip_high": -0.1}, r"clip_high=-0\.1 must be ≥ 0"),
        ({"dual_clip": 1.2}, r"dual_clip=1\.2 must exceed 1 \+ clip_high"),
        ({"min_length": 1100}, r"min_length=1100 ≥ max_length - buffer_length = 1024"),
        ({"max_new_tokens": 100}, r"max_new_tokens=100 < min_length=200"),
        ({"max_new_tokens": 2048}, r"max_new_tokens=2048 > max_length=1536"),
        ({"image_max_pixels": 4_000_000}, r"take up to 15306 tokens, not below rsgrpo\.max_prompt_length=15000"),
        ({"kl_coef": 0.01, "model_dir": "models/nowhere"}, r"kl_coef=0\.01 needs a reference model"),
        ({"deepspeed": ZERO3}, r"ZeRO-3 partitions the parameters"),
        ({"deepspeed": "configs/deepspeed/missing.json"}, r"missing\.json not found"),
        ({"deepspeed": None}, r"num_gpus > 1 without rsgrpo\.deepspeed"),
        ({"rollout_seeding": "batch"}, r"needs rsgrpo\.rollout_seeding: group"),
        ({"save_every": 1000}, r"save_every=1000 > 468 steps"),
        ({"filter_low": 7.0}, r"filter_low=7\.0 ≥ filter_high=6\.9"),
    ],
)
def test_inconsistent_settings_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_rsgrpo(paper(**overrides), seed=0, n_prompts=1000)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(PlanError) as err:
        plan_rsgrpo(paper(rollout_batch_size=30, n=1, dual_clip=1.1), seed=0, n_prompts=1000)
    assert str(err.value).count("\n  - ") == 3


def test_a_deepspeed_json_that_contradicts_params_is_refused(tmp_path: Path) -> None:
    ds = json.loads(Path(ZERO2).read_text())
    ds["train_batch_size"] = 64
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(PlanError, match=r'train_batch_size=64 but rsgrpo params give 256; set it to "auto"'):
        plan_rsgrpo(paper(deepspeed=str(path)), seed=0, n_prompts=1000)


def test_kl_with_the_sft_models_folder_as_reference_is_accepted() -> None:
    assert plan_rsgrpo(paper(kl_coef=0.01), seed=0, n_prompts=1000).steps == STEPS_1000  # models/sft: sft writes it


def _dry_run(params: Path) -> subprocess.CompletedProcess[str]:
    cli = [sys.executable, "-m", "flows.cli", "--params", str(params), "rsgrpo", "--dry-run"]
    return subprocess.run(cli, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_the_cli_dry_run_prints_every_value_with_its_source_the_plan_and_exits_2_on_problems(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["rsgrpo"].update(profile="paper", learning_rate=2.0e-6)  # the case: the explicit key wins
    raw["data"]["out_dir"] = str(tmp_path / "no-data")
    params = tmp_path / "exp.yaml"
    params.write_text(yaml.safe_dump(raw))
    done = _dry_run(params)
    assert done.returncode == 0, done.stderr[-2000:]
    table, rest = done.stdout.split("\nplan:\n")
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert set(rows) == set(RSGRPOParams.model_fields)
    assert rows["learning_rate"] == ["2.0e-06", "params", "file"]
    assert rows["rollout_batch_size"] == ["32", "profile", "paper"]
    assert rows["val_size"] == ["64", "default"]
    printed = json.loads(rest[: rest.index("\nlaunch with:")])
    assert printed["world_size"] == 8 and printed["deepspeed"]["zero_optimization"]["stage"] == 2
    assert printed["steps"] is None  # 16 epochs, but no rl.jsonl yet
    assert f"torchrun --nproc_per_node=8 -m flows.cli --params {params} rsgrpo" in done.stdout  # the file given

    # The default profile on 2 ranks with 3 prompt groups per step: they cannot be shared evenly.
    raw["rsgrpo"].update(profile="default", num_gpus=2, deepspeed=ZERO2, rollout_seeding="group", rollout_batch_size=3)
    params.write_text(yaml.safe_dump(raw))
    done = _dry_run(params)
    assert done.returncode == 2 and not done.stdout
    assert "rollout_batch_size=3 is not divisible by the 2 ranks" in done.stderr


@pytest.mark.parametrize(("text", "message"), [("", "is empty"), ("[1, 2]\n", "expected a mapping")])
def test_the_cli_dry_run_refuses_an_empty_or_non_mapping_params_file(tmp_path: Path, text: str, message: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    done = _dry_run(params)
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.startswith(f"error: {params}") and message in done.stderr and "Traceback" not in done.stderr
