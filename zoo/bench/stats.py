"""Small, pure statistics helpers for the multi-seed benchmark harness.

Everything here works on plain sequences of floats (one value per seed) and returns plain dicts, so results can be
written straight to JSON. Degenerate inputs (too few seeds, zero variance) never crash the harness: they yield ``nan``
together with a human-readable ``reason`` so a report shows *why* a number is missing instead of a fake precision.
Every dict returned by this module has a ``reason`` key (``None`` when the statistic is well defined).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["mean_ci", "welch_ttest", "ratio_ci", "paired_accuracy_diff", "time_to_reach"]


def _as_array(values: Iterable[float], name: str = "values") -> np.ndarray:
    """Convert to a 1-D float array, rejecting non-finite entries.

    A NaN/inf accuracy or wall-clock almost always means a crashed or diverged run; silently averaging it (or dropping
    it) would misstate the result, so the caller has to decide explicitly.
    """
    arr = np.asarray(list(values), dtype=float).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite entries: {arr.tolist()}")
    return arr


def _t_quantile(confidence: float, df: float) -> float:
    """Two-sided Student-t critical value for ``confidence`` (e.g. 0.95 -> t(0.975, df))."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return float(_st.t.ppf(0.5 + confidence / 2.0, df))


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict:
    """Mean with a Student-t confidence interval.

    Args:
        values: One observation per seed. Must be finite.
        confidence: Two-sided confidence level.

    Returns:
        ``{"mean", "std", "n", "ci_low", "ci_high", "half_width", "confidence", "reason"}``. ``std`` is the sample
        standard deviation (ddof=1). With ``n == 1`` the spread is unknowable: ``std``, ``half_width`` and the CI bounds
        are ``nan`` and ``reason`` says so. With zero variance the CI collapses to the mean (half width 0).

    Raises:
        ValueError: If ``values`` is empty or contains non-finite entries.
    """
    x = _as_array(values)
    n = int(x.size)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if n == 1:
        nan = float("nan")
        return {
            "mean": mean,
            "std": nan,
            "n": 1,
            "ci_low": nan,
            "ci_high": nan,
            "half_width": nan,
            "confidence": confidence,
            "reason": "n=1: standard deviation and confidence interval are undefined",
        }
    std = float(x.std(ddof=1))
    half = _t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {
        "mean": mean,
        "std": std,
        "n": n,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "half_width": half,
        "confidence": confidence,
        "reason": None,
    }


def welch_ttest(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> dict:
    """Two-sided Welch's t-test for a difference in means (``mean(a) - mean(b)``), unequal variances.

    ``t`` and ``p`` come from ``scipy.stats.ttest_ind(equal_var=False)``; the Welch–Satterthwaite degrees of freedom
    ``df = (va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1))`` are computed explicitly so they can be reported
    (and used for the CI of the difference, which is more informative than ``p`` alone).

    Args:
        a: Samples of the first group (e.g. an arm's per-seed accuracy).
        b: Samples of the second group (e.g. the baseline's).
        confidence: Level of the CI on the difference of means.

    Returns:
        ``{"t", "p", "df", "diff", "se", "ci_low", "ci_high", "n_a", "n_b", "mean_a", "mean_b", "reason"}``. If either
        group has fewer than 2 samples, or both have zero variance (the t statistic is 0/0 or ±inf, and a p-value
        would be meaningless), ``t``, ``p``, ``df`` and the CI are ``nan`` and ``reason`` explains why. ``diff`` is
        always reported.

    Raises:
        ValueError: If either group is empty or contains non-finite entries.
    """
    xa, xb = _as_array(a, "a"), _as_array(b, "b")
    na, nb = int(xa.size), int(xb.size)
    if na == 0 or nb == 0:
        raise ValueError("welch_ttest needs at least one value in each group")
    mean_a, mean_b = float(xa.mean()), float(xb.mean())
    nan = float("nan")
    out = {
        "t": nan,
        "p": nan,
        "df": nan,
        "diff": mean_a - mean_b,
        "se": nan,
        "ci_low": nan,
        "ci_high": nan,
        "n_a": na,
        "n_b": nb,
        "mean_a": mean_a,
        "mean_b": mean_b,
        "confidence": confidence,
        "reason": None,
    }
    if na < 2 or nb < 2:
        out["reason"] = f"need n>=2 in both groups for a variance estimate (n_a={na}, n_b={nb})"
        return out
    va, vb = float(xa.var(ddof=1)), float(xb.var(ddof=1))
    ua, ub = va / na, vb / nb
    if ua == 0.0 and ub == 0.0:
        out["reason"] = "zero variance in both groups: t-test undefined"
        return out
    df = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1))
    with warnings.catch_warnings():
        # scipy warns about "catastrophic cancellation" when one group is constant; that group's variance is exactly
        # 0 and Welch's test is still well defined (df = n_other - 1), so the warning is noise here
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        res = _st.ttest_ind(xa, xb, equal_var=False)
    se = math.sqrt(ua + ub)
    half = _t_quantile(confidence, df) * se
    out.update(
        t=float(res.statistic),
        p=float(res.pvalue),
        df=float(df),
        se=se,
        ci_low=out["diff"] - half,
        ci_high=out["diff"] + half,
    )
    return out


