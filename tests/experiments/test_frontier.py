"""The frontier suite's plan and outputs on the tiny model (no real subject)."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest

from certify.checks import evaluate_checks, sorted_flags
from certify.config import SuiteConfig
from certify.frontier import frontier_data, frontier_points, leaderboard, split_point
from certify.plots import plot_frontier
from certify.summary import summarize
from experiments.frontier import OPTION_DEFAULTS, REFERENCE, point_config, sweep_points
from experiments.suites import build_plan
from guard.clamp import ClampConfig
from guard.errors import ToolkitError
from guard.registry import DEFENSES
from guard.spec import Sweep
from tests.guard_cases import SITES
from tests.helpers import tiny_model, tiny_sae, tiny_tokens
from tests.settings_cases import random_samples

SITE = SITES[0]
FAMILIES = ("clamp", "splice", "error_norm", "error_subspace", "error_ellipsoid", "error_monitor", "gated_clamp")
BUDGETS = (0.0, 0.5, 2.0, 8.0)


@pytest.fixture(scope="module")
def frontier_run():
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=20, seed=5)
    config = SuiteConfig(suite="frontier", settings=("ioi",), defenses=FAMILIES, budgets=BUDGETS, n=10,
                         options=(("attack_batch", 16), ("n_latents", 6), ("n_select", 8), ("site", SITE),
                                  ("steps", 4), ("rounds", 2), ("quick", False)))
    plan = build_plan(config, model, saes, lambda s, k, n: (pool[:k], pool[k : k + n]),
                      benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                      contrast=list(tiny_tokens(6, 5, seed=4)),
                      expand=lambda defenses, saes: sweep_points(defenses, saes, quick=False),
                      reference=REFERENCE, option_defaults=OPTION_DEFAULTS)
    records = [r for u in plan.units for r in plan.evaluate_unit(u)]
    rows = summarize(records, plan.utility, plan.reference,
                     verified={d: s == "verified" for d, s in plan.verified.items()})
    flags = sorted_flags(evaluate_checks(records, rows, plan.required_checks))
    return plan, records, rows, flags


def test_every_family_is_swept_over_its_strengths_on_the_same_samples(frontier_run):
    plan, records, _, _ = frontier_run
    names = {u.defense for u in plan.units}
    for family in FAMILIES:
        strengths = {split_point(n)[1] for n in names if split_point(n)[0] == family}
        assert strengths == set(DEFENSES[family].sweep.values)
    assert REFERENCE in names and plan.reference == REFERENCE
    assert all(u.rounds == 2 for u in plan.units)
    samples = defaultdict(set)
    for r in records:
        samples[r["defense"]].add(r["sample_id"])
    assert len({frozenset(s) for s in samples.values()}) == 1  # every point attacked on the same samples
    assert all(math.isfinite(v["delta_ce"]) for v in plan.utility.values())
    assert all(v["flag_rate"] is not None for k, v in plan.utility.items() if k[0].startswith("error_monitor"))
    # strengths really differ: splice@0 drops the error, splice@0.5 keeps half of it
    assert plan.utility[("splice@0", "ioi")]["delta_ce"] != plan.utility[("splice@0.5", "ioi")]["delta_ce"]


def test_each_attacked_sample_carries_a_bracket_its_grid_agrees_with(frontier_run):
    _, records, _, _ = frontier_run
    by_sample = defaultdict(list)
    for r in records:
        if r["attack"] != "-":
            by_sample[(r["defense"], r["sample_id"])].append(r)
    assert by_sample and any(r[0]["min_budget"] is not None for r in by_sample.values())
    for group in by_sample.values():
        brackets = {(r["min_budget"], r["min_budget_lower"]) for r in group}
        assert len(brackets) == 1  # one bracket per sample, on each of its records
        upper, lower = brackets.pop()
        recovered = [r["budget"] for r in group if r["recovered"]]
        if upper is None:
            assert not recovered and lower == max(BUDGETS)
        else:
            assert lower < upper <= min(recovered)  # bisection only moves inside the grid's bracket
            assert not any(r["recovered"] for r in group if r["budget"] <= lower)


def test_frontier_outputs(frontier_run, tmp_path):
    plan, records, rows, flags = frontier_run
    points = frontier_points(records, rows, flags, reference=REFERENCE)
    assert len(points) == len({u.defense for u in plan.units})
    assert len({p.defense for p in points}) >= 6 and all(math.isfinite(p.delta_ce) for p in points)
    ref = next(p for p in points if p.name == REFERENCE)
    if ref.median_min_budget is not None and 0 < ref.median_min_budget < math.inf:
        assert ref.ratio_to_clamp == pytest.approx(1.0)
    assert any(p.non_dominated for p in points)
    scored = [p for p in points if p.median_min_budget is not None]
    for p in scored:  # nothing on the frontier is beaten on both axes
        if p.non_dominated:
            assert not any(q.delta_ce < p.delta_ce and q.median_min_budget > p.median_min_budget for q in scored)
    assert all(p.holding.startswith(("unverified", "no")) for p in points)  # no 10x run: nothing holds yet
    data = json.loads(json.dumps(frontier_data(points, {}, REFERENCE)))
    point = data["points"][0]
    for key in ("defense", "strength", "setting", "delta_ce", "bypass", "median_min_budget", "min_budget_ci",
                "n_valid"):
        assert key in point
    assert plot_frontier(points, tmp_path / "frontier.png").stat().st_size > 1000
    table = leaderboard(points)
    assert table.count("\n") == len(points) + 1 and "non-dominated" in table


def test_point_configs():
    config = ClampConfig(features={SITE: (5, 3, 9, 1)})
    assert point_config(config, Sweep("features", (0.5, 1.0)), 0.5).features == {SITE: (5, 3)}
    assert point_config(config, Sweep("features", (0.25, 1.0)), 0.1).features == {SITE: (5,)}  # at least one
    assert point_config(config, Sweep("value", (1.0,)), -4).value == -4.0
    with pytest.raises(ToolkitError, match="fraction"):
        point_config(config, Sweep("features", (2.0,)), 2.0)
    with pytest.raises(ToolkitError, match="not a field"):
        from guard.spec import DefenseSpec
        DefenseSpec(ClampConfig, DEFENSES["clamp"].defense, sweep=Sweep("nope", (1.0,)))


def _tiny_frontier(config: SuiteConfig):
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=16, seed=5)
    return build_plan(config, model, saes, lambda s, k, n: (pool[:k], pool[k : k + n]),
                      benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                      contrast=list(tiny_tokens(6, 5, seed=4)),
                      expand=lambda defenses, saes: sweep_points(defenses, saes, quick=True),
                      reference=REFERENCE, option_defaults=OPTION_DEFAULTS)


def test_frontier_command_quick_writes_its_outputs_and_resumes(tmp_path, capsys):
    from certify import suites as suites_module
    from certify.cli import main
    from certify.suites import Suite, register_suite

    quick = {"n": 5, "budgets": (0.0, 2.0, 8.0), "options": {"steps": 2, "rounds": 1, "quick": True}}
    args = ["frontier", "--suite", "tiny_frontier", "--quick", "--settings", "ioi", "--defenses", "clamp", "splice",
            "--option", "site=" + SITE, "--option", "n_latents=6", "--option", "n_select=8", "--out",
            str(tmp_path / "f"), "--no-progress"]
    with suites_module.SUITES.scoped():
        register_suite(Suite("tiny_frontier", _tiny_frontier, option_defaults=OPTION_DEFAULTS, quick=quick))
        assert main(args) == 0
        first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert main(args) == 0  # the same command again: nothing left to evaluate
        second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert main([*args, "--long-check"]) == 0  # the non-dominated points again with 10x the steps
        capsys.readouterr()
    assert first["evaluated"] == first["n_units"] == 6 and second["evaluated"] == 0  # clamp and splice x 3
    long_run = json.loads((tmp_path / "f" / "long" / "run.json").read_text())
    assert dict(long_run["config"]["options"])["steps"] == 20 and long_run["config"]["n"] == 5
    judged = [p for p in json.loads((tmp_path / "f" / "frontier.json").read_text())["points"] if p["non_dominated"]]
    assert judged and all(not p["holding"].startswith("unverified: no 10x") for p in judged)
    run = json.loads((tmp_path / "f" / "run.json").read_text())
    assert run["config"]["n"] == 5 and dict(run["config"]["options"])["steps"] == 2  # the quick fields
    data = json.loads((tmp_path / "f" / "frontier.json").read_text())
    assert {p["defense"] for p in data["points"]} == {"clamp", "splice"} and len(data["points"]) == 6
    assert (tmp_path / "f" / "frontier.png").stat().st_size > 1000
    assert "| ioi |" in (tmp_path / "f" / "leaderboard.md").read_text()
