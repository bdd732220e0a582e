"""Every sanity check can fire: raised on records that show its problem, ok on clean ones, and
not_applicable (an error when required) on records that cannot show it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from certify.checks import CHECK_NAMES, CHECKS, evaluate_checks
from certify.outcomes import SampleRecord
from certify.summary import summarize
from guard.errors import ToolkitError

REQUIRED = ("zero_gradient", "not_monotone_in_budget", "recovered_at_zero_budget", "random_beats_optimiser",
            "verification_disagrees", "inactive_defense")


def rec(defense, budget, sample, recovered=False, stage=None, **extra):
    """A cascade record of a valid sample, with every field the checks read filled in as 'clean'."""
    base = {"defense": defense, "setting": "s", "budget": budget, "sample_id": f"x{sample}", "attack": "cascade",
            "seed": 0, "valid": True, "present": True, "recovered": recovered,
            "stage": stage or ("adam" if recovered else "none"), "grad_norm": 1.0, "claim_refused": False,
            "binds": None if defense == "clamp" else True,
            "stage_scores": {"adam": 0.5 if recovered else -1.0, "random": -2.0}}
    return {**base, **extra}


def clean():
    records = []
    for d in ("clamp", "splice"):
        records += [rec(d, 0.0, i) for i in range(4)]
        records += [rec(d, 1.0, i, recovered=i < 2) for i in range(4)]
        records += [rec(d, 2.0, i, recovered=i < 3) for i in range(4)]
    return records


def status(records, required=REQUIRED):
    return {r.check: r for r in evaluate_checks(records, summarize(records), required)}


def test_clean_records_evaluate_every_required_check_as_ok():
    results = status(clean())
    assert set(results) == set(CHECK_NAMES)
    for name in REQUIRED:
        assert results[name].status == "ok", (name, results[name])
    assert results["exceeds_bound"].status == "not_applicable" and "bound" in results["exceeds_bound"].reason
    assert results["few_valid_samples"].status == "raised"  # 4 valid per cell


@pytest.mark.parametrize("check, mutate", [
    ("zero_gradient", lambda rs: rs[5].update(grad_norm=0.0)),
    ("not_monotone_in_budget", lambda rs: rs[9].update(recovered=False, stage="none")),  # clamp x1: recovered at 1, not at 2
    ("recovered_at_zero_budget", lambda rs: rs[0].update(recovered=True, stage="adam")),
    ("random_beats_optimiser", lambda rs: rs[7].update(stage_scores={"adam": -1.0, "random": 0.3})),
    ("random_beats_optimiser", lambda rs: rs[7].update(recovered=True, stage="random")),
    ("verification_disagrees", lambda rs: rs[6].update(claim_refused=True)),
    ("inactive_defense", lambda rs: [r.update(binds=False) for r in rs if r["defense"] == "splice"]),
])
def test_each_check_raises_on_its_problem(check, mutate):
    records = clean()
    mutate(records)
    result = status(records)[check]
    assert result.status == "raised" and result.flags and all(f.kind == check for f in result.flags)


def test_a_required_check_that_cannot_run_is_an_error():
    records = [{k: v for k, v in r.items() if k not in ("grad_norm", "binds")} for r in clean() if r["budget"] > 0]
    results = status(records)
    for name in ("zero_gradient", "inactive_defense", "recovered_at_zero_budget"):
        assert results[name].status == "not_applicable"
        assert [f.kind for f in results[name].flags] == ["check_not_evaluated"]
        assert results[name].flags[0].severity == "error"
    assert status(records, required=())["zero_gradient"].flags == ()  # not required: a plain statement
    with pytest.raises(ToolkitError, match="unknown required"):
        evaluate_checks(records, (), ("nope",))


def test_random_never_run_is_not_applicable():
    records = [{**r, "stage_scores": {"adam": 0.0}} for r in clean()]
    result = status(records)["random_beats_optimiser"]
    assert result.status == "not_applicable" and "random" in result.reason


def test_every_field_a_check_reads_is_a_record_field():
    bound_fields = {"bound", "bound_exact", "score_gain"}  # the demo suite's extra fields (certify/demo.py)
    known = {f.name for f in fields(SampleRecord)} | bound_fields
    for check in CHECKS:
        assert set(check.reads) <= known, (check.name, set(check.reads) - known)
    assert {f for c in CHECKS for f in c.reads} >= {"grad_norm", "claim_refused", "binds", "stage_scores"}
