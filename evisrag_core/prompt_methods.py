"""Prediction methods: the instruction text a question gets and how its images enter the one user turn.

The reference's `predict.py --method` chooses between the evidence prompt and the paper's prompting baselines
(OpenBMB/VisRAG at f35d232, `src/evisrag/prompt.py` and `src/evisrag/predict.py`). `predict.method` does the same:

    method            reference (--method, prompt.py)                     the text asks for
    evidence          evidence_prompt_grpo (evidence_promot_grpo)         observe, evidence, think, answer
    evidence_oneshot  evidence_prompt_notrain (evidence_promot_oneshot)   observe, evidence, think, answer
    baseline          baseline (baseline(query, ...), multi-image text)   think, answer
    baseline_concat   baseline's `concat` text, the images joined as one  think, answer
    cocot             COCOT                                               think, answer
    ccot              CCOT                                                think, answer
    ddcot             DDCOT                                               answer

Every text is the string the reference's function returns, byte for byte (tests/unit/test_prompt_methods.py pins
each by its sha256). `evidence` takes its wording from `predict.prompt_template` (evisrag_core.prompts: the model
card's or the repository's); the one-shot prompt exists in one wording only, the repository's, with a worked
example before the question.

Two things the reference leaves open, and what we do:
- `baseline(query, method)` picks its `concat` text when its second argument is "concat", but `predict.py` passes the
  *model* name there, so the reference's own runs always got the multi-image text, and its `predict.py` has no code
  that joins images. `baseline_concat` therefore follows the page concatenation of the same repository's VisRAG
  generation code (`horizontal_concat` in `src/openmatch/generation_utils.py`): every image scaled to the tallest
  one's height (width truncated to an integer, bicubic), pasted left to right on a black RGB canvas. The joined image
  then goes through the processor's pixel budget like any other image.
- Scoring is the same for every method (the reference's `eval.py` has one path): the text after the first
  `<answer>`, or the whole output when there is none (evisrag_core.parsing.extract_answer). The grounding scores read
  the `<evidence>` block, which no baseline asks for: a baseline cites nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from evisrag_core.images import load_image
from evisrag_core.prompts import PROMPT_TEMPLATES, build_messages, evidence_prompt

QUERY = "{query}"  # where the question goes in every text below (the reference's f-string field)
_QUESTION_TAIL = "Question and images are provided below."

# The reference's texts (OpenBMB/VisRAG f35d232, src/evisrag/prompt.py), with {query} where its f-strings put the
# question. Not edited: the typos ("your your", "a image", "inimages") and the concat text's four trailing spaces are
# what the reference's models were given.
ONESHOT_EXAMPLE = (
    "The following is an example with three images and one evidence, which you can refer to:\n"
    "Query: How many more people felt inspired frequently than depressed frequently?\n"
    "Your Respond:\n"
    '<observe>To answer the question "How many more people felt inspired frequently than depressed '
    'frequently," I need to focus on sections of the image that display quantitative data for "inspired '
    'frequently" and "depressed frequently," then compute the difference once the numbers are '
    "identified. Then I will see the images one by one.\n"
    "Image1 is a bar chart showing the percentage of social media users who feel certain emotions "
    '"frequently" and "sometimes" while using social media platforms. The emotions listed are Amused, '
    "Angry, Connected, Inspired, Depressed, and Lonely. The chart provides the following data:\n"
    "\n"
    "- Amused: Frequently 44%, Sometimes 44%, NET 88%\n"
    "- Angry: Frequently 25%, Sometimes 47%, NET 71%\n"
    "- Connected: Frequently 21%, Sometimes 49%, NET 71%\n"
    "- Inspired: Frequently 16%, Sometimes 53%, NET 69%\n"
    "- Depressed: Frequently 13%, Sometimes 36%, NET 49%\n"
    "- Lonely: Frequently 7%, Sometimes 24%, NET 31%\n"
    "\n"
    "The query asks for the difference between the number of people who felt inspired frequently and "
    "those who felt depressed frequently. From the chart, we can see that 16% of social media users feel "
    "inspired frequently and 13% feel depressed frequently.\n"
    "So image1 contains relevant information to answer the query about the difference between the number "
    "of people who felt inspired frequently and those who felt depressed frequently. Evidence of image1: "
    "From the bar chart, 16% of social media users feel inspired frequently and 13% feel depressed "
    "frequently.\n"
    "Image2 is a bar chart showing the share of respondents feeling satisfied or dissatisfied with "
    "various aspects of life and government. The query asks for the difference between the number of "
    "people who felt inspired frequently and those who felt depressed frequently. However, the chart "
    'does not provide information about the frequency of feelings like "inspired" or "depressed." It '
    "only shows satisfaction and dissatisfaction levels for different topics.\n"
    "Therefore, there is no relevant information in the image2 to answer the query.\n"
    "Image3 is a bar chart showing the share of respondents feeling optimistic, hopeful, cautious, and "
    "pessimistic. The percentages for each category are as follows: Optimistic at 43%, Hopeful at 49%, "
    "Cautious at 6%, and Pessimistic at 2%. There is no information provided about how many people felt "
    "inspired frequently or depressed frequently, nor is there any comparison between these two "
    "sentiments.\n"
    "So image3 does not contain any relevant information to answer the query about the difference "
    "between the number of people who felt inspired frequently and those who felt depressed "
    "frequently.</observe>\n"
    "<evidence>\n"
    "[1]: From the bar chart, 16% of social media users feel inspired frequently and 13% feel depressed "
    "frequently.\n"
    "[2]: no relevant information\n"
    "[3]: no relevant information\n"
    "</evidence>\n"
    "<think>The query is how many more people felt inspired frequently than depressed frequently, and "
    "the evidence found from image1 states 16% of social media users feel inspired frequently and 13% "
    "feel depressed frequently, thus the difference is 16% - 13% = 3%. So 3% people felt inspired "
    "frequently than depressed frequently.</think>\n"
    "<answer>3%</answer>\n"
    "\n"
)
BASELINE_MULTI_IMAGE = (
    "You are an AI assistant. I will provide a question and some images.\n"
    "Put your reasoning process within <think></think>.\n"
    "Please answer the questions based on the multiple pictures given to you, and put your your final "
    "answer in <answer></answer>.\n"
    "Please try to remove irrelevant content in the final answer.\n"
    "If you think there are no relevant information from the picture that can help you answer the "
    "question, answer <answer>insufficient to answer</answer> after your thinking.\n"
    "\n"
    "Question: {query}\n"
)
BASELINE_CONCAT = (
    "You are an AI assistant. I will provide a question and a image.\n"
    "Put your reasoning process within <think></think>.\n"
    "Please answer the questions based on the image given to you, and put your your final answer in "
    "<answer></answer>.\n"
    "Please try to remove irrelevant content in the final answer.\n"
    "If you think there are no relevant information from the picture that can help you answer the "
    "question, answer <answer>insufficient to answer</answer> after your thinking.\n"
    "\n"
    "Question: {query}\n"
    "    "
)
COCOT = (
    "You are an AI assistant. I will provide a query, and some images. Follow these two steps:\n"
    "\n"
    "In the first step:\n"
    "Find the similarities and differences of these images.\n"
    "Output separately all the same points and all the differences you find.\n"
    "Then reason the answer of question based on your findings.\n"
    "Put these process within <think></think>.\n"
    "\n"
    "In the second step:\n"
    "Put your your final answer in <answer></answer>.\n"
    "Please try to remove irrelevant content in the final answer. Like if the question is asking for yes "
    "or no, then only answer <answer>yes</answer> after your thinking.\n"
    "If you think there are no relevant information from the picture that can help you answer the "
    "question, answer <answer>insufficient to answer</answer> after your thinking.\n"
    "\n"
    "Query: {query}\n"
)
CCOT = (
    "You are an AI assistant. I will provide a query and some images. Follow these two steps:\n"
    "\n"
    "In the first step:\n"
    "For the provided images and its associated question, generate a scene graph for each images "
    "includes the following:\n"
    "    1. Objects that are relevant to answering the question\n"
    "    2. Object attributes that are relevant to answering the question\n"
    "    3. Object relationships that are relevant to answering the question\n"
    "Then reason the answer of question based on scene graphs.\n"
    "Put these process within <think></think>.\n"
    "\n"
    "In the second step:\n"
    "Put your your final answer in <answer></answer> based on the scene graphs.\n"
    "Please try to remove irrelevant content in the final answer. Like if the question is asking for yes "
    "or no, then only answer <answer>yes</answer> after your thinking.\n"
    "If you think there are no relevant information from the picture that can help you answer the "
    "question, answer <answer>insufficient to answer</answer> after your thinking.\n"
    "\n"
    "Query: {query}\n"
)
DDCOT = (
    "You are an AI assistant. I will provide a query and some images. Follow these two steps:\n"
    "\n"
    "In the first step:\n"
    "Please think step-by-step about the preliminary knowledge to answer the question, deconstruct the "
    "question as completely as possible down to necessary sub-questions based on context, questions and "
    "options. Then with the aim of helping humans answer the original question, try to answer the "
    "sub-questions. The expected answering form is as follows:\n"
    "Sub-questions:\n"
    "1. <sub-question 1>\n"
    "2. <sub-question 2>\n"
    "...\n"
    "Sub-answers:\n"
    "1. <sub-answer 1> or 'Uncertain'\n"
    "2. <sub-answer 2> or 'Uncertain'\n"
    "...\n"
    "For a question, assume that you do not have any information about the picture, but try to answer "
    "the sub-questions and prioritize whether your general knowledge can answer it, and then consider "
    "whether the context can help. If sub-questions can be answered, then answer in as short a sentence "
    "as possible. If sub-questions cannot be determined without information inimages, please formulate "
    'corresponding sub-answer into "Uncertain".\n'
    "\n"
    "In the second step:\n"
    "Put your your final answer in <answer></answer> based on the scene graphs.\n"
    "Please try to remove irrelevant content in the final answer. Like if the question is asking for yes "
    "or no, then only answer <answer>yes</answer> after your thinking.\n"
    "If you think there are no relevant information from the picture that can help you answer the "
    "question, answer <answer>insufficient to answer</answer> after your thinking.\n"
    "\n"
    "Query: {query}\n"
)


def _oneshot_text() -> str:
    """`evidence_promot_oneshot`: the repository's evidence prompt with a worked example before its question tail."""
    head, tail, question = PROMPT_TEMPLATES["repository"].partition(_QUESTION_TAIL)
    return head + ONESHOT_EXAMPLE + tail + question


