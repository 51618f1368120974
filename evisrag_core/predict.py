"""Prediction: the evidence prompt (or a baseline, `predict.method`) over the top-K images of each question, batched,
resumable (spec §7).

Output rows follow the reference `predict.py`: `qid`, `imgs` (image paths used, in rank order) and `pred` (the raw
generated text). Rows are appended and flushed one batch at a time; a rerun reads the file back, drops a torn last
line, and generates only the questions still missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from evisrag_core.bad_records import BadRecords
from evisrag_core.config import PredictParams
from evisrag_core.data.schema import TestRecord, resolve_image_path
from evisrag_core.images import check_image, vision_inputs
from evisrag_core.io import BadRecordError, append_jsonl, appended_rows
from evisrag_core.prompt_methods import method_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    qid: str | int
    query: str
    images: list[str]  # absolute paths the backend opens, in rank order
    image_refs: list[str]  # the same images as the record names them (relative to the split folder)


@dataclass(frozen=True)
class Decoding:
    """How prediction decodes one answer per question (params.yaml `predict`): greedy at temperature 0, else sampled
    with top-p. Not `rsgrpo.fast_decode.Sampling`, which draws n responses per prompt for the rollouts."""

    temperature: float
    top_p: float
    repetition_penalty: float
    max_new_tokens: int

    @classmethod
    def from_params(cls, params: PredictParams) -> Decoding:
        return cls(params.temperature, params.top_p, params.repetition_penalty, params.max_new_tokens)


class Backend(Protocol):
    def generate(self, requests: Sequence[Request]) -> list[str]: ...


def build_requests(
    records: Sequence[TestRecord], split_dir: Path, top_k: int, max_images: int, bad: BadRecords | None = None
) -> list[Request]:
    """Top-K images per question, each resolved inside the split folder (escapes are refused) and decoded once
    (missing, damaged or oversized images fail here, before any generation). A question with a bad image raises
    BadRecordError, or is left out and counted in `bad` under the `skip` policy."""
    if top_k > max_images:
        raise ValueError(f"top_k={top_k} exceeds the model's limit of {max_images} images per prompt")
    bad = bad or BadRecords()
    requests = []
    for record in records:
        where = f"{split_dir}/qid {record.qid}"
        refs = record.image[:top_k]
        try:
            images = [str(resolve_image_path(split_dir, rel, where)) for rel in refs]
            for image in images:
                check_image(image, where)
        except BadRecordError as err:
            bad.reject(err)
            continue
        requests.append(Request(record.qid, record.query, images, list(refs)))
    return requests


def set_cpu_threads() -> int:
    """Use every core the process may run on (torch defaults can under-use small machines)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cores)
    return cores


class TransformersBackend:
    """Batched `generate` with left padding; images go through `evisrag_core.images.vision_inputs`."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        decoding: Decoding,
        template: str,
        pixels: tuple[int, int],
        method: str = "evidence",
    ):
        self.model, self.processor, self.decoding = model, processor, decoding
        self.template, self.min_pixels, self.max_pixels, self.method = template, *pixels, method
        self.processor.tokenizer.padding_side = "left"

    def encode(self, requests: Sequence[Request]) -> Any:
        """The processor's batch for `requests` (also what `evisrag prompt predict` shows)."""
        texts, images = [], []
        for request in requests:
            messages = method_messages(
                self.method, request.query, request.images, self.template, self.min_pixels, self.max_pixels
            )
            texts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            images.append(vision_inputs(messages))
        return self.processor(text=texts, images=images, return_tensors="pt", padding=True)

    @torch.inference_mode()
    def generate(self, requests: Sequence[Request]) -> list[str]:
        inputs = self.encode(requests).to(self.model.device)
        sample = self.decoding.temperature > 0
        options: dict[str, Any] = {
            "max_new_tokens": self.decoding.max_new_tokens,
            "do_sample": sample,
            "repetition_penalty": self.decoding.repetition_penalty,
            "pad_token_id": self.processor.tokenizer.pad_token_id,
        }
        if sample:
            options.update(temperature=self.decoding.temperature, top_p=self.decoding.top_p)
        else:
            # Greedy decoding: unset the sampling knobs a checkpoint's generation_config may carry.
            options.update(temperature=None, top_p=None, top_k=None)
        output = self.model.generate(**inputs, **options)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)


def read_finished(path: Path, known_qids: set[str]) -> set[str]:
    """qids already predicted in `path`; a torn last line (crash mid-write) is cut off, other damage is an error."""
    if not path.exists():
        return set()
    raw = path.read_bytes()
    rows, good_bytes = appended_rows(path, _prediction_row, lambda n, err: _unreadable(path, n, err))
    finished: set[str] = set()
    for number, row in rows:
        qid = str(row["qid"])
        if qid not in known_qids:
            raise BadRecordError(f"{path}:{number}: qid {qid!r} is not in the test set; is this the right file?")
        finished.add(qid)
    if good_bytes < len(raw):
        with path.open("r+b") as handle:
            handle.truncate(good_bytes)
    elif raw and not raw.endswith(b"\n"):
        # A complete last row without its newline (crash between the two writes): end the line before appending.
        with path.open("ab") as handle:
            handle.write(b"\n")
    return finished


def _prediction_row(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict) or "qid" not in row or "pred" not in row:
        raise ValueError("expected a JSON object with a qid and a pred")
    return row


def _unreadable(path: Path, number: int, err: Exception) -> str:
    return f"{path}:{number}: unreadable prediction row ({err}); delete the file"


def predict_split(
    requests: Sequence[Request],
    out_file: Path,
    backend: Backend,
    batch_size: int,
    progress: Callable[[int], Any] = lambda n: None,
    extra: dict[str, Any] | None = None,
) -> int:
    """Append predictions for the requests not yet in `out_file`; returns how many were generated now."""
    out_file.parent.mkdir(parents=True, exist_ok=True)
    finished = read_finished(out_file, {str(r.qid) for r in requests})
    todo = [r for r in requests if str(r.qid) not in finished]
    progress(len(requests) - len(todo))
    with out_file.open("a", encoding="utf-8") as handle:
        # The batches are always the uninterrupted run's blocks of `requests`: a batch a crash left half-written is
        # generated whole again and only its missing rows are appended, so every question is padded and computed
        # exactly as without the crash (greedy outputs can depend on a batch's padding).
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            missing = [i for i, request in enumerate(batch) if str(request.qid) not in finished]
            if not missing:
                continue
            texts = backend.generate(batch)
            for i in missing:
                row = {"qid": batch[i].qid, "imgs": batch[i].image_refs, "pred": texts[i], **(extra or {})}
                append_jsonl(handle, row)
            progress(len(missing))
    return len(todo)
