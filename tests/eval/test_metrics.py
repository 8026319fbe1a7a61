import math

import numpy as np
import pytest

from cmpo.eval import metrics as M


def test_preference_accuracy_counts_ties_as_wrong():
    out = M.preference_accuracy([1.0, 2.0, 3.0, 0.5], [0.0, 2.0, 4.0, 0.0])
    assert out["correct"] == 2 and out["ties"] == 1 and out["n"] == 4
    assert out["accuracy"] == 0.5
    lo, hi = out["ci95"]
    assert lo < 0.5 < hi


def test_preference_accuracy_all_equal_is_zero():
    out = M.preference_accuracy([1.0] * 5, [1.0] * 5)
    assert out["accuracy"] == 0.0 and out["ties"] == 5


def test_preference_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        M.preference_accuracy([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="rejected: non-finite value at row 1"):
        M.preference_accuracy([1.0, 2.0], [1.0, float("nan")])


def test_wilson_interval_matches_hand_computation():
    # p = 0.8, n = 10, z = 1.96: centre = (0.8 + 0.19208) / 1.38416 = 0.71674; half = 1.96·√(0.016 + 0.0096040)/1.38416
    lo, hi = M.wilson_interval(8, 10)
    half = 1.959963984540054 * math.sqrt(0.016 + 1.959963984540054**2 / 400) / (1 + 1.959963984540054**2 / 10)
    centre = (0.8 + 1.959963984540054**2 / 20) / (1 + 1.959963984540054**2 / 10)
    assert lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert M.wilson_interval(0, 10)[0] == 0.0 and M.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert all(math.isnan(x) for x in M.wilson_interval(0, 0))


def test_implicit_reward_accuracy_uses_reference():
    # policy alone prefers rejected in row 0, but relative to the reference it prefers chosen.
    out = M.implicit_reward_accuracy([-10.0, -5.0], [-8.0, -4.0], [-15.0, -5.0], [-8.0, -4.0])
    # rewards: row0 c=5, r=0 -> correct; row1 c=0, r=0 -> tie -> wrong
    assert out["correct"] == 1 and out["ties"] == 1 and out["accuracy"] == 0.5
    assert out["mean_margin"] == pytest.approx(2.5)


def test_rank_correlation_known_values():
    perfect = M.rank_correlation([1, 2, 3, 4], [10, 20, 30, 40])
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["kendall"] == pytest.approx(1.0)
    reverse = M.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1])
    assert reverse["spearman"] == pytest.approx(-1.0) and reverse["kendall"] == pytest.approx(-1.0)
    # one swapped adjacent pair out of 6 pairs: τ = (5 − 1)/6; ρ = 1 − 6·2/(4·15) = 0.8
    one_swap = M.rank_correlation([1, 2, 3, 4], [1, 3, 2, 4])
    assert one_swap["kendall"] == pytest.approx(4 / 6) and one_swap["spearman"] == pytest.approx(0.8)
    const = M.rank_correlation([1, 1, 1], [1, 2, 3])
    assert math.isnan(const["spearman"]) and const["n"] == 3


def test_win_rate_with_ties():
    out = M.win_rate([1, 1, 0, -1])
    assert out["win_rate"] == 0.25 and (out["wins"], out["ties"], out["losses"], out["n"]) == (2, 1, 1, 4)
    assert out["ci95"][0] <= 0.25 <= out["ci95"][1]
    assert M.win_rate([0, 0, 0])["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        M.win_rate([2])


def test_bootstrap_mean_ci_is_seeded_and_brackets_the_mean():
    x = np.arange(20, dtype=float)
    assert M.bootstrap_mean_ci(x, seed=3) == M.bootstrap_mean_ci(x, seed=3)
    lo, hi = M.bootstrap_mean_ci(x)
    assert lo < x.mean() < hi
    lo2, hi2 = M.bootstrap_ci(x, statistic=np.median)
    assert lo2 < np.median(x) < hi2


class _Stub:
    def __init__(self, kind, attributes):
        self.kind, self.attributes = kind, attributes


def test_single_attribute_conditions_follow_the_thesis():
    attrs = ["helpfulness", "humor", "toxicity"]
    assert M.single_attribute_condition(_Stub("plural", attrs), "humor").weights == (0.0, 1.0, 0.0)
    acm = M.single_attribute_condition(_Stub("steerlm", attrs), "humor")
    assert acm.acm_values == {"helpfulness": 0, "humor": 4, "toxicity": 0} and acm.weights is None
    assert M.single_attribute_condition(_Stub("hf", None), "humor") == M.Condition()
    with pytest.raises(ValueError, match="not one of"):
        M.single_attribute_condition(_Stub("plural", attrs), "length")
