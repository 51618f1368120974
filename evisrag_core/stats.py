"""Paired differences between two training arms with a two-level bootstrap interval (the estimator study, issue 18;
the procedure is pre-registered in docs/study_estimators.md).

The data of a contrast is a matrix d[s, q] = metric(arm A, seed s, question q) − metric(arm B, seed s, question q):
both arms ran with the same seeds from the same start and answered the same questions. Two sources of noise make
the mean of d uncertain: which RL run a seed happens to give (the seeds), and which questions the test set happens
to hold (the questions). One bootstrap replicate resamples both, independently and with replacement: S seeds and Q
questions, and takes the mean of d over the resampled S × Q grid. The 95 % interval is the 2.5th and 97.5th
percentiles of the replicates (the percentile bootstrap). With one seed it reduces to a bootstrap over questions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95


def paired_differences(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> np.ndarray:
    """d[s, q] = a[s][q] − b[s][q]; both must be seeds × questions of the same shape (the pairing)."""
    first, second = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if first.ndim != 2 or first.shape != second.shape:
        raise ValueError(f"paired arms need the same seeds × questions shape, got {first.shape} and {second.shape}")
    if first.size == 0:
        raise ValueError("no paired values: need at least one seed and one question")
    return first - second


def bootstrap_means(d: np.ndarray, replicates: int, seed: int) -> np.ndarray:
    """`replicates` means of d, each over seeds and questions drawn with replacement (independently)."""
    rng = np.random.default_rng(seed)
    n_seeds, n_questions = d.shape
    seeds = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    questions = rng.integers(0, n_questions, size=(replicates, n_questions))
    # mean over the grid = mean over resampled seeds of (mean over resampled questions of d[s, ·]); computed per
    # replicate as a row-then-column gather, so memory stays replicates × (S + Q) plus one S × Q slice at a time.
    means = np.empty(replicates)
    for r in range(replicates):
        means[r] = d[seeds[r]][:, questions[r]].mean()
    return means


def paired_bootstrap(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    replicates: int = 10_000,
    seed: int = 0,
) -> dict[str, float | list[float]]:
    """The mean paired difference a − b and its 95 % two-level percentile-bootstrap interval.

    Returns {"mean", "ci95": [lo, hi], "replicates"}. `seed` fixes the bootstrap's own draws: the same data give
    the same interval."""
    d = paired_differences(a, b)
    means = bootstrap_means(d, replicates, seed)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"mean": float(d.mean()), "ci95": [float(low), float(high)], "replicates": replicates}
