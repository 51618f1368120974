"""Evidence grounding: do the images a response cites as relevant hold the answer, and does it refuse when it should?

EM/Acc/F1 (evisrag_core.metrics) only look at the answer. A model can answer right from the wrong image, or cite the
right image and still fail; these numbers look at the `<evidence>` block instead. For one question with K images:

    C = cited images: the indices i of evidence items `[i]: …` whose text is not "no relevant information"
    P = positive images: the indices of the images that hold the answer (empty for an insufficient question)

    precision = |C ∩ P| / |C|          undefined (None) when C is empty
    recall    = |C ∩ P| / |P|          undefined (None) when P is empty
    F1        = 2 |C ∩ P| / (|C| + |P|)   and 1 when C and P are both empty (nothing to cite, nothing cited)

A benchmark's precision, recall and F1 are the means over the questions where each is defined, so a model that cites
nothing is not rewarded with a perfect precision. They need P: the embedded generator writes it (`positives` in the
test records); a hub/local test set has it only when its records mark the positive pages. Without any, the keys are
left out of the metrics (`cnt_evidence` = 0 says why).

Two refusal rates need only `is_sufficient`:

    issuff_refusal_rate = share of sufficient questions answered with an "insufficient" answer
    unsuff_answer_rate  = share of insufficient questions answered with anything else

An answer counts as "insufficient" when, normalised as in spec §3, it is one of the insufficient golds or starts with
"insufficient" (e.g. "insufficient information to answer").

The evidence block is read like the rewards read a block: it must be closed (a truncated generation cites nothing).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from evisrag_core.metrics import INSUFFICIENT_GOLDS, normalize_answer
from evisrag_core.parsing import extract_answer, extract_block

NO_RELEVANT_INFORMATION = "no relevant information"
_INSUFFICIENT_ANSWERS = frozenset(normalize_answer(g) for g in INSUFFICIENT_GOLDS)
_EVIDENCE_ITEM = re.compile(r"\[(\d+)\]\s*:")

# The keys `aggregate_grounding` may return, in the order reports show them. Means with no defined value are left
# out, so a consumer must not assume every key is present; the count is always there.
GROUNDING_KEYS = (
    "evidence_precision",
    "evidence_recall",
    "evidence_f1",
    "issuff_refusal_rate",
    "unsuff_answer_rate",
    "cnt_evidence",
)


@dataclass(frozen=True)
class QuestionGrounding:
    """One question's grounding; the scores are None when positives are unknown or the ratio is undefined."""

    cited: tuple[int, ...]
    positives: tuple[int, ...] | None
    is_sufficient: bool
    insufficient_answer: bool
    precision: float | None
    recall: float | None
    f1: float | None


def evidence_items(response: str) -> dict[int, str]:
    """Image index → evidence text (stripped) of the closed `<evidence>` block; {} without one.

    An item runs from its `[i]:` to the next `[j]:`; when an index repeats, the first item is kept.
    """
    block = extract_block(response, "evidence")
    if block is None:
        return {}
    markers = list(_EVIDENCE_ITEM.finditer(block))
    items: dict[int, str] = {}
    bounds = [m.start() for m in markers] + [len(block)]
    for marker, end in zip(markers, bounds[1:], strict=True):
        items.setdefault(int(marker.group(1)), block[marker.end() : end].strip())
    return items


def cites(text: str) -> bool:
    """An evidence item cites its image unless it is empty or says "no relevant information" (any case/punct.)."""
    normalised = normalize_answer(text)
    return bool(normalised) and not normalised.startswith(NO_RELEVANT_INFORMATION)


def cited_images(response: str) -> tuple[int, ...]:
    """Sorted 1-based indices of the images the response's evidence block cites as relevant."""
    return tuple(sorted(i for i, text in evidence_items(response).items() if cites(text)))


def is_insufficient_answer(response: str) -> bool:
    """Whether the extracted answer (spec §3 step 1) says the images cannot answer the question."""
    answer = normalize_answer(extract_answer(response))
    return answer in _INSUFFICIENT_ANSWERS or answer.startswith("insufficient")


def citation_scores(cited: Sequence[int], positives: Sequence[int]) -> tuple[float | None, float | None, float]:
    """(precision, recall, F1) of cited vs positive image indices, as defined in the module docstring."""
    c, p = set(cited), set(positives)
    hits = len(c & p)
    precision = hits / len(c) if c else None
    recall = hits / len(p) if p else None
    f1 = 1.0 if not c and not p else 2 * hits / (len(c) + len(p))
    return precision, recall, f1


def question_grounding(response: str, positives: Sequence[int] | None, is_sufficient: bool) -> QuestionGrounding:
    """Grounding of one raw generation against the question's positive images (None: not known)."""
    cited = cited_images(response)
    known = tuple(sorted(set(positives))) if positives is not None else None
    precision, recall, f1 = citation_scores(cited, known) if known is not None else (None, None, None)
    return QuestionGrounding(
        cited=cited,
        positives=known,
        is_sufficient=is_sufficient,
        insufficient_answer=is_insufficient_answer(response),
        precision=precision,
        recall=recall,
        f1=f1,
    )


def _mean_defined(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    defined = [v for v in values if v is not None]
    return math.fsum(defined) / len(defined) if defined else None


def aggregate_grounding(questions: Iterable[QuestionGrounding]) -> dict[str, float | int]:
    """Means of the per-question grounding (keys of GROUNDING_KEYS); a mean with no defined value is left out."""
    rows = list(questions)
    means = {
        "evidence_precision": _mean_defined(q.precision for q in rows),
        "evidence_recall": _mean_defined(q.recall for q in rows),
        "evidence_f1": _mean_defined(q.f1 for q in rows),
        "issuff_refusal_rate": _mean_defined(float(q.insufficient_answer) for q in rows if q.is_sufficient),
        "unsuff_answer_rate": _mean_defined(float(not q.insufficient_answer) for q in rows if not q.is_sufficient),
    }
    result: dict[str, float | int] = {k: v for k, v in means.items() if v is not None}
    result["cnt_evidence"] = sum(1 for q in rows if q.positives is not None)
    return result
