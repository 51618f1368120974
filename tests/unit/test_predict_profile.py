"""`predict.profile: reference`: the reference's prediction settings in one switch, under the keys a user sets; and
`predict.backend: auto`, which picks vLLM only where it imports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from evisrag_core.backend_choice import BackendChoice, choose_backend, resolve_backend
from evisrag_core.config import ParamsError, PredictParams, parse_params, section_sources

REPO_ROOT = Path(__file__).resolve().parents[2]
# OpenBMB/VisRAG f35d232 src/evisrag/predict.py and evisrag_scripts/predict.sh, spec §7/§8: what a reference run uses
REFERENCE = {
    "backend": "auto",
    "prompt_template": "repository",
    "top_k": 3,
    "max_images_per_prompt": 5,
    "temperature": 0.0,
    "top_p": 1.0,
    "repetition_penalty": 1.05,
    "max_new_tokens": 2048,
    "batch_size": 1,
    "min_pixels": 3136,
    "max_pixels": 12_845_056,
}


def repository_params() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))


def test_switching_the_repository_params_to_reference_applies_every_reference_value() -> None:
    raw = repository_params()
    raw["predict"]["profile"] = "reference"
    cfg = parse_params(raw).predict
    assert {key: getattr(cfg, key) for key in REFERENCE} == REFERENCE
    sources = section_sources(raw, "predict")
    assert {key for key, source in sources.items() if source == "profile reference"} == set(REFERENCE)
    assert {key for key, source in sources.items() if source == "params file"} == {"profile"}


def test_the_default_profile_is_todays_prediction() -> None:
    cfg = parse_params(repository_params()).predict
    assert (cfg.profile, cfg.backend, cfg.method, cfg.max_new_tokens, cfg.max_pixels, cfg.batch_size) == (
        "default",
        "transformers",
        "evidence",
        256,
        12544,
        16,
    )
    assert set(section_sources(repository_params(), "predict").values()) == {"default"}


@pytest.mark.parametrize(
    ("written", "key", "value", "source"),
    [
        ({"profile": "reference", "batch_size": 8}, "batch_size", 8, "params file"),  # faster, on purpose
        ({"profile": "reference", "batch_size": 8}, "max_new_tokens", 2048, "profile reference"),
        ({"profile": "reference", "backend": "vllm"}, "backend", "vllm", "params file"),
        ({"profile": "reference", "max_pixels": 1_568_000}, "max_pixels", 1_568_000, "params file"),
        # written at its default value: no choice, the profile's value applies (the rule of config/profiles.py)
        ({"profile": "reference", "max_new_tokens": 256}, "max_new_tokens", 2048, "profile reference"),
        ({"profile": "reference", "backend": "transformers"}, "backend", "auto", "profile reference"),
        # a key the profile leaves alone
        ({"profile": "reference", "method": "cocot"}, "method", "cocot", "params file"),
        ({"profile": "reference"}, "model_dir", "models/rsgrpo", "default"),
        ({"max_new_tokens": 2048}, "max_new_tokens", 2048, "params file"),
    ],
)
def test_keys_a_user_sets_win_over_the_reference_profile(
    written: dict[str, Any], key: str, value: object, source: str
) -> None:
    raw = {"predict": written}
    assert getattr(parse_params(raw).predict, key) == value
    assert section_sources(raw, "predict")[key] == source


def test_the_section_model_applies_the_profile_too() -> None:
    assert PredictParams(profile="reference").max_pixels == 12_845_056
    assert PredictParams(profile="reference", temperature=0.1).temperature == 0.1


@pytest.mark.parametrize(
    ("written", "message"),
    [
        ({"profile": "paper"}, "has no `predict:` mapping"),  # paper.yaml sets the training sections only
        ({"profile": "refrence"}, "predict.profile 'refrence' does not exist"),
        ({"backend": "tgi"}, "predict.backend"),
        ({"method": "COCOT"}, "predict.method"),
    ],
)
def test_a_bad_predict_profile_backend_or_method_is_a_params_error(written: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        parse_params({"predict": written})


@pytest.mark.parametrize(
    ("setting", "problem", "name", "note"),
    [
        ("auto", None, "vllm", "vLLM's environment is built here"),
        ("auto", ".venv-vllm/bin/python not found", "transformers", ".venv-vllm/bin/python not found"),
        ("transformers", None, "transformers", None),
        ("vllm", ".venv-vllm/bin/python not found", "vllm", None),  # fails later with `make vllm-env`
        ("transformers", ".venv-vllm/bin/python not found", "transformers", None),
    ],
)
def test_auto_picks_vllm_only_where_its_environment_is_built(
    setting: str, problem: str | None, name: str, note: str | None
) -> None:
    choice = choose_backend(setting, problem)
    assert choice.name == name
    if note is None:
        assert choice == BackendChoice(name, None)
    else:
        assert note in (choice.note or "")


def test_resolving_auto_without_vllm_logs_the_fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("EVISRAG_VLLM_PYTHON", str(tmp_path / "no-venv" / "python"))
    with caplog.at_level("WARNING", logger="evisrag_core.backend_choice"):
        assert resolve_backend("auto") == "transformers"
    assert "predicting with the transformers backend" in caplog.text and "make vllm-env" in caplog.text


def test_vllm_env_problem_looks_for_vllms_python(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from evisrag_core.backend_choice import vllm_env_problem

    python = tmp_path / "venv" / "bin" / "python"
    monkeypatch.setenv("EVISRAG_VLLM_PYTHON", str(python))
    assert vllm_env_problem() == f"{python} not found; `make vllm-env` builds it"
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert vllm_env_problem() is None
