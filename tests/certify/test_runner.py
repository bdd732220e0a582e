"""Work-unit driver (resume after a crash), and the demo suite through the attack engine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from certify.records import RecordStore, strip_timing
from certify.runner import run_suite, unit_key, unit_seed
from guard.errors import ToolkitError


@dataclass(frozen=True)
class Unit:
    defense: str
    budget: float
    seed: int


UNITS = [Unit(d, b, 3) for d in ("clamp", "other") for b in (0.0, 1.0, 2.0)]


def evaluate(unit: Unit) -> list[dict]:
    import random

    rng = random.Random(unit_seed(unit.seed, unit))  # deterministic per unit, not per run order
    return [{"defense": unit.defense, "setting": "s", "budget": unit.budget, "sample_id": f"x{i}",
             "attack": "pgd", "seed": unit.seed, "score": rng.random()} for i in range(3)]


class Crash(Exception):
    pass


def test_resume_after_crash_gives_the_uninterrupted_records(tmp_path):
    with RecordStore(tmp_path / "full.jsonl") as store:
        stats = run_suite(UNITS, evaluate, store, progress=False)
        full = [strip_timing(r) for r in store.records()]
    assert (stats.n_evaluated, stats.n_skipped, stats.n_records_written) == (6, 0, 18)
    assert all("unit_seconds" in r["timing"] for r in RecordStore(tmp_path / "full.jsonl").records())

    calls = []

    def flaky(unit):
        calls.append(unit)
        if len(calls) == 4:
            raise Crash
        return evaluate(unit)

    path = tmp_path / "part.jsonl"
    with RecordStore(path) as store, pytest.raises(Crash):
        run_suite(UNITS, flaky, store, progress=False)
    with RecordStore(path) as store:
        assert len(store.done_units) == 3
        # resume in a different unit order: results do not depend on it
        stats = run_suite(list(reversed(UNITS)), evaluate, store, progress=True)
        resumed = [strip_timing(r) for r in store.records()]
    assert (stats.n_evaluated, stats.n_skipped) == (3, 3)
    key = lambda r: (r["unit"], r["sample_id"])  # noqa: E731
    assert sorted(resumed, key=key) == sorted(full, key=key)


def test_unit_keys_and_seeds():
    assert unit_key(UNITS[0]) == unit_key(Unit("clamp", 0.0, 3))
    assert unit_key(UNITS[0]) != unit_key(UNITS[1])
    assert unit_seed(0, UNITS[0]) == unit_seed(0, Unit("clamp", 0.0, 3))
    assert len({unit_seed(0, u) for u in UNITS}) == len(UNITS)
    assert unit_seed(0, UNITS[0]) != unit_seed(1, UNITS[0])

    class Keyed:
        key = "abc"

    assert unit_key(Keyed()) == "abc"
    with pytest.raises(ToolkitError):
        unit_key(object())


def test_run_suite_rejects_bad_plans(tmp_path):
    with RecordStore(tmp_path / "r.jsonl") as store:
        with pytest.raises(ToolkitError, match="share the key"):
            run_suite([UNITS[0], UNITS[0]], evaluate, store, progress=False)
        with pytest.raises(ToolkitError, match="returned"):
            run_suite(UNITS[:1], lambda u: {"not": "a list"}, store, progress=False)


def test_demo_suite_runs_the_attack_engine_and_keeps_its_invariants():
    """The demo's planted world, attacked by attacks.runner's cascade: what must hold there, holds."""
    from attacks.runner import STAGE_NAMES
    from certify.checks import run_checks
    from certify.config import SuiteConfig
    from certify.suites import get_suite
    from certify.summary import summarize

    budgets = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    plan = get_suite("demo").plan(SuiteConfig(suite="demo", n=6, budgets=budgets, options=(("steps", 10),)))
    records = [r for unit in plan.units for r in plan.evaluate_unit(unit)]
    rows = {(r.defense, r.setting, r.budget): r for r in summarize(records, plan.utility, plan.reference)}
    settings = ("planted", "planted_aligned")
    for s in settings:
        for b in budgets:
            assert rows[("none", s, b)].n_valid == 0  # nothing is defended, so nothing to recover
            assert rows[("clamp", s, b)].n_valid > 0 and rows[("clamp_wide", s, b)].n_valid > 0
            assert rows[("clamp_wide", s, b)].k_recovered == 0
            assert rows[("clamp_wide", s, b)].k_certified == rows[("clamp_wide", s, b)].n_valid
        assert all(rows[(d, s, 0.0)].k_recovered == 0 for d in ("clamp", "clamp_wide"))
        clamp = [rows[("clamp", s, b)].k_recovered for b in budgets]
        assert clamp == sorted(clamp) and clamp[-1] == rows[("clamp", s, 4.0)].n_valid  # all, at the largest
    valid = [r for r in records if r["valid"]]
    for r in valid:  # the bound is exact here: no attack may beat it, and recovery means it was not certified
        assert r["attack"] == "cascade" and r["bound_exact"] is True and r["completion"].startswith("tok")
        assert r["score_gain"] <= r["bound"] + 1e-6 + 1e-4 * abs(r["bound"])
        assert not (r["recovered"] and r["certified"])
        assert r["stage"] in (*STAGE_NAMES, "none") and r["constraint"] == "encoder"
        if r["defense"] == "clamp_wide":
            assert r["bound"] < 1e-6  # w lies in the encoder span: no feasible delta moves the score
    assert all(r["binds"] is None for r in valid if r["defense"] == "clamp")
    assert any(r["binds"] for r in valid if r["defense"] == "clamp_wide")  # the wider clamp differs somewhere
    flags = {f.kind for f in run_checks(records, list(rows.values()))}
    assert not flags & {"exceeds_bound", "not_monotone_in_budget", "recovered_at_zero_budget",
                        "random_beats_optimiser", "verification_disagrees", "inactive_defense"}
    assert plan.utility[("none", "planted")] == 0.0 and plan.utility[("clamp", "planted")] > 0
