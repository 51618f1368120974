"""The `evisrag` command line: scoring a prediction file, answering one question, and params errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_PIXELS, MakeTestSplit
from PIL import Image

from evisrag_core.answer_view import read_response, render_answer
from evisrag_core.config import PredictParams
from evisrag_core.predict import Decoding, Request, TransformersBackend
from evisrag_core.prompt_methods import get_method
from flows.cli import main
from flows.pipeline import stage_environment

QUERY = "What colour is the square on the red background?"


def tagged(answer: str) -> str:
    return f"<observe>o</observe>\n<evidence>[1]: e</evidence>\n<think>t</think>\n<answer>{answer}</answer>"


def question(qid: int, answer: list[str], is_sufficient: bool = True) -> dict[str, Any]:
    return {
        "qid": qid,
        "query": f"question {qid}?",
        "image": [f"images/{qid}_1.png", f"images/{qid}_2.png", f"images/{qid}_3.png"],
        "answer": answer,
        "is_sufficient": is_sufficient,
    }


def write_params(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def images(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"page{i + 1}.png"
        Image.new("RGB", (112, 112), (40 * i, 80, 200)).save(path)
        paths.append(str(path))
    return paths


def test_evaluate_a_reference_prediction_file(
    make_test_split: MakeTestSplit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = make_test_split(
        "ChartQA",
        [
            question(101, ["Paris"]),
            question(102, ["42"]),
            question(103, ["blue"]),
            question(104, [], is_sufficient=False),
        ],
    )
    preds = [  # the reference predict.py's rows: int qids, the image paths used, the raw generation
        {"qid": 104, "imgs": question(104, [])["image"], "pred": tagged("insufficient to answer")},
        {"qid": 101, "imgs": question(101, [])["image"], "pred": tagged("Paris")},
        {"qid": 102, "imgs": question(102, [])["image"], "pred": tagged("41")},
        {"qid": 103, "imgs": question(103, [])["image"], "pred": tagged("Blue.")},
    ]
    pred_file = tmp_path / "ChartQA.jsonl"
    pred_file.write_text("".join(json.dumps(row) + "\n" for row in preds), encoding="utf-8")
    out = tmp_path / "eval" / "metrics.json"

    code = main(["evaluate", "--data", str(split), "--preds", str(pred_file), "--out", str(out)])

    assert code == 0
    metrics = json.loads(out.read_text(encoding="utf-8"))
    assert metrics["global_em"] == pytest.approx(3 / 4)
    assert metrics["issuff_em"] == pytest.approx(2 / 3)
    assert metrics["unsuff_em"] == pytest.approx(1.0)
    assert (metrics["cnt_global"], metrics["cnt_issuff"], metrics["cnt_unsuff"]) == (4, 3, 1)
    assert json.loads(capsys.readouterr().out) == metrics


def test_evaluate_a_file_with_a_missing_question_fails_with_exit_code_2(
    make_test_split: MakeTestSplit, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = make_test_split("ChartQA", [question(1, ["a"]), question(2, ["b"])])
    pred_file = tmp_path / "preds.jsonl"
    pred_file.write_text(json.dumps({"qid": 1, "imgs": [], "pred": tagged("a")}) + "\n", encoding="utf-8")
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(split), "--preds", str(pred_file), "--out", str(out)]) == 2
    assert "1 of 2 test questions have no prediction: 2" in capsys.readouterr().err
    assert not out.exists()


def _answer(tmp_path: Path, model_dir: Path, *flags: str) -> tuple[int, list[str]]:
    params = write_params(tmp_path / "params.yaml", {"predict": {"model_dir": str(tmp_path / "not-this-one")}})
    pages = images(tmp_path / "pages", 3)
    argv = ["--params", str(params), "answer", "--query", QUERY, "--images", *pages]
    return main([*argv, "--model", str(model_dir), "--max-new-tokens", "8", *flags]), pages


def _expected_text(tiny_model: tuple[Any, Any], pages: list[str]) -> str:
    model, processor = tiny_model
    cfg = PredictParams()
    sampling = Decoding(cfg.temperature, cfg.top_p, cfg.repetition_penalty, 8)
    backend = TransformersBackend(model, processor, sampling, cfg.prompt_template, TINY_PIXELS)
    return backend.generate([Request("cli", QUERY, pages, pages)])[0]


def test_answer_raw_prints_the_generation(
    tiny_model_dir: Path, tiny_model: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, pages = _answer(tmp_path, tiny_model_dir, "--raw")
    out = capsys.readouterr().out
    assert code == 0
    assert out == _expected_text(tiny_model, pages) + "\n"


def test_answer_shows_the_answer_and_each_images_evidence_and_warns_on_a_broken_format(
    tiny_model_dir: Path, tiny_model: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, pages = _answer(tmp_path, tiny_model_dir)
    captured = capsys.readouterr()
    view = read_response(_expected_text(tiny_model, pages), pages, get_method("evidence").tags)
    assert code == 0
    assert captured.out == render_answer(view) + "\n"
    assert captured.out.startswith("Answer: ") and f"  [3] {pages[2]}: " in captured.out
    # 8 tokens of a random tiny model: never the four blocks, so the warning is there, on stderr only
    last_err_line = captured.err.strip().splitlines()[-1]  # after the model loader's progress bar
    assert last_err_line.startswith("warning: the response does not follow the format (")
    assert "warning" not in captured.out


def test_answer_json_prints_the_fields(
    tiny_model_dir: Path, tiny_model: tuple[Any, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, pages = _answer(tmp_path, tiny_model_dir, "--json")
    captured = capsys.readouterr()
    fields = json.loads(captured.out)
    assert code == 0 and "warning" not in captured.err  # the JSON's format_ok and problems say it
    assert fields["raw"] == _expected_text(tiny_model, pages)
    assert (fields["query"], fields["method"], fields["format_ok"]) == (QUERY, "evidence", False)
    assert [item["image"] for item in fields["evidence"]] == pages


@pytest.mark.parametrize(
    ("make_images", "message"),
    [
        (lambda tmp: [*images(tmp / "p", 2), str(tmp / "p" / "absent.png")], "error: image(s) not found: "),
        (lambda tmp: images(tmp / "p", 6), "error: 6 images given; the model takes at most 5"),
    ],
)
def test_answer_refuses_bad_images_before_loading_a_model_with_exit_2(
    tmp_path: Path, make_images: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(tmp_path / "params.yaml", {"seed": 0})
    paths = make_images(tmp_path)
    argv = ["--params", str(params), "answer", "--query", QUERY, "--images", *paths]
    assert main([*argv, "--model", str(tmp_path / "no-model-here")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    if "not found" in message:
        assert err.rstrip().endswith("absent.png")


def test_unknown_params_key_exits_2_and_lists_the_valid_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_params(tmp_path / "bad.yaml", {"predict": {"topk": 3}})
    assert main(["--params", str(bad), "metrics"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "unknown key 'predict.topk'" in err
    assert "valid keys here: " + ", ".join(sorted(PredictParams.model_fields)) in err


def test_missing_params_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", str(tmp_path / "absent.yaml"), "metrics"]) == 2
    assert "absent.yaml not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "path", ["/usr/bin:/bin", "", "{scripts}:/usr/bin", "/usr/bin:{scripts}"], ids=["plain", "empty", "first", "last"]
)
def test_pipeline_puts_its_own_scripts_first_on_the_stage_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """dvc.yaml stages run `evisrag ...`: `.venv/bin/evisrag pipeline` without an activated venv must find it."""
    scripts = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", path.format(scripts=scripts))
    entries = stage_environment()["PATH"].split(os.pathsep)
    assert entries[0] == scripts
    assert entries.count(scripts) == 1
    assert entries[1:] == [e for e in path.format(scripts=scripts).split(os.pathsep) if e and e != scripts]


@pytest.mark.parametrize(("text", "message"), [("", "is empty; copy the repository's params.yaml"), ("3\n", "mapping")])
def test_an_empty_or_non_mapping_params_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    assert main(["--params", str(path), "metrics"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and message in err


def test_sft_dry_run_shows_each_value_with_its_source_and_launches_with_the_given_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the profile's configs/deepspeed/zero3.json
    params = write_params(
        tmp_path / "exp.yaml",
        {"data": {"out_dir": str(tmp_path / "no-data")}, "sft": {"profile": "paper", "max_steps": 700}},
    )
    assert main(["--params", str(params), "sft", "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("\nplan:\n")[0].splitlines()[2:]}
    assert rows["max_steps"] == ["700", "params", "file"]
    assert rows["learning_rate"] == ["5.0e-07", "profile", "paper"]
    assert rows["out_dir"] == ["models/sft", "default"]
    assert out.rstrip().endswith(f"torchrun --nproc_per_node=8 -m flows.cli --params {params} sft")


@pytest.mark.parametrize(
    ("stage", "section", "changed", "shown"),
    [
        ("download", "data", {"embedded": {"n_sft": 10}}, ("embedded.n_sft", "10")),
        ("model", "model", {"out_dir": "models/other"}, ("out_dir", "models/other")),
        ("predict", "predict", {"temperature": 0.5}, ("temperature", "0.5")),
        ("evaluate", "evaluate", {"on_bad_record": "skip"}, ("on_bad_record", "skip")),
        ("report", "report", {"out_dir": "reports/other"}, ("out_dir", "reports/other")),
    ],
)
def test_stage_dry_run_shows_its_section_with_sources_and_runs_nothing(
    stage: str,
    section: str,
    changed: dict[str, Any],
    shown: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "exp.yaml", {section: changed})
    assert main(["--params", str(params), stage, "--dry-run"]) == 0
    out = capsys.readouterr().out
    settings, command = out.split("\nrun with:\n")
    table, *notes = settings.split("\n\n")  # predict adds the backend it would run on here
    assert notes == (["backend on this machine: transformers\n"] if stage == "predict" else [])
    assert table.startswith(f"{section}: every hyper-parameter in effect, read from {params}")
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in table.strip().splitlines()[2:]}
    key, value = shown
    assert rows[key] == f"{value} params file"
    assert all(source.endswith("default") for name, source in rows.items() if name != key)
    assert command.strip() == f"evisrag --params {params} {stage}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # nothing ran: no data, model or Prefect files


def test_predict_dry_run_shows_the_reference_profile_and_the_backend_it_runs_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVISRAG_VLLM_PYTHON", str(tmp_path / "no-vllm-venv" / "python"))  # no vLLM environment
    params = write_params(tmp_path / "ref.yaml", {"predict": {"profile": "reference", "batch_size": 4}})
    assert main(["--params", str(params), "predict", "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.split("\n\n")[0].splitlines()[2:]}
    assert rows["max_pixels"] == ["12845056", "profile", "reference"]
    assert rows["max_new_tokens"] == ["2048", "profile", "reference"]
    assert rows["backend"] == ["auto", "profile", "reference"]
    assert rows["batch_size"] == ["4", "params", "file"]
    assert "backend on this machine: transformers (predict.backend auto: no vLLM environment here" in out


@pytest.mark.parametrize("command", ["download", "sft", "predict", "pipeline"])
def test_a_bad_params_file_stops_a_stage_before_prefect_with_one_message(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path / "exp.yaml", {"predict": {"temprature": 0.5}})
    assert main(["--params", str(params), command]) == 2
    captured = capsys.readouterr()
    first, *problems = captured.err.splitlines()  # one message: the file, then one line per problem
    assert first.startswith(f"error: {params}") and all(line.startswith("  - ") for line in problems)
    assert "temprature" in captured.err and captured.out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # no flow run, no data
