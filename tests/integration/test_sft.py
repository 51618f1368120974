"""SFT: label masking on a real processed sample, the paper-profile dry-run, learning, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evisrag_core.config import PAPER_SFT, SFTParams, load_params, parse_params
from evisrag_core.data.schema import SFT_FILE
from evisrag_core.sft.preflight import PlanError, plan_sft

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sample(tiny_dataset: Path, tiny_model: tuple):
    from evisrag_core.data.schema import load_conversations
    from evisrag_core.sft.data import SFTCollator

    _, processor = tiny_model
    conversations = load_conversations(tiny_dataset / "train" / SFT_FILE)
    collator = SFTCollator(processor, 3136, 12544, cutoff_len=4096)
    return processor, conversations, collator


def test_labels_cover_exactly_the_assistant_response_its_end_token_and_newline(sample):
    processor, conversations, collator = sample
    example = conversations[0]
    assert len(example.images) == 3
    batch = collator([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tokenizer = processor.tokenizer
    assistant_start = len(ids) - 1 - ids[::-1].index(tokenizer.convert_tokens_to_ids("<|im_start|>"))
    # "<|im_start|>assistant\n" is the prompt's end: every token up to it is masked, token by token.
    header = tokenizer.encode("assistant\n", add_special_tokens=False)
    answer_start = assistant_start + 1 + len(header)
    for position, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if position < answer_start:
            assert label == -100, f"prompt token {position} ({tokenizer.decode([token])!r}) carries a label"
        elif label != -100:
            assert label == token
    labelled = [t for t, label in zip(ids, labels, strict=True) if label != -100]
    assert tokenizer.decode(labelled) == example.response + "<|im_end|>\n"  # LLaMA-Factory's target (spec §8)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert ids.count(image_pad) == 3 * 16  # three 112×112 images, 16 merged patches each, all masked
    assert all(label == -100 for token, label in zip(ids, labels, strict=True) if token == image_pad)


def test_a_multi_turn_record_trains_every_assistant_turn_and_no_user_turn(sample, tiny_dataset: Path):
    """LLaMA-Factory's default for multi-turn sharegpt data: each assistant turn (with its <|im_end|> and newline)
    carries loss; the second user turn's text and its image do not. Images go to the user turn holding their
    marker."""
    from evisrag_core.data.schema import parse_sft_record

    processor, conversations, collator = sample
    first = conversations[0]
    root = tiny_dataset / "train"
    row = {
        "id": "two-turns",
        "messages": [
            {"role": "user", "content": "<image><image> Which image is red?"},
            {"role": "assistant", "content": "The first one."},
            {"role": "user", "content": "And this one: <image> what colour?"},
            {"role": "assistant", "content": first.response},
        ],
        "images": [str(Path(path).relative_to(root)) for path in first.images],
    }
    example = parse_sft_record(row, root, "sft.jsonl:1")
    assert (example.history, example.user_text) == (
        (("<image><image> Which image is red?", "The first one."),),
        "And this one: <image> what colour?",
    )
    batch = collator([example])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tokenizer = processor.tokenizer
    runs, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs, current = [*runs, current], []
    runs += [current] if current else []
    assert [tokenizer.decode(run) for run in runs] == ["The first one.<|im_end|>\n", first.response + "<|im_end|>\n"]
    text = tokenizer.decode(ids)
    vision_start = tokenizer.convert_tokens_to_ids("<|vision_start|>")
    second_user = text.index("And this one:")
    assert text[:second_user].count("<|vision_start|>") == 2 and ids.count(vision_start) == 3


@pytest.mark.parametrize(
    ("roles", "message"),
    [
        (["user", "user", "assistant"], "alternating"),
        (["user", "assistant", "user"], "alternating"),
        (["assistant", "user"], "alternating"),
    ],
)
def test_turns_out_of_order_are_a_bad_record(roles: list[str], message: str, tmp_path: Path):
    from evisrag_core.data.schema import parse_sft_record
    from evisrag_core.io import BadRecordError

    row = {"messages": [{"role": r, "content": "<image> x" if i == 0 else "y"} for i, r in enumerate(roles)]}
    with pytest.raises(BadRecordError, match=message):
        parse_sft_record({**row, "images": ["a.png"]}, tmp_path, "sft.jsonl:3")


def test_padding_is_masked_and_shorter_rows_keep_their_labels(sample):
    _, conversations, collator = sample
    pair = [conversations[0], conversations[1]]
    batch = collator(pair)
    singles = [collator([c]) for c in pair]
    for row, single in enumerate(singles):
        n = single["input_ids"].shape[1]
        assert batch["labels"][row, :n].tolist() == single["labels"][0].tolist()
        assert (batch["labels"][row, n:] == -100).all()
        assert (batch["attention_mask"][row, n:] == 0).all()
    assert batch["pixel_values"].shape[0] == sum(s["pixel_values"].shape[0] for s in singles)


def test_placeholder_count_must_match_images(tmp_path: Path):
    from evisrag_core.data.schema import parse_sft_record
    from evisrag_core.io import BadRecordError

    (tmp_path / "a.png").write_bytes(b"")
    row = {
        "id": "x",
        "messages": [{"role": "user", "content": "q<image>"}, {"role": "assistant", "content": "r"}],
        "images": ["a.png", "a.png"],
    }
    with pytest.raises(BadRecordError, match="placeholders"):
        parse_sft_record(row, tmp_path, "sft.jsonl:1")


def _paper(**overrides) -> SFTParams:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["sft"].update(profile="paper", **overrides)
    return parse_params(raw).sft


def test_paper_profile_dry_run_builds_the_released_run(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    cfg = _paper(deepspeed=None)  # a key at its default value is no choice: the profile applies (config/profiles.py)
    for key, value in PAPER_SFT.items():
        assert getattr(cfg, key) == value
    plan = plan_sft(cfg, seed=0, n_examples=40_000)
    assert plan.global_batch == 64
    assert plan.steps == 625
    assert plan.deepspeed["zero_optimization"]["stage"] == 3
    assert plan.launch_command.startswith("torchrun --nproc_per_node=8 -m flows.cli")
    args = plan.training_arguments
    assert (args["learning_rate"], args["warmup_steps"], args["lr_scheduler_type"]) == (5e-7, 200, "cosine")
    assert (args["gradient_accumulation_steps"], args["save_steps"], args["bf16"]) == (8, 100, True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"warmup_steps": 200, "n_examples": 640}, "warmup_steps=200"),
        ({"image_max_pixels": 9_000_000, "cutoff_len": 32000}, "cutoff_len"),
        ({"deepspeed": "configs/deepspeed/nope.json"}, "not found"),
        ({"num_gpus": 4, "deepspeed": None}, "without sft.deepspeed"),
    ],
)
def test_dry_run_refuses_inconsistent_settings(monkeypatch, change, message):
    monkeypatch.chdir(REPO_ROOT)
    n_examples = change.pop("n_examples", 40_000)
    cfg = _paper().model_copy(update=change)
    with pytest.raises(PlanError, match=message):
        plan_sft(cfg, seed=0, n_examples=n_examples)


def test_dry_run_refuses_a_deepspeed_batch_that_contradicts_params(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO_ROOT)
    ds = json.loads((REPO_ROOT / "configs/deepspeed/zero3.json").read_text())
    ds["train_batch_size"] = 32
    bad = tmp_path / "zero3.json"
    bad.write_text(json.dumps(ds))
    with pytest.raises(PlanError, match="train_batch_size=32 but params give 64"):
        plan_sft(_paper().model_copy(update={"deepspeed": str(bad)}), seed=0, n_examples=40_000)


def test_default_params_dry_run_passes(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    params = load_params(REPO_ROOT / "params.yaml")
    plan = plan_sft(params.sft, params.seed, params.data.embedded.n_sft)
    assert plan.launch_command == "evisrag --params params.yaml sft"


def test_loss_decreases_over_a_short_run(tiny_dataset: Path, tiny_model_dir: Path, tmp_path: Path):
    from evisrag_core.modeling import load_model_and_processor
    from evisrag_core.sft.train import train_sft

    cfg = SFTParams(
        model_dir=str(tiny_model_dir),
        out_dir=str(tmp_path / "sft"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        learning_rate=2e-3,
        max_steps=30,
        per_device_train_batch_size=4,
        warmup_steps=2,
        logging_steps=1,
        save_steps=100,
        freeze_vision_tower=True,
    )
    losses: dict[int, float] = {}
    summary = train_sft(
        cfg,
        tiny_dataset / "train" / SFT_FILE,
        0,
        on_log=lambda step, logs: losses.update({step: logs["loss"]}) if "loss" in logs else None,
    )
    assert summary["global_step"] == 30
    first, last = [losses[s] for s in sorted(losses)[:3]], [losses[s] for s in sorted(losses)[-3:]]
    assert sum(last) / 3 < 0.9 * sum(first) / 3, losses
    model, _ = load_model_and_processor(cfg.out_dir)
    base, _ = load_model_and_processor(tiny_model_dir)
    assert all(p.requires_grad for p in model.parameters())  # saved model is a normal, trainable checkpoint
    vision = dict(base.model.visual.named_parameters())
    for name, param in model.model.visual.named_parameters():
        assert param.equal(vision[name]), f"frozen vision weight {name} changed"


def test_stop_at_step_stops_early_on_the_whole_runs_schedule(tiny_dataset: Path, tiny_model_dir: Path, tmp_path):
    """stop_at_step=3 of max_steps=8: three steps, learning rates those of the 8-step schedule's first three, and the
    final model written (the under-trained start of the RS-GRPO ablation)."""
    from evisrag_core.sft.train import train_sft

    def run(name: str, **change) -> dict[int | str, float]:  # learning rate per step, and global_step
        cfg = SFTParams(
            model_dir=str(tiny_model_dir),
            out_dir=str(tmp_path / name / "sft"),
            checkpoint_dir=str(tmp_path / name / "ckpt"),
            max_steps=8,
            per_device_train_batch_size=2,
            warmup_steps=1,
            logging_steps=1,
            save_steps=100,
            **change,
        )
        rates: dict[int | str, float] = {}
        summary = train_sft(
            cfg,
            tiny_dataset / "train" / SFT_FILE,
            0,
            on_log=lambda step, logs: rates.update({step: logs["learning_rate"]}) if "learning_rate" in logs else None,
        )
        assert (Path(cfg.out_dir) / "model.safetensors").is_file()
        return {"global_step": summary["global_step"], **rates}

    stopped, whole = run("stopped", stop_at_step=3), run("whole")
    assert stopped["global_step"] == 3 and whole["global_step"] == 8
    assert [stopped[s] for s in (1, 2, 3)] == [whole[s] for s in (1, 2, 3)]
    assert stopped[3] > whole[7]  # still high: the cosine decay belongs to the 8-step run


def test_stop_at_step_past_the_end_is_refused():
    with pytest.raises(ValueError, match="stop_at_step"):
        SFTParams(max_steps=10, stop_at_step=11)


@pytest.mark.slow
def test_sft_resumes_after_sigkill(tiny_dataset: Path, tiny_model_dir: Path, tmp_path: Path):
    """Kill the real `evisrag sft` process after a checkpoint, rerun it, and get the uninterrupted run's result."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["out_dir"] = str(tiny_dataset)
    raw["tracking"]["mlflow_tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def params_for(name: str) -> Path:
        raw["sft"].update(
            model_dir=str(tiny_model_dir),
            out_dir=str(tmp_path / name / "model"),
            checkpoint_dir=str(tmp_path / name / "ckpt"),
            log_file=str(tmp_path / name / "loss.json"),
            max_steps=16,
            save_steps=2,
            logging_steps=1,
            warmup_steps=1,
            per_device_train_batch_size=4,
        )
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EVISRAG_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    command = [sys.executable, "-m", "flows.cli", "--params"]
    clean = subprocess.run(
        [*command, str(params_for("clean")), "sft"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert clean.returncode == 0, clean.stderr[-3000:]

    killed_params = params_for("killed")
    # Its own process group: the kill takes the stage and its temporary Prefect server down together, as a crash
    # of the machine's job would, and leaves no server behind.
    victim = subprocess.Popen(
        [*command, str(killed_params), "sft"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoints = tmp_path / "killed" / "ckpt"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("checkpoint-6")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "model").exists(), "the final model must not exist before training ends"

    resumed = subprocess.run(
        [*command, str(killed_params), "sft"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout

    def final_losses(name: str) -> dict[int, float]:
        rows = json.loads((tmp_path / name / "loss.json").read_text())
        return {row["step"]: row["loss"] for row in rows if "loss" in row}

    clean_losses, resumed_losses = final_losses("clean"), final_losses("killed")
    assert sorted(resumed_losses) == list(range(1, 17))  # one log, as if never interrupted
    for step in resumed_losses:
        assert resumed_losses[step] == pytest.approx(clean_losses[step], rel=1e-4), step
    from evisrag_core.modeling import load_model_and_processor

    load_model_and_processor(tmp_path / "killed" / "model")


@pytest.mark.parametrize(
    ("folders", "expected"),
    [
        ({}, None),
        ({"checkpoint-2": "{}", "checkpoint-10": "{}"}, "checkpoint-10"),  # numeric, not lexical, order
        ({"checkpoint-2": "{}", "checkpoint-4": None}, "checkpoint-2"),  # killed before trainer_state.json
        ({"checkpoint-2": "{}", "checkpoint-4": '{"glob'}, "checkpoint-2"),  # torn trainer_state.json
        ({"checkpoint-4": None}, None),
    ],
)
def test_resume_picks_the_newest_complete_checkpoint(tmp_path: Path, folders: dict, expected: str | None):
    from evisrag_core.sft.train import last_checkpoint

    for name, state in folders.items():
        (tmp_path / name).mkdir()
        if state is not None:
            (tmp_path / name / "trainer_state.json").write_text(state)
    found = last_checkpoint(tmp_path)
    assert found == (str(tmp_path / expected) if expected else None)
