"""Profiles as YAML overlays: a key the user set (its value differs from the code default) wins over the profile;
every other key the profile names takes the profile's value. Each effective value is reported with its source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from evisrag_core.config import (
    PAPER_RSGRPO,
    PAPER_SFT,
    ParamsError,
    RSGRPOParams,
    SFTParams,
    parse_params,
    section_sources,
)
from evisrag_core.config import profiles as profiles_module

REPO_ROOT = Path(__file__).resolve().parents[2]


def repository_params() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("section", "written", "key", "value", "source"),
    [
        # the case: the explicit learning rate is used and the dry-run says where it comes from
        ("rsgrpo", {"profile": "paper", "learning_rate": 2.0e-6}, "learning_rate", 2.0e-6, "params file"),
        ("rsgrpo", {"profile": "paper", "learning_rate": 2.0e-6}, "n", 8, "profile paper"),
        ("rsgrpo", {"profile": "paper", "learning_rate": 2.0e-6}, "rollout_batch_size", 32, "profile paper"),
        # the default value written out is no choice: params.yaml lists every key, and the profile must still apply
        ("rsgrpo", {"profile": "paper", "learning_rate": 5.0e-5}, "learning_rate", 1e-6, "profile paper"),
        # compared as the field holds it: YAML reads 5e-5 (no point) as a string, which still is the default
        ("rsgrpo", {"profile": "paper", "learning_rate": "5e-5"}, "learning_rate", 1e-6, "profile paper"),
        ("rsgrpo", {"profile": "paper", "max_new_tokens": 512}, "max_new_tokens", 512, "params file"),
        ("rsgrpo", {"profile": "paper"}, "val_size", 64, "default"),  # a key the profile leaves alone
        ("rsgrpo", {"profile": "paper"}, "profile", "paper", "params file"),
        ("rsgrpo", {"learning_rate": 2.0e-6}, "learning_rate", 2.0e-6, "params file"),
        ("rsgrpo", {}, "learning_rate", 5e-5, "default"),
        ("sft", {"profile": "paper", "max_steps": 100}, "max_steps", 100, "params file"),
        ("sft", {"profile": "paper", "max_steps": 900}, "max_steps", -1, "profile paper"),
        ("sft", {"profile": "paper", "freeze_vision_tower": False}, "freeze_vision_tower", True, "profile paper"),
        ("sft", {"profile": "paper", "deepspeed": None}, "deepspeed", "configs/deepspeed/zero3.json", "profile paper"),
        ("sft", {"profile": "paper", "bf16": "off"}, "bf16", "off", "params file"),
        ("sft", {"profile": "default", "learning_rate": 0.002}, "learning_rate", 0.002, "params file"),
    ],
)
def test_explicit_keys_win_over_the_profile(
    section: str, written: dict[str, Any], key: str, value: object, source: str
) -> None:
    raw = {section: written}
    assert getattr(getattr(parse_params(raw), section), key) == value
    assert section_sources(raw, section)[key] == source


@pytest.mark.parametrize(("section", "released"), [("sft", PAPER_SFT), ("rsgrpo", PAPER_RSGRPO)])
def test_switching_the_repository_params_to_paper_applies_every_released_value(
    section: str, released: dict[str, Any]
) -> None:
    """`dvc exp run -S <section>.profile=paper` on the repository's params.yaml selects the paper run."""
    raw = repository_params()
    raw[section]["profile"] = "paper"
    cfg = getattr(parse_params(raw), section)
    assert {key: getattr(cfg, key) for key in released} == dict(released)
    sources = section_sources(raw, section)
    assert {key for key, source in sources.items() if source == "profile paper"} == set(released)
    assert {key for key, source in sources.items() if source == "params file"} == {"profile"}


def test_the_section_models_apply_the_profile_too() -> None:
    assert RSGRPOParams(profile="paper", learning_rate=2.0e-6).learning_rate == 2.0e-6
    assert RSGRPOParams(profile="paper").num_gpus == 8
    assert SFTParams(profile="paper").cutoff_len == 32000
    paper = RSGRPOParams(profile="paper")
    assert RSGRPOParams.model_validate(paper.model_dump()) == paper  # applying it again changes nothing


def test_an_unknown_profile_names_the_key_and_the_profiles_there_are() -> None:
    with pytest.raises(ParamsError, match=r"rsgrpo\.profile 'papr' does not exist; available: default, paper"):
        parse_params({"rsgrpo": {"profile": "papr"}})


@pytest.mark.parametrize(
    ("profile_text", "message"),
    [
        ("rsgrpo:\n  learning_rat: 1.0e-6\n", r"sets unknown rsgrpo key\(s\) learning_rat; valid keys: "),
        ("rsgrpo:\n  profile: paper\n", r"sets unknown rsgrpo key\(s\) profile"),
        ("sft:\n  learning_rate: 1.0e-6\n", r"has no `rsgrpo:` mapping"),
        ("rsgrpo:\n  n: 1\n", r"rsgrpo\.n: Input should be greater than or equal to 2"),
    ],
)
def test_a_broken_profile_file_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, profile_text: str, message: str
) -> None:
    (tmp_path / "mine.yaml").write_text(profile_text, encoding="utf-8")
    monkeypatch.setattr(profiles_module, "PROFILE_DIR", tmp_path)
    with pytest.raises(ParamsError, match=message):
        parse_params({"rsgrpo": {"profile": "mine"}})
