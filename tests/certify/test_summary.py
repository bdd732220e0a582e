"""Summary rows and sanity flags from hand-made records."""

from __future__ import annotations

import csv
import json

import pytest

from certify.checks import check_few_valid, run_checks
from certify.schema import write_summary_file
from certify.stats import Rate, holm, mcnemar
from certify.summary import markdown_table, min_budget_distribution, sample_outcomes, summarize
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
    assert dist[("clamp", "s", "residual")] == {"first_recovered": {1.0: 3, 2.0: 3}, "never": 2}
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
    outcome = sample_outcomes(records)[("clamp", "s", "residual", 1.0, "x0")]
    assert outcome.recovered and outcome.attack == "pgd" and outcome.drift == 0.2


def test_disagreeing_validity_is_an_error():
    with pytest.raises(ToolkitError, match="disagree"):
        sample_outcomes([rec("clamp", 1.0, 0, valid=True), rec("clamp", 1.0, 0, valid=False, attack="x")])


def test_summary_files(tmp_path):
    rows = summarize(_grid(), utility={("clamp", "s"): 0.1})
    json_path, csv_path = write_summary_file(tmp_path, rows, {"subject": "test"})
    data = json.loads(json_path.read_text())["rows"]
    required = {"defense", "setting", "budget", "n_valid", "k_recovered", "rate", "ci_low", "ci_high", "delta_ce"}
    assert len(data) == len(rows) and all(required <= set(d) for d in data)
    assert data[0]["delta_ce"] == 0.1
    with open(csv_path) as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and table[0]["defense"] == "clamp"
    md = markdown_table(rows)
    assert md.count("\n") == len(rows) + 1 and "0.750 [" in md
    assert "rate [95% CI]" in md and "Holm p" in md and "threat" not in md  # one threat: no column
    assert table[0]["stage_counts"] == "{}" and json.loads(table[0]["utility"]) == {"delta_ce": 0.1}


def test_threat_is_part_of_the_cell_and_missing_means_residual():
    records = [rec("clamp", 1.0, i, recovered=True) for i in range(4)]
    records += [rec("clamp", 1.0, i, recovered=False, threat="unconstrained") for i in range(4)]
    records += [rec("shield", 1.0, i, recovered=i == 0, threat="residual") for i in range(4)]
    records += [rec("shield", 1.0, i, recovered=True, threat="unconstrained") for i in range(4)]
    rows = {(r.defense, r.threat): r for r in summarize(records)}
    assert set(rows) == {("clamp", "residual"), ("clamp", "unconstrained"), ("shield", "residual"),
                         ("shield", "unconstrained")}
    assert rows[("clamp", "residual")].k_recovered == 4 and rows[("clamp", "unconstrained")].k_recovered == 0
    # paired with the reference under the same threat only
    assert (rows[("shield", "residual")].mcnemar_b, rows[("shield", "residual")].mcnemar_c) == (0, 3)
    assert (rows[("shield", "unconstrained")].mcnemar_b, rows[("shield", "unconstrained")].mcnemar_c) == (4, 0)
    assert "| threat |" in markdown_table(rows.values())


def test_holm_over_every_test_of_the_run_and_raw_p_kept():
    rows = summarize(_grid())
    tested = [r for r in rows if r.mcnemar_p is not None]
    assert len(tested) == 2 and all(r.p_vs_reference == r.mcnemar_p for r in tested)
    assert [r.p_holm for r in tested] == pytest.approx(holm([r.mcnemar_p for r in tested]))
    assert all(r.p_holm >= r.mcnemar_p for r in tested)
    assert all(r.p_holm is None and r.p_vs_reference is None for r in rows if r.mcnemar_p is None)


def test_present_stages_verified_and_utility_fields():
    records = [
        rec("clamp", 1.0, 0, recovered=False, stage="adam", present=True),
        rec("clamp", 1.0, 0, recovered=True, stage="pgd_restarts", present=True),
        rec("clamp", 1.0, 0, recovered=True, stage="random", present=True),
        rec("clamp", 1.0, 1, recovered=True, stage="adam", present=True),
        rec("clamp", 1.0, 2, recovered=False, stage="none", present=True),
        rec("clamp", 1.0, 3, valid=False, attack="-", present=False),
        rec("shield", 1.0, 0, recovered=True, stage=1), rec("shield", 1.0, 1, recovered=True, stage=0),
    ]
    utility = {"clamp": {"delta_ce": 0.01, "over_refusal": 0.05, "retain_drop": 0.02}, ("shield", "s"): 0.3}
    rows = {r.defense: r for r in summarize(records, utility, verified={"clamp": True})}
    clamp, shield = rows["clamp"], rows["shield"]
    assert clamp.n_present == 3 and shield.n_present is None  # sample 3 is absent undefended; no shield record says
    # sample 0 is first recovered by pgd_restarts (adam failed), sample 1 by adam
    assert clamp.stage_counts == {"adam": 1, "pgd_restarts": 1}
    assert shield.stage_counts == {"0": 1, "1": 1}  # old int stages become names
    assert clamp.verified is True and shield.verified is None
    assert clamp.delta_ce == 0.01 and clamp.utility == {"delta_ce": 0.01, "over_refusal": 0.05, "retain_drop": 0.02}
    assert shield.delta_ce == 0.3 and shield.utility == {"delta_ce": 0.3}
    assert json.dumps([r.to_dict() for r in rows.values()])


def test_few_valid_samples_flag():
    rows = summarize(_grid())
    flags = check_few_valid(rows)
    assert {(f.defense, f.kind, f.severity) for f in flags} == {("clamp", "few_valid_samples", "warning"),
                                                               ("shield", "few_valid_samples", "warning")}
    clamp = next(f for f in flags if f.defense == "clamp")
    assert clamp.count == 2 and clamp.examples == ("budget 1: n=8", "budget 2: n=8") and "fewer than 30" in clamp.message
    assert check_few_valid(rows, minimum=8) == []
    assert "few_valid_samples" in {f.kind for f in run_checks(_grid(), rows)}
    assert "few_valid_samples" not in {f.kind for f in run_checks(_grid())}  # needs rows


def test_checks_flag_each_problem_and_stay_quiet_on_clean_records():
    clean = _grid()
    assert [f.kind for f in run_checks(clean) if f.severity != "info"] == []
    broken = [
        rec("clamp", 1.0, 0, recovered=True), rec("clamp", 2.0, 0, recovered=False),          # not monotone
        rec("clamp", 0.0, 1, recovered=True),                                                  # free recovery
        rec("clamp", 1.0, 2, recovered=True, stage="random", stage_scores={"adam": 0.1, "random": 0.9}),  # random wins
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
    records = [rec("clamp", 1.0, 0, recovered=False, stage="none", stage_scores={"adam": 0.1, "random": 0.3})]
    assert [f.kind for f in run_checks(records)] == ["random_beats_optimiser"]
    records[0]["stage_scores"]["random"] = 0.05
    assert run_checks(records) == []
