"""The RS-GRPO reward function (spec §4): six rule-based components of one tagged response.

A response r is scored against a tagged ground truth G (holding at least `<evidence>…</evidence>` and
`<answer>…</answer>`). With `norm` the answer normalisation of spec §3 (`evisrag_core.metrics.normalize_answer`) and
set-F1 the F1 of token *sets*

    P = |S(p) ∩ S(g)| / |S(p)|,   R = |S(p) ∩ S(g)| / |S(g)|,   F1 = 2PR / (P + R)   (0 when P + R = 0)

the components are

    accuracy   ∈ [0, 1]    set-F1(norm(answer of r), norm(answer of G)); 0 unless r has <answer> and </answer>
    evidence   ∈ [0, 1]    Σ_i w_i · s_i / Σ_i w_i over the images [1], [2], … of G's evidence (see
                           `evidence_reward`; in [0, 18] when G lists six or more images, as in the reference)
    format     ∈ {0, 1}    the whole text is observe, evidence, think, answer blocks, whitespace between them
    overlong   ∈ [-1, 0]   soft length penalty on the response length L in tokens
    is_observe ∈ {-1, 0}   the observe block cites an image [1]…[5]
    is_think   ∈ {-1, 0}   the think block is identical to the answer block

and the step reward is  overall = 3·accuracy + 3·evidence + format + overlong + is_observe + is_think  ∈ [-3, 7].

A block ("answer of r") is read the way the reference reads it, `text.split(open)[1].split(close)[0]`: the text after
the first open tag, cut at the next open tag of the same kind or at the close tag, whichever comes first. An evidence
item `[i]:` is read the same way, cut at the next `[i]:` or at `[i+1]`. Nothing here raises on any text: a ground
truth without the block a component needs scores 0 for that component (the reference raises IndexError instead).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from evisrag_core.config.reward_components import REWARD_COMPONENTS, WEIGHTS
from evisrag_core.metrics import normalize_answer

NO_RELEVANT_INFORMATION = "no relevant information"
MAX_EVIDENCE_IMAGES = 6  # the reference scores images [1]..[6]; a 7th is never read
LONG_EVIDENCE_WORDS = 5  # gold evidence of at least this many words is scored by set-F1, shorter by substring
OBSERVE_CITATIONS = tuple(f"[{i}]" for i in range(1, 6))  # [1]..[5]; the reference does not check [6]
BLOCK_TAGS = ("observe", "evidence", "think", "answer")
# the reference adds overlong before format; kept so that `overall` is bit-identical, not just equal up to rounding
_OVERALL_SUM_ORDER = ("accuracy", "evidence", "overlong", "format", "is_observe", "is_think")

_FORMAT = re.compile(
    r"<observe>.*?</observe>\s*<evidence>.*?</evidence>\s*<think>.*?</think>\s*<answer>.*?</answer>",
    flags=re.DOTALL,
)


def set_f1(prediction: str, gold: str) -> float:
    """F1 of the normalised token *sets* of prediction and gold (no 1e-7 term); 0 when they share no token."""
    pred_tokens, gold_tokens = set(normalize_answer(prediction).split()), set(normalize_answer(gold).split())
    common = len(pred_tokens & gold_tokens)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def substring_match(prediction: str, gold: str) -> float:
    """1 when norm(gold) is a substring of norm(prediction) (so an empty norm(gold) always matches), else 0."""
    return float(normalize_answer(gold) in normalize_answer(prediction))


def segment(text: str, opener: str, closer: str) -> str | None:
    """What `text.split(opener)[1].split(closer)[0]` gives; None when `opener` does not occur."""
    if opener not in text:
        return None
    return text.split(opener, 2)[1].split(closer, 1)[0]


def block(text: str, tag: str) -> str | None:
    """The `<tag>` block of a text, read as the reference reads it (module docstring); None without `<tag>`."""
    return segment(text, f"<{tag}>", f"</{tag}>")


def has_both_tags(text: str, tag: str) -> bool:
    return f"<{tag}>" in text and f"</{tag}>" in text


def accuracy_reward(response: str, ground_truth: str) -> float:
    """set-F1 of the two answer blocks, in [0, 1]; 0 unless the response has both answer tags."""
    gold = block(ground_truth, "answer")
    if not has_both_tags(response, "answer") or gold is None:
        return 0.0
    return set_f1(block(response, "answer") or "", gold)


def evidence_reward(response: str, ground_truth: str) -> float:
    """Per-image evidence agreement, weighted by how informative the gold evidence is.

    For i = 1, 2, … while `[i]:` occurs in G's evidence block (at most six images):

        gold_i = G's item i (stripped),  w_i = 1 if gold_i == "no relevant information" (exactly) else 3
        s_i    = 0 if r's evidence block has no `[i]:`, else, with gen_i r's item i (stripped),
                 set-F1(gen_i, gold_i) if gold_i has ≥ 5 whitespace words, else [norm(gold_i) ⊆ norm(gen_i)]

    The score is Σ w_i s_i / Σ w_i, divided at the first index missing from G. When G lists all of [1]..[6] the
    loop ends without reaching a missing index and, as in the reference, the sum is *not* divided (range [0, 18]).
    0 unless the response has both evidence tags.
    """
    gold_evidence = block(ground_truth, "evidence")
    if not has_both_tags(response, "evidence") or gold_evidence is None:
        return 0.0
    evidence = block(response, "evidence") or ""
    score, total_weight = 0.0, 0.0
    for i in range(1, MAX_EVIDENCE_IMAGES + 1):
        marker, next_marker = f"[{i}]:", f"[{i + 1}]"
        gold = segment(gold_evidence, marker, next_marker)
        if gold is None:
            return score / total_weight if total_weight > 0 else score
        gold = gold.strip()
        weight = 1.0 if gold == NO_RELEVANT_INFORMATION else 3.0
        total_weight += weight
        generated = segment(evidence, marker, next_marker)
        if generated is None:
            continue
        generated = generated.strip()
        long_gold = len(gold.split()) >= LONG_EVIDENCE_WORDS
        score += weight * (set_f1(generated, gold) if long_gold else substring_match(generated, gold))
    return score


def format_reward(response: str) -> float:
    """1 iff the response is exactly observe, evidence, think, answer blocks in this order, each of the eight tags
    once, only whitespace between blocks and nothing (not even a newline) before `<observe>` or after `</answer>`."""
    tags = [f"<{t}>" for t in BLOCK_TAGS] + [f"</{t}>" for t in BLOCK_TAGS]
    if any(response.count(tag) != 1 for tag in tags):
        return 0.0
    return float(_FORMAT.fullmatch(response) is not None)


def overlong_reward(
    response_length: int, max_length: int = 1536, buffer_length: int = 512, min_length: int = 200
) -> float:
    """Soft length penalty in [-1, 0] on L = response length in tokens (end-of-turn token included):

    -1 if L < min_length;  0 if L ≤ max_length - buffer_length;  (max_length - buffer_length - L) / buffer_length
    if L ≤ max_length;  -1 above.
    """
    expected_length = max_length - buffer_length
    if response_length < min_length or response_length > max_length:
        return -1.0
    if response_length <= expected_length:
        return 0.0
    return (expected_length - response_length) / buffer_length


def is_observe_reward(response: str) -> float:
    """-1 when the observe block (both tags present) mentions `[1]`…`[5]`: citations belong in the evidence."""
    if not has_both_tags(response, "observe"):
        return 0.0
    observe = block(response, "observe") or ""
    return -1.0 if any(citation in observe for citation in OBSERVE_CITATIONS) else 0.0


def is_think_reward(response: str) -> float:
    """-1 when think and answer blocks are both present (all four tags) and identical character for character."""
    if not (has_both_tags(response, "think") and has_both_tags(response, "answer")):
        return 0.0
    return -1.0 if block(response, "think") == block(response, "answer") else 0.0


@dataclass(frozen=True)
class RewardInput:
    """Everything a reward component may read: the decoded response (special tokens skipped), the tagged ground
    truth, the response length in tokens up to and including end-of-turn, and the length limits."""

    response: str
    ground_truth: str
    response_length: int
    max_length: int = 1536
    buffer_length: int = 512
    min_length: int = 200


RewardFunction = Callable[[RewardInput], float]

REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "accuracy": lambda x: accuracy_reward(x.response, x.ground_truth),
    "evidence": lambda x: evidence_reward(x.response, x.ground_truth),
    "format": lambda x: format_reward(x.response),
    "overlong": lambda x: overlong_reward(x.response_length, x.max_length, x.buffer_length, x.min_length),
    "is_observe": lambda x: is_observe_reward(x.response),
    "is_think": lambda x: is_think_reward(x.response),
}


def score(
    response: str,
    ground_truth: str,
    response_length: int,
    *,
    max_length: int = 1536,
    buffer_length: int = 512,
    min_length: int = 200,
) -> dict[str, float]:
    """All components, weighted (accuracy and evidence ×3), and `overall` = their sum (spec §4).

    Keys: `overall` then `REWARD_COMPONENTS` (the reference calls the last two `isObserve` and `isThink`).
    """
    reward_input = RewardInput(response, ground_truth, response_length, max_length, buffer_length, min_length)
    weighted = {name: WEIGHTS[name] * REWARD_FUNCTIONS[name](reward_input) for name in REWARD_COMPONENTS}
    overall = sum(weighted[name] for name in _OVERALL_SUM_ORDER)
    return {"overall": overall, **weighted}
