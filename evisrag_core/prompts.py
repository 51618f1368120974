"""Evidence prompt templates and the multi-image chat message they go into (spec §1).

Two named templates:
- `model_card` (default): the text of `evidence_promot_grpo` as printed on the EVisRAG-7B model card
  (the project's seed copy of the card), character for character. That copy has no blank lines between steps.
- `repository`: the text in the reference repository's `src/evisrag/prompt.py`. It differs from the card in one
  sentence ("few evidences" / "instruction" instead of "little evidence" / "instructions") and separates the steps
  with blank lines.
"""

from __future__ import annotations

from typing import Any

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


def build_messages(
    query: str,
    images: list[Any],
    template: str = "model_card",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """One user turn: the evidence prompt, then the images in ranked order (image i is `[i]`)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": evidence_prompt(query, template)}]
    for image in images:
        entry: dict[str, Any] = {"type": "image", "image": image}
        if min_pixels is not None:
            entry["min_pixels"] = min_pixels
        if max_pixels is not None:
            entry["max_pixels"] = max_pixels
        content.append(entry)
    return [{"role": "user", "content": content}]
