"""Records used as the reference uses them (spec §8), seen through `evisrag prompt`: a local snapshot laid out like the
reference's training data (LLaMA-Factory sharegpt with `dataset_info.json`, a system turn and `<image>` markers;
EasyR1 jsonl whose `prompt` is the whole user text with markers) converts, and each stage gives the model the
record's text once, every image at its marker, the system turn kept. Then the reference's cuts of over-long inputs
(`sft.truncation: llamafactory`, `rsgrpo.prompt_truncation: right`) on the real processor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from evisrag_core.data.hub import import_local
from evisrag_core.data.schema import RLPrompt
from evisrag_core.io import BadRecordError
from evisrag_core.prompts import evidence_prompt
from flows.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You answer questions about document pages."
TAGGED = "<observe>o</observe>\n<evidence>[1]: red page [2]: no relevant information</evidence>\n<think>t</think>\n"
TAGGED += "<answer>red</answer>"
PAGE_COLOURS = {"p1.png": (220, 40, 40), "p2.png": (40, 80, 220), "p3.png": (40, 170, 60)}
BLOCK = "<|vision_start|><|image_pad|>×4<|vision_end|>"  # a 56×56 page: 4×4 patches of 14, merged 2×2

SFT_ROWS = [
    {  # LLaMA-Factory sharegpt: a `system` column, the markers first
        "system": SYSTEM,
        "conversations": [
            {"from": "human", "value": "<image><image>" + evidence_prompt("What colour is page one?")},
            {"from": "gpt", "value": TAGGED},
        ],
        "images": ["pages/p1.png", "pages/p2.png"],
    },
    {  # the system turn as the first message, the markers between the texts
        "conversations": [
            {"from": "system", "value": SYSTEM},
            {"from": "human", "value": "Page A: <image>\nPage B: <image>\n" + evidence_prompt("Which page is red?")},
            {"from": "gpt", "value": TAGGED},
        ],
        "images": ["pages/p1.png", "pages/p3.png"],
    },
]
RL_ROWS = [  # EasyR1: `prompt` is the whole user text, the markers where the images go
    {
        "prompt": evidence_prompt("What colour is page one?") + "<image><image>",
        "image": ["pages/p1.png", "pages/p2.png"],
    },
    {
        "prompt": "<image>First page.\n<image>Second page.\n" + evidence_prompt("Which?"),
        "image": ["pages/p2.png", "pages/p3.png"],
    },
]


def write_page(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), colour).save(path, format="PNG")


@pytest.fixture(scope="module")
def snapshot_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local snapshot (EVisRAG-Train as the reference lays it out, one test set) converted by `import_local`."""
    root = tmp_path_factory.mktemp("snapshot")
    train, test = root / "EVisRAG-Train", root / "EVisRAG-Test-ChartQA"
    for name, colour in PAGE_COLOURS.items():
        write_page(train / "pages" / name, colour)
        write_page(test / "imgs" / name, colour)
    info = {
        "evidencecot": {
            "file_name": "evidencecot.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "images": "images", "system": "system"},
        }
    }
    (train / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    (train / "evidencecot.json").write_text(json.dumps(SFT_ROWS), encoding="utf-8")
    rl = [{**row, "answer": TAGGED} for row in RL_ROWS]
    (train / "evidencecot_GRPO.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rl), encoding="utf-8")
    question = {"qid": 1, "query": "What colour is the chart?", "image": ["imgs/p1.png", "imgs/p2.png", "imgs/p3.png"]}
    row = {**question, "answer": ["red"], "is_sufficient": True}
    (test / "top3_test.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    out = root / "data"
    import_local(root, out)
    return out


@pytest.fixture(scope="module")
def params_file(snapshot_data: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"].update(source="local", local_dir=str(snapshot_data.parent), out_dir=str(snapshot_data))
    for section in ("sft", "rsgrpo", "predict"):
        raw[section]["model_dir"] = str(tiny_model_dir)
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def shown(params: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["--params", str(params), "prompt", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def user_turn_of(text: str) -> str:
    return text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]


@pytest.mark.parametrize(
    ("index", "user"),
    [
        (0, BLOCK * 2 + evidence_prompt("What colour is page one?")),  # markers first
        (1, f"Page A: {BLOCK}\nPage B: {BLOCK}\n" + evidence_prompt("Which page is red?")),  # interleaved
    ],
)
def test_prompt_sft_keeps_the_system_turn_and_puts_each_image_at_its_marker(
    params_file: Path, capsys: pytest.CaptureFixture[str], index: int, user: str
) -> None:
    text = shown(params_file, capsys, "sft", "--index", str(index))
    assert text.count("Step 1: Observe the Images") == 1  # the instructions once: the record's text, verbatim
    assert f"<|im_start|>system\n{SYSTEM}<|im_end|>" in text
    assert "You are a helpful assistant." not in text  # the record's system turn replaces the template's default
    assert user_turn_of(text) == user
    # the target: the answer, its <|im_end|> and the template's newline after it carry the loss
    assert text.rstrip("\n").endswith(f"⟦{TAGGED}<|im_end|>\n⟧")
    assert text.rsplit("carry loss (⟦…⟧) --\n", 1)[1].count("⟦") == 1


@pytest.mark.parametrize(
    ("index", "user"),
    [
        (0, evidence_prompt("What colour is page one?") + BLOCK * 2),  # markers last
        (1, f"{BLOCK}First page.\n{BLOCK}Second page.\n" + evidence_prompt("Which?")),  # first and interleaved
    ],
)
def test_prompt_rsgrpo_is_the_whole_prompt_once_with_images_at_their_markers(
    params_file: Path, capsys: pytest.CaptureFixture[str], index: int, user: str
) -> None:
    text = shown(params_file, capsys, "rsgrpo", "--index", str(index))
    assert text.count("Step 1: Observe the Images") == 1
    assert user_turn_of(text) == user
    assert text.rstrip("\n").endswith("<|im_start|>assistant")  # the generation prompt: the model answers next


def test_prompt_predict_wraps_the_bare_question_and_puts_the_images_after_it(
    params_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = shown(params_file, capsys, "predict", "--benchmark", "ChartQA")
    assert user_turn_of(text) == evidence_prompt("What colour is the chart?") + BLOCK * 3
    assert "images (3," in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sft", "--index", "2"], "--index 2 is out of range: .* holds 2 records"),
        (["rsgrpo", "--index", "-1"], "--index must be 0 or more"),
        (["predict", "--benchmark", "DocVQA"], "unknown benchmark 'DocVQA': .* holds ChartQA"),
        (["predict", "--index", "1"], "--index 1 is out of range: ChartQA holds 1 questions"),
        (["sft", "--benchmark", "ChartQA"], "--benchmark names a test set"),
    ],
)
def test_prompt_user_errors_exit_2_with_one_message(
    params_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["--params", str(params_file), "prompt", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    assert re.search(message, captured.err), captured.err


def test_prompt_without_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["data"]["out_dir"] = str(tmp_path / "nothing")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["--params", str(params), "prompt", "rsgrpo"]) == 2
    assert "not found; run `evisrag download`" in capsys.readouterr().err


# --- over-long inputs, cut as the reference cuts them ---------------------------------------------------------------


def conversation(snapshot_data: Path, user_text: str) -> Any:
    from evisrag_core.data.schema import Conversation

    pages = [str(snapshot_data / "train" / "images" / name) for name in sorted(_stored(snapshot_data))[:2]]
    return Conversation("c", user_text, pages, TAGGED, SYSTEM)


def _stored(snapshot_data: Path) -> list[str]:
    return [
        p.relative_to(snapshot_data / "train" / "images").as_posix()
        for p in (snapshot_data / "train" / "images").rglob("*.png")
    ]


def last_vision_end(processor: Any, ids: Any) -> int:
    """The position of the last image's `<|vision_end|>`: keeping that many tokens cuts the image."""
    end = processor.tokenizer.convert_tokens_to_ids("<|vision_end|>")
    return max(i for i, token in enumerate(ids.tolist()) if token == end)


def test_sft_llamafactory_cut_keeps_the_answer_and_the_prompts_start(
    snapshot_data: Path, tiny_model: tuple[Any, Any]
) -> None:
    from evisrag_core.sft.data import SFTCollator

    _, processor = tiny_model
    example = conversation(snapshot_data, "<image><image>" + evidence_prompt("What colour is page one?"))
    whole = SFTCollator(processor, 3136, 12544, cutoff_len=4096).encode(example)
    ids, labels = whole["input_ids"].tolist(), whole["labels"].tolist()
    prompt_len = next(i for i, label in enumerate(labels) if label != -100)
    cutoff = len(ids) - 5
    with pytest.raises(BadRecordError, match=f"exceed sft.cutoff_len={cutoff}.*sft.truncation: llamafactory"):
        SFTCollator(processor, 3136, 12544, cutoff_len=cutoff).encode(example)
    cut = SFTCollator(processor, 3136, 12544, cutoff_len=cutoff, truncation="llamafactory").encode(example)
    # a short answer is kept whole; the prompt loses its last 5 tokens (the assistant header and some text)
    assert cut["input_ids"].tolist() == ids[: prompt_len - 5] + ids[prompt_len:]
    assert cut["labels"].tolist() == labels[: prompt_len - 5] + labels[prompt_len:]
    assert cut["attention_mask"].shape[-1] == cutoff and cut["mm_token_type_ids"].shape[-1] == cutoff
    # images at the end of the prompt: a cut through them is refused, as the reference's forward would fail
    # images at the end of the prompt: a cut through them is refused, as the reference's forward would fail
    late = conversation(snapshot_data, evidence_prompt("What colour is page one?") + "<image><image>")
    deep = last_vision_end(processor, SFTCollator(processor, 3136, 12544, cutoff_len=4096).encode(late)["input_ids"])
    with pytest.raises(BadRecordError, match="would cut an image"):
        SFTCollator(processor, 3136, 12544, cutoff_len=deep, truncation="llamafactory").encode(late)


def test_rsgrpo_right_cut_keeps_the_prompts_first_tokens(snapshot_data: Path, tiny_model: tuple[Any, Any]) -> None:
    from evisrag_core.rsgrpo.rollout import PromptEncoder

    _, processor = tiny_model
    pages = tuple(str(snapshot_data / "train" / "images" / name) for name in sorted(_stored(snapshot_data))[:2])
    first = RLPrompt("r", "<image><image>" + evidence_prompt("Which?"), pages, pages, TAGGED, True)
    whole = PromptEncoder(processor, "model_card", (3136, 12544), 15000)([first])[0]
    limit = len(whole.input_ids) - 4
    with pytest.raises(BadRecordError, match=r"rsgrpo\.prompt_truncation: right"):
        PromptEncoder(processor, "model_card", (3136, 12544), limit)([first])
    cut = PromptEncoder(processor, "model_card", (3136, 12544), limit, "right")([first])[0]
    assert cut.input_ids.tolist() == whole.input_ids[:limit].tolist()
    assert cut.mm_token_type_ids.tolist() == whole.mm_token_type_ids[:limit].tolist()
    last = RLPrompt("r", evidence_prompt("Which?") + "<image><image>", pages, pages, TAGGED, True)
    deep = last_vision_end(processor, PromptEncoder(processor, "model_card", (3136, 12544), 15000)([last])[0].input_ids)
    with pytest.raises(BadRecordError, match="would cut an image"):
        PromptEncoder(processor, "model_card", (3136, 12544), deep, "right")([last])
