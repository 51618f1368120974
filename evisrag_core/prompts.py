"""Evidence prompt templates, and how a record's user text and images become one chat turn (spec §1, §8).

What the model is given, for every stage (docs/data.md, "What the model is given"):

- **Verbatim.** A training record's user text (an RL record's `prompt`, an SFT record's user turn) is used as it is:
  it already holds the instructions and the question, as the reference's EasyR1 and LLaMA-Factory data do.
- **Markers.** Image i goes where the i-th `<image>` marker stands (`content_parts`); a text without markers gets
  its images after the text. Any other number of markers than images is an error.
- **Bare questions.** The evidence template is applied to a record's text only when the record holds a bare
  question, which is decided by its field, never by its content: a test record's `query` (as the reference's
  `predict.py` does), an RL record that has `query` instead of `prompt`, and `evisrag answer --query`. `build_messages`
  is that path: the template around the question, then the images.

Two named templates:
- `model_card` (default): the text of `evidence_promot_grpo` as printed on the EVisRAG-7B model card
  (the project's seed copy of the card), character for character. That copy has no blank lines between steps.
- `repository`: the text in the reference repository's `src/evisrag/prompt.py`. It differs from the card in one
  sentence ("few evidences" / "instruction" instead of "little evidence" / "instructions") and separates the steps
  with blank lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evisrag_core.data.schema import IMAGE_PLACEHOLDER

_STEPS = [
    "You are an AI Visual QA assistant. I will provide you with a question and several images. "
    "Please follow the four steps below:",
    "Step 1: Observe the Images\n"
    "First, analyze the question and consider what types of images may contain relevant information. Then, examine "
    "each image one by one, paying special attention to aspects related to the question. Identify whether each image "
    "contains any potentially relevant information.\n"
    "Wrap your observations within <observe></observe> tags.",
    "Step 2: Record Evidences from Images\n"
    "After reviewing all images, record the evidence you find for each image within <evidence></evidence> tags.\n"
    "If you are certain that an image contains no relevant information, record it as: [i]: no relevant "
    "information(where i denotes the index of the image).\n"
    "If an image contains relevant evidence, record it as: [j]: [the evidence you find for the question](where j is "
    "the index of the image).",
    "Step 3: Reason Based on the Question and Evidences\n"
    "Based on the recorded evidences, reason about the answer to the question.\n"
    "Include your step-by-step reasoning within <think></think> tags.",
    "Step 4: Answer the Question\n"
    "Provide your final answer based only on the evidences you found in the images.\n"
    "Wrap your answer within <answer></answer> tags.\n"
    "Avoid adding unnecessary contents in your final answer, like if the question is a yes/no question, simply answer "
    '"yes" or "no".\n'
    "If none of the images contain sufficient information to answer the question, respond with "
    "<answer>insufficient to answer</answer>.",
]
_FORMATTING_HEAD = (
    "Formatting Requirements:\n"
    "Use the exact tags <observe>, <evidence>, <think>, and <answer> for structured output.\n"
    "It is possible that none, one, or several images contain relevant evidence.\n"
)
_CARD_INSUFFICIENT = (
    "If you find no evidence or little evidence, and insufficient to help you answer the question, follow the "
    "instructions above for insufficient information."
)
_REPO_INSUFFICIENT = (
    "If you find no evidence or few evidences, and insufficient to help you answer the question, follow the "
    "instruction above for insufficient information."
)
_TAIL = "Question and images are provided below. Please follow the steps as instructed.\nQuestion: {query}\n"


def _template(separator: str, insufficient_rule: str) -> str:
    blocks = [*_STEPS, _FORMATTING_HEAD + insufficient_rule, _TAIL]
    return separator.join(blocks)


PROMPT_TEMPLATES: dict[str, str] = {
    "model_card": _template("\n", _CARD_INSUFFICIENT),
    "repository": _template("\n\n", _REPO_INSUFFICIENT),
}


def evidence_prompt(query: str, template: str = "model_card") -> str:
    """The evidence prompt for `query` (`evidence_promot_grpo` in the reference)."""
    try:
        text = PROMPT_TEMPLATES[template]
    except KeyError:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {sorted(PROMPT_TEMPLATES)}") from None
    return text.replace("{query}", query)


def content_parts(
    text: str, images: Sequence[Any], min_pixels: int | None = None, max_pixels: int | None = None
) -> list[dict[str, Any]]:
    """A user text and its images as chat content parts: image i at the i-th `<image>` marker, or after the text when
    it has no markers. Empty text between markers makes no part (as the reference's RL dataset splits a prompt).

    Raises ValueError when the text has markers but not one per image.
    """
    chunks = text.split(IMAGE_PLACEHOLDER)
    markers = len(chunks) - 1
    if markers not in (0, len(images)):
        raise ValueError(f"{markers} {IMAGE_PLACEHOLDER} marker(s) in the text for {len(images)} images")
    if markers == 0:
        chunks = [text, *([""] * len(images))]
    parts: list[dict[str, Any]] = [{"type": "text", "text": chunks[0]}] if chunks[0] else []
    for image, chunk in zip(images, chunks[1:], strict=True):
        parts.append(_image_part(image, min_pixels, max_pixels))
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def _image_part(image: Any, min_pixels: int | None, max_pixels: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "image", "image": image}
    if min_pixels is not None:
        entry["min_pixels"] = min_pixels
    if max_pixels is not None:
        entry["max_pixels"] = max_pixels
    return entry


def user_turn(
    text: str, images: Sequence[Any], min_pixels: int | None = None, max_pixels: int | None = None
) -> dict[str, Any]:
    """One user message holding a record's text verbatim, its images at their markers (`content_parts`)."""
    return {"role": "user", "content": content_parts(text, images, min_pixels, max_pixels)}


def build_messages(
    query: str,
    images: list[Any],
    template: str = "model_card",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """A bare question's one user turn: the evidence prompt around `query`, then the images in ranked order (image i
    is `[i]`). A question holding `<image>` markers is refused: its images would not follow the instructions."""
    if IMAGE_PLACEHOLDER in query:
        raise ValueError(f"a bare question holds no {IMAGE_PLACEHOLDER} marker; got {query!r}")
    return [user_turn(evidence_prompt(query, template), images, min_pixels, max_pixels)]
