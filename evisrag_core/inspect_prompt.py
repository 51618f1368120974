"""`evisrag prompt`: exactly what the model is given for one record of a stage's input, as text.

The input is built by the stage's own code, never rebuilt here: `sft.data.SFTCollator.encode` (sft),
`rsgrpo.rollout.PromptEncoder` (rsgrpo), `predict.build_requests` + `TransformersBackend.encode` (predict), each with
the stage's params (pixel bounds, template, length limit and truncation). The token ids they produce are decoded
with special tokens kept, so the text is the chat template's output; each image's run of `<|image_pad|>` tokens is
collapsed to `<|image_pad|>×N` (`collapse_image_pads`). For sft the target follows, the tokens that carry loss
between ⟦ and ⟧ (`mark_loss`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evisrag_core.config import Params
from evisrag_core.data.schema import (
    RL_FILE,
    SFT_FILE,
    list_benchmarks,
    load_test_split,
    parse_rl_record,
    parse_sft_record,
)
from evisrag_core.errors import UserError
from evisrag_core.io import jsonl_rows

STAGES = ("sft", "rsgrpo", "predict")
IMAGE_PAD = "<|image_pad|>"
LOSS_OPEN, LOSS_CLOSE = "⟦", "⟧"
_PAD_RUN = re.compile(f"(?:{re.escape(IMAGE_PAD)})+")


class InspectError(UserError, ValueError):
    """A request `evisrag prompt` cannot answer (no such record, benchmark or input file); the message says why."""


@dataclass(frozen=True)
class Shown:
    """One record's model input: where it came from, its image files, the token ids and, for sft, the labels."""

    title: str
    images: Sequence[str]
    input_ids: list[int]
    labels: list[int] | None = None  # -100: no loss on that token


def collapse_image_pads(text: str) -> str:
    """`<|image_pad|>` runs written once with their length: `<|image_pad|>×64`."""
    return _PAD_RUN.sub(lambda run: f"{IMAGE_PAD}×{len(run.group()) // len(IMAGE_PAD)}", text)


def mark_loss(pieces: Sequence[tuple[str, bool]]) -> str:
    """Decoded pieces joined, each run of pieces that carry loss between ⟦ and ⟧."""
    out, inside = [], False
    for text, carries in pieces:
        if carries != inside:
            out.append(LOSS_OPEN if carries else LOSS_CLOSE)
            inside = carries
        out.append(text)
    if inside:
        out.append(LOSS_CLOSE)
    return "".join(out)


def loss_runs(ids: Sequence[int], labels: Sequence[int]) -> list[tuple[list[int], bool]]:
    """Consecutive ids grouped by whether they carry loss (label not -100), in order."""
    runs: list[tuple[list[int], bool]] = []
    for token, label in zip(ids, labels, strict=True):
        carries = label != -100
        if runs and runs[-1][1] == carries:
            runs[-1][0].append(token)
        else:
            runs.append(([token], carries))
    return runs


def render(shown: Shown, tokenizer: Any) -> str:
    """The text of `evisrag prompt`: header, images, the model input and, for sft, the marked target."""

    def decode(ids: Sequence[int]) -> str:
        return collapse_image_pads(tokenizer.decode(list(ids), skip_special_tokens=False))

    lines = [f"== {shown.title} ==", f"images ({len(shown.images)}, in the order the model sees them):"]
    lines += [f"  [{i}] {path}" for i, path in enumerate(shown.images, start=1)]
    if shown.labels is None:
        lines += [f"-- model input: {len(shown.input_ids)} tokens --", decode(shown.input_ids)]
        return "\n".join(lines)
    first = next((i for i, label in enumerate(shown.labels) if label != -100), len(shown.labels))
    carrying = sum(label != -100 for label in shown.labels)
    lines += [f"-- model input before the target: {first} tokens --", decode(shown.input_ids[:first])]
    lines += [f"-- target: {len(shown.input_ids) - first} tokens, {carrying} carry loss ({LOSS_OPEN}…{LOSS_CLOSE}) --"]
    runs = loss_runs(shown.input_ids[first:], shown.labels[first:])
    lines.append(mark_loss([(decode(ids), carries) for ids, carries in runs]))
    return "\n".join(lines)


