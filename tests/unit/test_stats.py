"""evisrag_core.stats: paired differences and the two-level bootstrap interval of the estimator study."""

from __future__ import annotations

import numpy as np
import pytest

from evisrag_core.stats import bootstrap_means, paired_bootstrap, paired_differences


@pytest.mark.parametrize(
    ("a", "b", "mean"),
    [
        ([[1, 1, 0, 0]], [[0, 1, 0, 1]], 0.0),  # one seed: +1 and −1 cancel
        ([[1, 1], [1, 0]], [[0, 0], [0, 0]], 0.75),  # 3 of 4 seed × question cells better
        ([[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]], 0.0),
    ],
)
def test_mean_is_the_mean_of_paired_differences(a: list, b: list, mean: float) -> None:
    assert paired_bootstrap(a, b, replicates=200)["mean"] == pytest.approx(mean)


def test_constant_difference_has_a_zero_width_interval() -> None:
    result = paired_bootstrap([[1.0] * 5] * 3, [[0.0] * 5] * 3, replicates=300)
    assert result["mean"] == 1.0 and result["ci95"] == [1.0, 1.0]


def test_interval_is_reproducible_and_depends_on_the_bootstrap_seed() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.random((5, 50)), rng.random((5, 50))
    first, again = paired_bootstrap(a, b, replicates=500, seed=1), paired_bootstrap(a, b, replicates=500, seed=1)
    assert first == again
    assert paired_bootstrap(a, b, replicates=500, seed=2)["ci95"] != first["ci95"]


def width(result: dict) -> float:
    return result["ci95"][1] - result["ci95"][0]


def test_seed_level_noise_widens_the_interval() -> None:
    """Same question-level noise; when whole seeds also differ (one RL run good, another bad), resampling seeds must
    show it: the interval is wider than with seeds that agree."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, (5, 400))
    agreeing = paired_bootstrap(noise + 0.1, np.zeros_like(noise), replicates=2000)
    seed_shift = np.array([[-0.3], [0.4], [0.0], [0.5], [-0.1]])  # mean shift 0.1 overall
    disagreeing = paired_bootstrap(noise + seed_shift, np.zeros_like(noise), replicates=2000)
    assert width(disagreeing) > 5 * width(agreeing)
    assert agreeing["ci95"][0] > 0  # a consistent +0.1 is beyond noise
    assert disagreeing["ci95"][0] < 0 < disagreeing["ci95"][1]  # five disagreeing runs are not


def test_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    """Coverage check on simulated studies (5 seeds with a seed effect, 200 binary questions): the true mean
    difference is inside the interval in roughly 95 % of them (a loose band: 60 studies)."""
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(60):
        seed_effect = rng.normal(0.05, 0.05, (5, 1))
        a = (rng.random((5, 200)) < 0.6 + seed_effect).astype(float)
        b = (rng.random((5, 200)) < 0.6).astype(float)
        low, high = paired_bootstrap(a, b, replicates=400, seed=int(rng.integers(1 << 30)))["ci95"]
        covered += low <= 0.05 <= high
    assert covered >= 48  # ≥ 80 % of 60: a 95 % interval that under-covers badly fails here


def test_bootstrap_means_resample_both_levels() -> None:
    # d differs only between seeds: a question-only bootstrap would give one value; seeds resampled give several
    d = np.array([[0.0, 0.0], [1.0, 1.0]])
    assert len(set(bootstrap_means(d, 200, seed=0).round(6))) > 1
    # and only between questions: resampling questions must show it too
    assert len(set(bootstrap_means(d.T.copy(), 200, seed=0).round(6))) > 1


@pytest.mark.parametrize(("a", "b"), [([[1, 2]], [[1, 2, 3]]), ([1, 2], [1, 2]), ([[]], [[]])])
def test_unpaired_shapes_are_refused(a: list, b: list) -> None:
    with pytest.raises(ValueError):
        paired_differences(a, b)
