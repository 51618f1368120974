"""Question-answering metrics of the reference evaluation script (spec §3): EM, Accuracy and token F1.

For one question with normalised answer p and normalised gold answers g_1..g_n (tokens = whitespace split):

    overlap(p, g) = |tokens(p) ∩ tokens(g)|   (multiset intersection)
    EM(p, g)  = [p == g]
    Acc(p, g) = [set(tokens(g)) ⊆ set(tokens(p))]
    F1(p, g)  = 2·P·R / (P + R + 1e-7),  P = overlap / |tokens(p)|,  R = overlap / |tokens(g)|

A gold with overlap 0 contributes nothing to any metric (so two empty strings score 0, not EM 1); each metric is
the maximum over the golds, taken separately. A question whose images cannot answer it (`is_sufficient` false) is
scored against `INSUFFICIENT_GOLDS` instead of its own golds.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from evisrag_core.parsing import extract_answer

INSUFFICIENT_GOLDS: tuple[str, ...] = (
    "no relevant information",
    "insufficient to answer",
    "insufficient to answer the question",
)

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_F1_EPSILON = 1e-7


@dataclass(frozen=True)
class QuestionScore:
    em: float
    acc: float
    f1: float


def normalize_answer(s: str) -> str:
    """Lowercase, drop ASCII punctuation, blank out the words a/an/the, collapse whitespace (spec §3 step 2).

    The order matters and is the reference's: punctuation goes first, so "a." is an article and "11%" becomes "11".
    """
    text = s.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def score_against_gold(pred: str, gold: str) -> QuestionScore | None:
    """EM/Acc/F1 of one normalised prediction against one normalised gold; None when they share no token."""
    pred_tokens, gold_tokens = pred.split(), gold.split()
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return None
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return QuestionScore(
        em=float(pred == gold),
        acc=float(set(gold_tokens) <= set(pred_tokens)),
        f1=(2 * precision * recall) / (precision + recall + _F1_EPSILON),
    )


def score_prediction(pred_text: str, golds: Sequence[str], is_sufficient: bool) -> QuestionScore:
    """Score one raw generation: extract the answer, pick the golds, take each metric's max over golds."""
    pred = normalize_answer(extract_answer(pred_text))
    targets = golds if is_sufficient else INSUFFICIENT_GOLDS
    scores = [s for g in targets if (s := score_against_gold(pred, normalize_answer(g))) is not None]
    return QuestionScore(
        em=max((s.em for s in scores), default=0.0),
        acc=max((s.acc for s in scores), default=0.0),
        f1=max((s.f1 for s in scores), default=0.0),
    )


def _mean(values: list[float]) -> float:
    """Mean that is 0.0 for no values, as the reference reports an empty group."""
    return math.fsum(values) / len(values) if values else 0.0


# The keys `aggregate` returns, in the order reports show them (means first, then counts).
METRIC_KEYS = (
    "global_em",
    "global_acc",
    "global_f1",
    "issuff_em",
    "issuff_acc",
    "issuff_f1",
    "unsuff_em",
    "cnt_global",
    "cnt_issuff",
    "cnt_unsuff",
)


def aggregate(rows: Iterable[tuple[QuestionScore, bool]]) -> dict[str, float | int]:
    """Means over all questions, over sufficient ones, EM over insufficient ones, and the counts (spec §3 step 5)."""
    pairs = list(rows)
    suff = [score for score, is_sufficient in pairs if is_sufficient]
    unsuff = [score for score, is_sufficient in pairs if not is_sufficient]
    every = [score for score, _ in pairs]
    return {
        "global_em": _mean([s.em for s in every]),
        "global_acc": _mean([s.acc for s in every]),
        "global_f1": _mean([s.f1 for s in every]),
        "issuff_em": _mean([s.em for s in suff]),
        "issuff_acc": _mean([s.acc for s in suff]),
        "issuff_f1": _mean([s.f1 for s in suff]),
        "unsuff_em": _mean([s.em for s in unsuff]),
        "cnt_global": len(every),
        "cnt_issuff": len(suff),
        "cnt_unsuff": len(unsuff),
    }
