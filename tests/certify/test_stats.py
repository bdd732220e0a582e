"""Exact intervals and McNemar tests: coverage, closed forms, agreement with scipy."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, binomtest, chi2

from certify.stats import Rate, clopper_pearson, confidence_label, holm, mcnemar, mcnemar_paired, paired_table
from guard.errors import ToolkitError

GRID_N = (5, 12, 24, 60)
GRID_P = np.linspace(0.02, 0.98, 17)


def _interval_table(n: int, method: str) -> np.ndarray:
    """[n + 1, 2] intervals for every possible count k."""
    if method == "cp":
        return np.array([clopper_pearson(k, n) for k in range(n + 1)])
    k = np.arange(n + 1)
    p_hat = k / n
    half = 1.959964 * np.sqrt(p_hat * (1 - p_hat) / n)  # Wald: known to under-cover
    return np.stack([p_hat - half, p_hat + half], axis=1)


def _exact_coverage(table: np.ndarray, n: int, p: float) -> float:
    covers = (table[:, 0] <= p) & (p <= table[:, 1])
    return float(binom.pmf(np.arange(n + 1), n, p)[covers].sum())


def test_clopper_pearson_closed_forms_at_the_edges():
    # k = 0 and k = n have closed forms: 1 - (alpha/2)^(1/n) and (alpha/2)^(1/n)
    for n in (1, 7, 24, 100):
        low, high = clopper_pearson(0, n)
        assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
        low, high = clopper_pearson(n, n)
        assert high == 1.0 and low == pytest.approx(0.025 ** (1 / n), rel=1e-9)


def test_coverage_at_least_nominal_exactly_and_in_simulation():
    rng = np.random.default_rng(0)
    draws = 20000
    for n in GRID_N:
        table = _interval_table(n, "cp")
        for p in GRID_P:
            assert _exact_coverage(table, n, p) >= 0.95 - 1e-12, (n, p)
            k = rng.binomial(n, p, size=draws)
            simulated = np.mean((table[k, 0] <= p) & (p <= table[k, 1]))
            # Monte Carlo error of a 0.95 proportion over 20000 draws is 0.0015
            assert simulated >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / draws), (n, p, simulated)


def test_coverage_check_catches_an_interval_that_under_covers():
    # the same check rejects the Wald interval, so it is not vacuous
    table = _interval_table(24, "wald")
    assert min(_exact_coverage(table, 24, p) for p in GRID_P) < 0.9


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_interval_contains_estimate_and_widens_with_confidence(n, data):
    k = data.draw(st.integers(0, n))
    low, high = clopper_pearson(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    low99, high99 = clopper_pearson(k, n, alpha=0.01)
    assert low99 <= low + 1e-12 and high99 >= high - 1e-12


def test_rate_abstains_at_zero_samples():
    rate = Rate.of(0, 0)
    assert rate.abstain and rate.rate is None and rate.ci_low is None and rate.ci_high is None
    assert rate.to_dict()["abstain"] is True
    assert "abstain" in str(rate)
    with pytest.raises(ToolkitError):
        clopper_pearson(0, 0)


def test_rate_fields_and_serialisation():
    rate = Rate.of(23, 24)
    d = rate.to_dict()
    assert d["k"] == 23 and d["n"] == 24 and d["alpha"] == 0.05 and d["rate"] == pytest.approx(23 / 24)
    assert d["ci_low"] < d["rate"] < d["ci_high"]
    assert not rate.abstain and "23/24" in str(rate)


@pytest.mark.parametrize("k, n, alpha", [(-1, 3, 0.05), (4, 3, 0.05), (1.5, 3, 0.05), (1, 3, 0.0), (1, 3, 1.0)])
def test_rate_rejects_bad_input(k, n, alpha):
    with pytest.raises(ToolkitError):
        Rate.of(k, n, alpha)


# McNemar: textbook values computable by hand
@pytest.mark.parametrize("b, c, p", [
    (0, 5, 2 / 2**5),                          # one tail of Binomial(5, 1/2) is 1/32, doubled
    (1, 9, 2 * (1 + 10) / 2**10),              # P(X <= 1) = 11/1024, doubled
    (3, 3, 1.0),                               # balanced: no evidence
    (0, 0, 1.0),                               # no discordant pairs
    (2, 12, 2 * (1 + 14 + 91) / 2**14),        # P(X <= 2) for n = 14
])
def test_mcnemar_exact_textbook_values(b, c, p):
    assert mcnemar(b, c).p_value == pytest.approx(p, abs=1e-15)
    assert mcnemar(c, b).p_value == pytest.approx(p, abs=1e-15)


def test_mcnemar_chi2_matches_normal_tail():
    # Wikipedia's example table: b = 121, c = 59; chi2 (uncorrected) = 62^2/180, p = erfc(sqrt(chi2/2))
    res = mcnemar(121, 59, "chi2_uncorrected")
    assert res.statistic == pytest.approx(62**2 / 180, rel=1e-12)
    assert res.p_value == pytest.approx(math.erfc(math.sqrt(res.statistic / 2)), rel=1e-10)
    corrected = mcnemar(121, 59, "chi2")
    assert corrected.statistic == pytest.approx(61**2 / 180, rel=1e-12)
    assert corrected.p_value > res.p_value


@settings(max_examples=80, deadline=None)
@given(b=st.integers(0, 400), c=st.integers(0, 400))
def test_mcnemar_matches_scipy(b, c):
    exact = mcnemar(b, c)
    if b + c:
        assert abs(exact.p_value - binomtest(b, b + c, 0.5).pvalue) <= 1e-12
        for method, corr in (("chi2", 1), ("chi2_uncorrected", 0)):
            stat = max(abs(b - c) - corr, 0) ** 2 / (b + c)
            assert abs(mcnemar(b, c, method).p_value - chi2.sf(stat, 1)) <= 1e-12
    else:
        assert exact.p_value == 1.0
    assert 0.0 <= exact.p_value <= 1.0


def test_mcnemar_large_tables_use_the_floating_point_tail():
    # beyond the exact-arithmetic limit the scipy tail is used; it must still agree with binomtest
    res = mcnemar(1000, 1100)
    assert abs(res.p_value - binomtest(1000, 2100, 0.5).pvalue) <= 1e-12


def test_paired_outcomes():
    first = [True, True, False, False, True, False]
    second = [True, False, True, False, False, False]
    assert paired_table(first, second) == (1, 2, 1, 2)
    res = mcnemar_paired(first, second)
    assert (res.b, res.c, res.n_pairs) == (2, 1, 6)
    with pytest.raises(ToolkitError):
        paired_table([True], [True, False])
    with pytest.raises(ToolkitError):
        mcnemar(1, 2, method="fisher")
    with pytest.raises(ToolkitError):
        mcnemar(1, 2, n_pairs=2)


def test_holm_hand_computed_example():
    # m = 4; sorted raw 0.01, 0.02, 0.03, 0.5 -> 4 * 0.01, 3 * 0.02, max(0.06, 2 * 0.03), max(0.06, 1 * 0.5)
    raw = [0.03, 0.5, 0.01, 0.02]
    assert holm(raw) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    # capped at 1, None skipped and not counted (m = 2 here)
    assert holm([0.6, None, 0.2]) == pytest.approx([0.6, None, 0.4])
    assert holm([0.9, 0.8]) == [1.0, 1.0] and holm([]) == []
    with pytest.raises(ToolkitError, match="holm"):
        holm([0.1, 1.5])


@given(st.lists(st.floats(0.0, 1.0), max_size=25))
@settings(max_examples=200, deadline=None)
def test_holm_is_at_least_raw_and_monotone_in_the_raw_order(raw):
    adjusted = holm(raw)
    assert all(a >= p and a <= 1.0 for a, p in zip(adjusted, raw, strict=True))
    pairs = sorted(zip(raw, adjusted, strict=True))
    assert all(a1 <= a2 for (_, a1), (_, a2) in pairwise(pairs))
    assert all(a1 == a2 for (p1, a1), (p2, a2) in pairwise(pairs) if p1 == p2)  # ties stay tied


def test_confidence_label():
    assert [confidence_label(a) for a in (0.05, 0.1, 0.01, 0.005)] == ["95%", "90%", "99%", "99.5%"]
    assert "(90% CP)" in str(Rate.of(3, 10, 0.1))
