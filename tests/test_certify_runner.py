"""Work-unit driver (resume after a crash) and the attack cascade."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from certify.records import RecordStore, strip_timing
from certify.runner import cascade, run_suite, unit_key, unit_seed
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


def test_cascade_runs_later_attacks_only_on_what_is_left():
    seen = {}

    def weak(samples):
        seen["weak"] = list(samples)
        return [{"recovered": s % 3 == 0} for s in samples]

    def strong(samples):
        seen["strong"] = list(samples)
        return [{"recovered": s % 2 == 0} for s in samples]

    def last(samples):
        seen["last"] = list(samples)
        return [{"recovered": False} for _ in samples]

    samples = list(range(8))
    result = cascade(samples, [weak, strong, last])
    assert seen["weak"] == samples
    assert seen["strong"] == [1, 2, 4, 5, 7]
    assert seen["last"] == [1, 5, 7]
    assert result.stage == (0, None, 1, 0, 1, None, 0, None)
    assert result.recovered == tuple(s is not None for s in result.stage) and result.n_recovered == 5
    assert [name for name, _ in result.attempts[5]] == ["weak", "strong", "last"]
    assert result.final(2) == ("strong", {"recovered": True})
    assert result.attack_names == ("weak", "strong", "last")


def test_cascade_stops_when_everything_is_recovered_and_checks_its_input():
    calls = []

    def all_done(samples):
        return [True] * len(samples)

    def never(samples):
        calls.append(samples)
        return [False] * len(samples)

    assert cascade([1, 2], [all_done, never]).recovered == (True, True)
    assert calls == []
    with pytest.raises(ToolkitError, match="no attacks"):
        cascade([1], [])
    with pytest.raises(ToolkitError, match="returned 0 results"):
        cascade([1], [lambda s: []])
    with pytest.raises(ToolkitError, match="names must differ"):
        cascade([1], [all_done, all_done])
