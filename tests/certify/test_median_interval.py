"""The order-statistic interval of a median, with right-censored values."""

from __future__ import annotations

import math
import random

import pytest

from certify.stats import median_interval, recovered_curve


def test_textbook_interval_for_ten_values():
    result = median_interval(list(range(1, 11)))
    assert (result.median, result.low, result.high) == (5.5, 2.0, 9.0)
    assert result.coverage == pytest.approx(1 - 2 * 11 / 1024)  # 1 - 2 P(Bin(10, 1/2) <= 1)


def test_too_few_values_claim_nothing():
    result = median_interval([0.1, 0.2, 0.3, 0.4, 0.5])  # n = 5: no pair reaches 95%
    assert (result.low, result.high) == (0.0, math.inf) and result.median == 0.3


def test_censored_values_sort_above_every_budget():
    values = [0.01, 0.02, 0.05] + [math.inf] * 8
    result = median_interval(values)
    assert math.isinf(result.median) and result.n_censored == 8
    assert result.to_dict()["median"] is None and result.to_dict()["high"] is None
    assert recovered_curve(values, [0.02, 0.2]) == [2 / 11, 3 / 11]


def test_coverage_in_simulation_is_at_least_the_level():
    rng = random.Random(0)
    hits, trials = 0, 2000
    for _ in range(trials):  # exponential(1), true median log 2; censored above 1.5 (does not move the median)
        draws = [rng.expovariate(1.0) for _ in range(15)]
        r = median_interval([x if x <= 1.5 else math.inf for x in draws])
        hits += r.low <= math.log(2) <= r.high
    assert hits / trials >= 0.95 - 3 * math.sqrt(0.05 * 0.95 / trials)


def test_bad_input_is_refused():
    with pytest.raises(Exception, match="no values"):
        median_interval([])
    with pytest.raises(Exception, match="NaN"):
        median_interval([0.1, math.nan])