def ratio_ci(a: Iterable[float], b: Iterable[float], confidence: float = 0.95) -> dict:
    """Ratio of means ``mean(a) / mean(b)`` of two independent samples, with a delta-method CI on the log scale.

    Method: ``log R = log mean(a) - log mean(b)``; by the delta method ``Var(log mean(x)) ≈ s_x^2 / (n_x mean(x)^2)``
    (squared CV of the mean), so ``se_log = sqrt(u_a + u_b)`` with ``u_x = s_x^2 / (n_x mean(x)^2)``. The interval is
    ``R * exp(±t * se_log)`` with ``t`` from a Student-t with Welch–Satterthwaite df
    ``(u_a + u_b)^2 / (u_a^2/(n_a-1) + u_b^2/(n_b-1))`` — with 3–5 seeds a normal quantile would be far too narrow.
    Working on the log scale keeps both bounds positive and makes ``ratio_ci(b, a)`` the exact reciprocal of
    ``ratio_ci(a, b)``, which matters for speedup (baseline/arm) vs. slowdown. Chosen over Fieller because Fieller's
    interval can be unbounded or disjoint when the denominator is noisy, which is awkward to report; for positive
    quantities with small CVs (wall-clock, throughput, memory) the two agree closely.

    Args:
        a: Numerator samples (e.g. baseline wall-clock seconds for a speedup).
        b: Denominator samples (e.g. the arm's wall-clock seconds).
        confidence: Two-sided confidence level.

    Returns:
        ``{"ratio", "ci_low", "ci_high", "se_log", "df", "n_a", "n_b", "confidence", "method", "reason"}``. The CI is
        ``nan`` (with ``reason``) when either sample has fewer than 2 values or a mean is not positive; it collapses
        to the ratio when both samples have zero variance. ``ratio`` is ``nan`` only if ``mean(b) == 0``.

    Raises:
        ValueError: If either sample is empty or contains non-finite entries.
    """
    xa, xb = _as_array(a, "a"), _as_array(b, "b")
    na, nb = int(xa.size), int(xb.size)
    if na == 0 or nb == 0:
        raise ValueError("ratio_ci needs at least one value in each sample")
    ma, mb = float(xa.mean()), float(xb.mean())
    nan = float("nan")
    out = {
        "ratio": ma / mb if mb != 0.0 else nan,
        "ci_low": nan,
        "ci_high": nan,
        "se_log": nan,
        "df": nan,
        "n_a": na,
        "n_b": nb,
        "confidence": confidence,
        "method": "delta method on log scale, Welch-Satterthwaite df",
        "reason": None,
    }
    if ma <= 0.0 or mb <= 0.0:
        out["reason"] = f"log-scale CI needs positive means (mean_a={ma}, mean_b={mb})"
        return out
    if na < 2 or nb < 2:
        out["reason"] = f"need n>=2 in both samples for a variance estimate (n_a={na}, n_b={nb})"
        return out
    ua = float(xa.var(ddof=1)) / (na * ma**2)
    ub = float(xb.var(ddof=1)) / (nb * mb**2)
    se = math.sqrt(ua + ub)
    if se == 0.0:
        out.update(ci_low=out["ratio"], ci_high=out["ratio"], se_log=0.0, reason="zero variance in both samples")
        return out
    df = (ua + ub) ** 2 / (ua**2 / (na - 1) + ub**2 / (nb - 1))
    half = _t_quantile(confidence, df) * se
    out.update(
        ci_low=out["ratio"] * math.exp(-half),
        ci_high=out["ratio"] * math.exp(half),
        se_log=se,
        df=float(df),
    )
    return out