def _row(path: Path, index: int) -> tuple[str, dict[str, Any]]:
    """(where, row) of record `index` (0-based) of a jsonl file."""
    if not path.is_file():
        raise InspectError(f"{path} not found; run `evisrag download` (or `dvc repro download`) first")
    count = 0
    for where, row in jsonl_rows(path):
        if count == index:
            return where, row
        count += 1
    raise InspectError(f"--index {index} is out of range: {path} holds {count} records (0 … {count - 1})")


def _processor(model_dir: str, trust_remote_code: bool) -> Any:
    from transformers import AutoProcessor

    if not (Path(model_dir) / "config.json").is_file():
        raise InspectError(
            f"{model_dir} is not a model folder: this stage's input is encoded with its model's processor; run the "
            "stages before it (`dvc repro`) first"
        )
    return AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def show_sft(params: Params, index: int) -> tuple[Shown, Any]:
    from evisrag_core.sft.data import SFTCollator

    cfg = params.sft
    path = Path(params.data.out_dir) / "train" / SFT_FILE
    where, row = _row(path, index)
    conversation = parse_sft_record(row, path.parent, where)
    processor = _processor(cfg.model_dir, params.model.trust_remote_code)
    collator = SFTCollator(processor, cfg.image_min_pixels, cfg.image_max_pixels, cfg.cutoff_len, cfg.truncation)
    item = collator.encode(conversation)
    title = f"sft record {index} (id {conversation.id}) of {path}"
    return Shown(title, conversation.images, item["input_ids"].tolist(), item["labels"].tolist()), processor


def show_rsgrpo(params: Params, index: int) -> tuple[Shown, Any]:
    from evisrag_core.rsgrpo.train import prompt_encoder

    path = Path(params.data.out_dir) / "train" / RL_FILE
    where, row = _row(path, index)
    prompt = parse_rl_record(row, path.parent, where)
    processor = _processor(params.rsgrpo.model_dir, params.model.trust_remote_code)
    inputs = prompt_encoder(processor, params.rsgrpo)([prompt])[0]
    title = f"rsgrpo record {index} (id {prompt.id}) of {path}"
    return Shown(title, prompt.images, inputs.input_ids.tolist()), processor


def show_predict(params: Params, index: int, benchmark: str | None) -> tuple[Shown, Any]:
    from evisrag_core.predict import Decoding, TransformersBackend, build_requests

    cfg = params.predict
    data_dir = Path(params.data.out_dir)
    names = list_benchmarks(data_dir)
    name = benchmark or (names[0] if names else None)
    if name not in names:
        raise InspectError(f"unknown benchmark {name!r}: {data_dir / 'test'} holds {', '.join(names) or 'none'}")
    records = load_test_split(data_dir / "test" / name)
    if not 0 <= index < len(records):
        raise InspectError(f"--index {index} is out of range: {name} holds {len(records)} questions")
    request = build_requests(records[index : index + 1], data_dir / "test" / name, cfg.top_k, cfg.max_images_per_prompt)
    processor, pixels = _processor(cfg.model_dir, params.model.trust_remote_code), (cfg.min_pixels, cfg.max_pixels)
    backend = TransformersBackend(None, processor, Decoding.from_params(cfg), cfg.prompt_template, pixels)
    ids = backend.encode(request)["input_ids"][0].tolist()
    title = f"predict question {index} (qid {request[0].qid}) of {name}"
    return Shown(title, request[0].images, ids), processor


def show_prompt(params: Params, stage: str, index: int = 0, benchmark: str | None = None) -> str:
    """What the model is given for record `index` of `stage`'s input (module docstring)."""
    if index < 0:
        raise InspectError(f"--index must be 0 or more, got {index}")
    if stage == "predict":
        shown, processor = show_predict(params, index, benchmark)
    elif benchmark is not None:
        raise InspectError(f"--benchmark names a test set; it is for `evisrag prompt predict`, not {stage}")
    elif stage == "sft":
        shown, processor = show_sft(params, index)
    elif stage == "rsgrpo":
        shown, processor = show_rsgrpo(params, index)
    else:
        raise InspectError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")
    return render(shown, processor.tokenizer)