@dataclass(frozen=True)
class Method:
    """One `predict.method`: its reference name, its text (None: the evidence prompt of `predict.prompt_template`),
    whether the images are joined into one, and the blocks its text asks for, in order."""

    name: str
    reference_name: str
    text: str | None
    concat: bool
    tags: tuple[str, ...]


_EVIDENCE_TAGS = ("observe", "evidence", "think", "answer")
METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("evidence", "evidence_prompt_grpo", None, False, _EVIDENCE_TAGS),
        Method("evidence_oneshot", "evidence_prompt_notrain", _oneshot_text(), False, _EVIDENCE_TAGS),
        Method("baseline", "baseline", BASELINE_MULTI_IMAGE, False, ("think", "answer")),
        Method("baseline_concat", "baseline (concat)", BASELINE_CONCAT, True, ("think", "answer")),
        Method("cocot", "COCOT", COCOT, False, ("think", "answer")),
        Method("ccot", "CCOT", CCOT, False, ("think", "answer")),
        Method("ddcot", "DDCOT", DDCOT, False, ("answer",)),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown prediction method {name!r}; choose one of {', '.join(METHODS)}") from None


def method_prompt(method: str, query: str, template: str = "model_card") -> str:
    """The instruction text of `method` for `query`, as the reference's prompt function returns it."""
    text = get_method(method).text
    return evidence_prompt(query, template) if text is None else text.replace(QUERY, query)


