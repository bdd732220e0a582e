"""Minimal-budget brackets from a grid and their bisection, on planted minimal budgets."""

from __future__ import annotations

import math

import pytest

from attacks.budget import BudgetBracket, grid_bracket, refine_brackets


def test_grid_bracket_is_the_smallest_recovered_budget_and_the_failure_below_it():
    assert grid_bracket([0, 0.02, 0.05, 0.2], [False, False, True, True]) == BudgetBracket(0.02, 0.05)
    assert grid_bracket([0.2, 0.05, 0.02, 0], [True, True, False, False]) == BudgetBracket(0.02, 0.05)  # any order
    censored = grid_bracket([0, 0.02, 0.05, 0.2], [False] * 4)
    assert censored.censored and censored.lower == 0.2 and censored.to_dict() == {"min_budget": None,
                                                                                   "min_budget_lower": 0.2}
    # not monotone (recovered at 0.02, not at 0.05): the smallest recovered budget still bounds it
    assert grid_bracket([0, 0.02, 0.05, 0.2], [False, True, False, True]) == BudgetBracket(0.0, 0.02)


@pytest.mark.parametrize("rounds", [0, 1, 4, 8])
def test_bisection_keeps_the_planted_minimum_inside_and_halves_the_log_width(rounds):
    truth = [0.003, 0.013, 0.04, 0.11, 0.5]  # the last one is above the grid: censored
    grid = [0.0, 0.01, 0.02, 0.05, 0.2]
    calls = []

    def recovers(pairs):
        calls.append(len(pairs))
        return [budget >= truth[i] for i, budget in pairs]

    start = [grid_bracket(grid, [b >= t for b in grid]) for t in truth]
    out = refine_brackets(start, recovers, rounds)
    assert len(calls) == rounds and all(c == 4 for c in calls)  # one batched call per round, censored left out
    for t, b0, b in zip(truth, start, out, strict=True):
        assert b.lower < t <= b.upper or (b.censored and t > b.lower)
        if not b.censored and b0.lower > 0:  # geometric bisection: the log width halves each round
            assert math.log(b.upper / b.lower) == pytest.approx(math.log(b0.upper / b0.lower) / 2 ** rounds)
    assert out[-1] == start[-1]  # a censored sample is never bisected
    if rounds == 8:
        assert out[0].upper == pytest.approx(0.003, rel=0.05)  # from (0, 0.01]: halved 8 times, then geometric
