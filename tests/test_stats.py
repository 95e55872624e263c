"""zoo.bench.stats against values computed by hand (closed forms written out in the tests, not taken from scipy)."""

import math

import pytest

from zoo.bench.stats import mean_ci, paired_accuracy_diff, ratio_ci, time_to_reach, welch_ttest

T_975_DF3 = 3.182446305  # Student-t table, 0.975 quantile, 3 df


def t975_df2() -> float:
    # closed-form Student-t quantile for 2 df: t_p = (2p - 1) / sqrt(2 p (1 - p))
    p = 0.975
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def t_cdf_df4(t: float) -> float:
    # closed-form Student-t CDF for 4 df
    x = t * t / 4
    return 0.5 + 3 / 8 * (t / math.sqrt(1 + x)) * (1 - t * t / (12 * (1 + x)))


def test_mean_ci_hand_values():
    r = mean_ci([1, 2, 3, 4])
    # mean 2.5; sum of squares 2.25+0.25+0.25+2.25 = 5 -> var 5/3, sd 1.29099; se = sd/2
    assert r["n"] == 4
    assert r["mean"] == pytest.approx(2.5)
    assert r["std"] == pytest.approx(math.sqrt(5 / 3))
    assert r["std"] == pytest.approx(1.2910, abs=1e-4)
    assert r["half_width"] == pytest.approx(T_975_DF3 * math.sqrt(5 / 3) / 2, rel=1e-8)
    assert r["half_width"] == pytest.approx(2.0543, abs=1e-4)
    assert r["ci_low"] == pytest.approx(2.5 - 2.05426, abs=1e-4)
    assert r["ci_high"] == pytest.approx(2.5 + 2.05426, abs=1e-4)
    assert r["reason"] is None


def test_mean_ci_other_confidence_df2():
    # values [1, 2, 3]: sd 1, se 1/sqrt(3), 2 df
    r = mean_ci([1.0, 2.0, 3.0], confidence=0.95)
    assert r["half_width"] == pytest.approx(t975_df2() / math.sqrt(3), rel=1e-9)
    # wider confidence -> wider interval
    assert mean_ci([1.0, 2.0, 3.0], confidence=0.99)["half_width"] > r["half_width"]


def test_mean_ci_single_value_is_explicitly_undefined():
    r = mean_ci([0.7])
    assert r["mean"] == 0.7 and r["n"] == 1
    assert math.isnan(r["half_width"]) and math.isnan(r["std"]) and math.isnan(r["ci_low"])
    assert "n=1" in r["reason"]


def test_mean_ci_zero_variance_and_errors():
    r = mean_ci([3.0, 3.0, 3.0])
    assert r["half_width"] == 0.0 and r["ci_low"] == r["ci_high"] == 3.0
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError):
        mean_ci([1.0, 2.0], confidence=1.5)


def test_welch_hand_values_unequal_n():
    a, b = [1, 2, 3, 4], [2, 4, 6]
    # a: mean 2.5, var 5/3 -> va/na = 5/12; b: mean 4, var 4 -> vb/nb = 4/3
    ua, ub = 5 / 12, 4 / 3
    se = math.sqrt(ua + ub)  # sqrt(1.75) = 1.322876
    df = (ua + ub) ** 2 / (ua**2 / 3 + ub**2 / 2)  # 3.0625 / 0.946759 = 3.234719
    r = welch_ttest(a, b)
    assert r["t"] == pytest.approx(-1.5 / se)
    assert r["t"] == pytest.approx(-1.133893, abs=1e-6)
    assert r["df"] == pytest.approx(df)
    assert r["df"] == pytest.approx(3.234719, abs=1e-6)
    assert r["diff"] == pytest.approx(-1.5)
    assert r["se"] == pytest.approx(1.322876, abs=1e-6)
    # two-sided p for |t|=1.1339 on ~3.2 df lies between the 3-df and 4-df values (0.339 and 0.320)
    assert 0.30 < r["p"] < 0.35
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    assert r["reason"] is None


def test_welch_hand_values_integer_df():
    # equal n and equal variances: df = 2 (n - 1) = 4, t = -3 / sqrt(1/3 + 1/3) = -3.674235
    r = welch_ttest([1, 2, 3], [4, 5, 6])
    t = -3 / math.sqrt(2 / 3)
    assert r["t"] == pytest.approx(t)
    assert r["df"] == pytest.approx(4.0)
    assert r["p"] == pytest.approx(2 * (1 - t_cdf_df4(abs(t))), rel=1e-8)
    assert r["p"] == pytest.approx(0.021312, abs=1e-6)