def concat_horizontally(images: Sequence[Image.Image]) -> Image.Image:
    """The images side by side at the tallest one's height: each scaled by tallest / its height (width truncated to
    an integer, bicubic), pasted left to right on a black RGB canvas (VisRAG's page concatenation)."""
    if not images:
        raise ValueError("no images to concatenate")
    height = max(image.height for image in images)
    scaled = [
        image.resize((int(image.width * (height / image.height)), height), Image.Resampling.BICUBIC) for image in images
    ]
    canvas = Image.new("RGB", (sum(image.width for image in scaled), height))
    left = 0
    for image in scaled:
        canvas.paste(image, (left, 0))
        left += image.width
    return canvas


def method_messages(
    method: str,
    query: str,
    images: Sequence[Any],
    template: str = "model_card",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """One user turn for `method`: its text, then the images in rank order (or, for a concat method, the one joined
    image). `evidence` is exactly `evisrag_core.prompts.build_messages`, so the default prediction is unchanged."""
    spec = get_method(method)
    if spec.concat:
        # Paths are decoded here (RGB, no budget yet: the joined image gets it, as one image); PIL images as given.
        opened = [image if isinstance(image, Image.Image) else load_image(image) for image in images]
        images = [concat_horizontally(opened)]
    messages = build_messages(query, list(images), template, min_pixels, max_pixels)
    if spec.text is not None:
        # The evidence prompt builder's message with the method's text in place of the evidence prompt (its first
        # entry), so the image entries keep one shape everywhere.
        messages[0]["content"][0] = {"type": "text", "text": method_prompt(method, query, template)}
    return messages