def paired_accuracy_diff(correct_a: Sequence[bool], correct_b: Sequence[bool], confidence: float = 0.95) -> dict:
    """Top-1 of model ``a`` minus model ``b`` on the same test images, from each image's right/wrong pair.

    Two models scored on one test split are paired: only the images they disagree on carry information (``a`` right
    and ``b`` wrong: ``n_ab``; the reverse: ``n_ba``), so treating the two accuracies as independent proportions would
    overstate the noise several-fold. McNemar's exact test: under "equally accurate", ``n_ab`` is Binomial(``n_ab +
    n_ba``, 1/2) (``scipy.stats.binomtest``; scipy has no McNemar and statsmodels is not a dependency for one
    function). The interval is the exact conditional one: the Clopper-Pearson interval of ``n_ab / (n_ab + n_ba)``
    mapped onto the difference ``(n_ab - n_ba) / n``, with the number of discordant images taken as given.

    Returns:
        ``{"diff", "ci_low", "ci_high", "p_value", "n", "n_ab", "n_ba", "confidence", "method", "reason"}``, the
        difference and its bounds as fractions (x 100 for points). With no discordant image the interval is the
        point ``0`` and ``p_value`` 1 (``reason`` says so).

    Raises:
        ValueError: If the two sequences differ in length or are empty.
    """
    a = np.asarray(correct_a, dtype=bool).reshape(-1)
    b = np.asarray(correct_b, dtype=bool).reshape(-1)
    if a.size != b.size or a.size == 0:
        raise ValueError(f"paired_accuracy_diff needs two equally long, non-empty sequences (got {a.size}, {b.size})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n, n_ab, n_ba = int(a.size), int((a & ~b).sum()), int((~a & b).sum())
    discordant = n_ab + n_ba
    out = {"diff": (n_ab - n_ba) / n, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "n": n, "n_ab": n_ab,
           "n_ba": n_ba, "confidence": confidence, "method": "McNemar exact; conditional Clopper-Pearson interval",
           "reason": None}  # fmt: skip
    if discordant == 0:
        out["reason"] = "the two models are right on exactly the same images"
        return out
    test = _st.binomtest(n_ab, discordant, 0.5)
    share = test.proportion_ci(confidence_level=confidence, method="exact")
    scale = discordant / n
    out.update(ci_low=scale * (2 * share.low - 1), ci_high=scale * (2 * share.high - 1), p_value=float(test.pvalue))
    return out


def time_to_reach(curve: Sequence[Sequence[float]], target: float) -> float | None:
    """Earliest time at which an accuracy curve reaches ``target``.

    Returns the time of the first *evaluated* point with ``acc >= target`` (points are sorted by time first). No
    interpolation between evaluations: the run is only known to have reached the target when it was measured, so
    interpolating would credit a run with accuracy it was never shown to have. Points with a non-finite accuracy
    are skipped.

    Args:
        curve: ``[(time, acc), ...]`` pairs, e.g. wall-clock seconds and validation accuracy.
        target: Accuracy threshold, in the same units as ``acc``.

    Returns:
        The time as a float, or ``None`` if the target is never reached (or the curve is empty).
    """
    for t, acc in sorted(((float(p[0]), float(p[1])) for p in curve), key=lambda p: p[0]):
        if math.isfinite(acc) and acc >= target:
            return t
    return None