def test_welch_one_group_constant_still_defined():
    # zero variance in one group only: df = n_other - 1
    r = welch_ttest([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert r["df"] == pytest.approx(2.0)
    assert r["t"] == pytest.approx(-1.0 / math.sqrt(1 / 3))


@pytest.mark.parametrize(
    ("a", "b", "word"),
    [([1.0], [1.0, 2.0], "n>=2"), ([1.0, 2.0], [3.0], "n>=2"), ([2.0, 2.0], [3.0, 3.0, 3.0], "zero variance")],
)
def test_welch_degenerate_returns_nan_with_reason(a, b, word):
    r = welch_ttest(a, b)
    assert math.isnan(r["p"]) and math.isnan(r["t"]) and math.isnan(r["df"])
    assert word in r["reason"]
    assert r["diff"] == pytest.approx(sum(a) / len(a) - sum(b) / len(b))


def test_welch_empty_raises():
    with pytest.raises(ValueError):
        welch_ttest([], [1.0, 2.0])


def test_ratio_ci_hand_values():
    # a = [9, 11]: mean 10, var 2 -> u_a = 2 / (2 * 100) = 0.01
    # b = [4.5, 5.5]: mean 5, var 0.5 -> u_b = 0.5 / (2 * 25) = 0.01
    # se_log = sqrt(0.02); df = 0.02^2 / (0.01^2 + 0.01^2) = 2
    r = ratio_ci([9.0, 11.0], [4.5, 5.5])
    half = t975_df2() * math.sqrt(0.02)  # 4.302653 * 0.141421 = 0.608490
    assert r["ratio"] == pytest.approx(2.0)
    assert r["df"] == pytest.approx(2.0)
    assert r["se_log"] == pytest.approx(math.sqrt(0.02))
    assert r["ci_low"] == pytest.approx(2 * math.exp(-half))
    assert r["ci_high"] == pytest.approx(2 * math.exp(half))
    assert r["ci_low"] == pytest.approx(1.0883, abs=1e-4)
    assert r["ci_high"] == pytest.approx(3.6753, abs=1e-4)


def test_ratio_ci_reciprocal_symmetry():
    a, b = [100.0, 104.0, 98.0], [80.0, 83.0, 79.0, 81.0]
    r, inv = ratio_ci(a, b), ratio_ci(b, a)
    assert r["ratio"] * inv["ratio"] == pytest.approx(1.0)
    assert r["ci_low"] * inv["ci_high"] == pytest.approx(1.0)
    assert r["ci_high"] * inv["ci_low"] == pytest.approx(1.0)


def test_ratio_ci_degenerate():
    r = ratio_ci([10.0], [5.0, 6.0])
    assert r["ratio"] == pytest.approx(10 / 5.5) and math.isnan(r["ci_low"]) and "n>=2" in r["reason"]
    r = ratio_ci([10.0, 10.0], [5.0, 5.0])
    assert r["ci_low"] == r["ci_high"] == pytest.approx(2.0) and "zero variance" in r["reason"]
    r = ratio_ci([1.0, 2.0], [0.0, 0.0])
    assert math.isnan(r["ratio"]) and "positive" in r["reason"]


def test_time_to_reach():
    curve = [(30.0, 0.5), (10.0, 0.2), (20.0, 0.45), (40.0, 0.7), (50.0, 0.6)]
    assert time_to_reach(curve, 0.45) == 20.0  # unsorted input, inclusive threshold
    assert time_to_reach(curve, 0.65) == 40.0  # first evaluated point, no interpolation
    assert time_to_reach(curve, 0.9) is None
    assert time_to_reach([], 0.1) is None
    assert time_to_reach([[1, float("nan")], [2, 0.3]], 0.1) == 2.0


def _binom_tail_at_least(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_paired_accuracy_diff_against_hand_counts():
    # 100 images: both right on 80, a alone on 10, b alone on 2, both wrong on 8
    a = [True] * 80 + [True] * 10 + [False] * 2 + [False] * 8
    b = [True] * 80 + [False] * 10 + [True] * 2 + [False] * 8
    r = paired_accuracy_diff(a, b)
    assert (r["n"], r["n_ab"], r["n_ba"]) == (100, 10, 2)
    assert r["diff"] == pytest.approx(0.08)
    # McNemar exact, two-sided: 2 * P(X >= 10), X ~ Binomial(12, 1/2) = 2 * (66 + 12 + 1) / 4096
    assert r["p_value"] == pytest.approx(2 * 79 / 4096)
    # the bounds map Clopper-Pearson's: at the lower share P(X >= 10) = 0.025, at the upper P(X <= 10) = 0.025
    low_share = (r["ci_low"] * 100 / 12 + 1) / 2
    high_share = (r["ci_high"] * 100 / 12 + 1) / 2
    assert _binom_tail_at_least(10, 12, low_share) == pytest.approx(0.025, abs=1e-9)
    assert 1 - _binom_tail_at_least(11, 12, high_share) == pytest.approx(0.025, abs=1e-9)
    assert r["ci_low"] < r["diff"] < r["ci_high"]


def test_paired_accuracy_diff_is_antisymmetric_and_degenerate_cases():
    a = [True, False, True, True, False, True]
    b = [False, True, True, False, False, True]
    r, s = paired_accuracy_diff(a, b), paired_accuracy_diff(b, a)
    assert r["diff"] == pytest.approx(-s["diff"]) and r["p_value"] == pytest.approx(s["p_value"])
    assert r["ci_low"] == pytest.approx(-s["ci_high"]) and r["ci_high"] == pytest.approx(-s["ci_low"])
    same = paired_accuracy_diff(a, a)
    assert (same["diff"], same["ci_low"], same["ci_high"], same["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert "same images" in same["reason"]
    with pytest.raises(ValueError, match="equally long"):
        paired_accuracy_diff(a, b[:-1])
