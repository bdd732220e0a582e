"""Summary rows and sanity flags from hand-made records."""

from __future__ import annotations

import csv
import json

import pytest

from certify.checks import run_checks
from certify.stats import Rate, mcnemar
from certify.summary import markdown_table, min_budget_distribution, sample_outcomes, summarize, write_summary
from guard.errors import ToolkitError


def rec(defense, budget, sample, valid=True, recovered=False, attack="pgd", seed=0, setting="s", **extra):
    return {"defense": defense, "setting": setting, "budget": budget, "sample_id": f"x{sample}", "attack": attack,
            "seed": seed, "valid": valid, "recovered": recovered if valid else None, **extra}


def _grid():
    """clamp recovers samples 0-5 at budget 2 and 0-2 at budget 1; 'shield' recovers only sample 0 at 2.
    Sample 9 is invalid everywhere; sample 8 is valid for clamp but abstains (no attack result)."""
    records = []
    for budget in (1.0, 2.0):
        limit = 3 if budget == 1.0 else 6
        for i in range(8):
            records.append(rec("clamp", budget, i, recovered=i < limit, drift=0.1 * i, rel_delta_norm=0.5))
            records.append(rec("shield", budget, i, recovered=(budget == 2.0 and i == 0), drift=0.2))
        records.append(rec("clamp", budget, 9, valid=False, attack="-"))
        records.append(rec("shield", budget, 9, valid=False, attack="-"))
        records.append({**rec("clamp", budget, 8), "recovered": None})
    return records


def test_rates_counts_and_mcnemar_against_the_reference():
    rows = {(r.defense, r.budget): r for r in summarize(_grid(), utility={"clamp": 0.0, "shield": 0.31})}
    clamp2, shield2, shield1 = rows[("clamp", 2.0)], rows[("shield", 2.0)], rows[("shield", 1.0)]
    assert (clamp2.n_samples, clamp2.n_valid, clamp2.k_recovered, clamp2.n_invalid, clamp2.n_abstain) == (10, 8, 6, 1, 1)
    assert clamp2.rate_obj == Rate.of(6, 8)
    assert (shield2.n_valid, shield2.k_recovered) == (8, 1)
    # paired on the 8 samples valid under both: shield recovered 0 where clamp did not; clamp recovered 5 more
    assert (shield2.mcnemar_b, shield2.mcnemar_c, shield2.mcnemar_n) == (0, 5, 8)
    assert shield2.mcnemar_p == pytest.approx(mcnemar(0, 5).p_value)
    assert shield1.mcnemar_c == 3 and clamp2.mcnemar_p is None and clamp2.reference is None
    assert shield2.delta_ce == 0.31 and clamp2.delta_ce == 0.0
    # minimal budgets: clamp recovers 0-2 first at 1, 3-5 first at 2
    assert rows[("clamp", 1.0)].n_first_recovered == 3 and clamp2.n_first_recovered == 3
    dist = min_budget_distribution(rows.values())
    assert dist[("clamp", "s")] == {"first_recovered": {1.0: 3, 2.0: 3}, "never": 2}
    assert clamp2.drift_median == pytest.approx(0.25) and clamp2.drift_max == pytest.approx(0.5)
    assert clamp2.rel_delta_norm_median == 0.5


def test_zero_valid_is_an_abstain_not_a_zero_rate():
    rows = summarize([rec("none", 1.0, i, valid=False, attack="-") for i in range(4)])
    assert rows[0].n_valid == 0 and rows[0].rate is None and rows[0].ci_low is None
    assert "abstain" in markdown_table(rows)


def test_best_of_attacks_and_seeds_counts_and_first_stage_supplies_metrics():
    records = [
        rec("clamp", 1.0, 0, recovered=False, attack="pgd", stage=0, drift=0.9),
        rec("clamp", 1.0, 0, recovered=True, attack="random", stage=1, drift=0.4),
        rec("clamp", 1.0, 0, recovered=True, attack="pgd", seed=1, stage=0, drift=0.2),
    ]
    outcome = sample_outcomes(records)[("clamp", "s", 1.0, "x0")]
    assert outcome.recovered and outcome.attack == "pgd" and outcome.drift == 0.2


def test_disagreeing_validity_is_an_error():
    with pytest.raises(ToolkitError, match="disagree"):
        sample_outcomes([rec("clamp", 1.0, 0, valid=True), rec("clamp", 1.0, 0, valid=False, attack="x")])


def test_summary_files(tmp_path):
    rows = summarize(_grid(), utility={("clamp", "s"): 0.1})
    json_path, csv_path = write_summary(rows, tmp_path)
    data = json.loads(json_path.read_text())
    required = {"defense", "setting", "budget", "n_valid", "k_recovered", "rate", "ci_low", "ci_high", "delta_ce"}
    assert len(data) == len(rows) and all(required <= set(d) for d in data)
    assert data[0]["delta_ce"] == 0.1
    with open(csv_path) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and table[0]["defense"] == "clamp"
    md = markdown_table(rows)
    assert md.count("\n") == len(rows) + 1 and "0.750 [" in md


def test_checks_flag_each_problem_and_stay_quiet_on_clean_records():
    clean = _grid()
    assert [f.kind for f in run_checks(clean) if f.severity != "info"] == []
    broken = [
        rec("clamp", 1.0, 0, recovered=True), rec("clamp", 2.0, 0, recovered=False),          # not monotone
        rec("clamp", 0.0, 1, recovered=True),                                                  # free recovery
        rec("clamp", 1.0, 2, recovered=False, score_attacked=0.1),
        rec("clamp", 1.0, 2, recovered=True, attack="random", score_attacked=0.9),            # random wins
        rec("clamp", 1.0, 3, recovered=False, grad_norm=0.0),                                   # no gradient
        rec("clamp", 1.0, 4, recovered=True, score_gain=2.0, bound=1.0, bound_exact=True),    # above the bound
        rec("clamp", 2.0, 4, recovered=True, score_gain=1.0, bound=1.0),                       # at the bound: fine
    ]
    flags = run_checks(broken, summarize(broken))
    kinds = {f.kind: f for f in flags}
    assert {"not_monotone_in_budget", "recovered_at_zero_budget", "random_beats_optimiser", "zero_gradient",
            "exceeds_bound"} <= set(kinds)
    assert kinds["exceeds_bound"].severity == "error" and kinds["exceeds_bound"].count == 1
    assert kinds["random_beats_optimiser"].budget == 1.0 and "x2" in kinds["random_beats_optimiser"].examples[0]
    assert kinds["not_monotone_in_budget"].examples == ("x0: recovered at 1, not at 2",)
    assert flags[0].severity == "error"  # errors first
    assert json.dumps([f.to_dict() for f in flags])


def test_random_scoring_higher_is_flagged_even_without_recovery():
    records = [rec("clamp", 1.0, 0, recovered=False, score_attacked=0.1),
               rec("clamp", 1.0, 0, recovered=False, attack="random", score_attacked=0.3)]
    assert [f.kind for f in run_checks(records)] == ["random_beats_optimiser"]
    records[1]["score_attacked"] = 0.05
    assert run_checks(records) == []
