"""Attack unit tests for every registered defense (Zimmermann, Brendel, Tramer, Carlini, NeurIPS 2022).

For each name in ``guard.registry.DEFENSES`` the default cascade must find a recovery planted
inside the threat set and must claim none where causality (and, for the plain clamp, the
in-span analytic case) rules every recovery out; see ``certify/selftest.py``. The mutation
tests show the checks have teeth: broken attacks fail them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch

from attacks.baselines import UnconstrainedRecovery
from attacks.engine import AttackConfig, GradientRecovery
from attacks.objectives import Objective
from attacks.runner import Stage, default_stages, run_cascade, single_stage
from attacks.threat import Positions, ThreatModel
from certify import selftest
from certify.selftest import (
    FEATURES,
    SITES,
    LogitDifferenceAt,
    SelfTestResult,
    plant,
    run_selftest,
    threat_for,
    tiny_batch,
    tiny_world,
    verify_defense,
    verify_defenses,
    world_calibration,
)
from guard.base import Defense, DefenseConfig
from guard.errors import ToolkitError
from guard.registry import DEFENSES, build_defense, register_defense
from guard.spec import DefenseSpec

NAMES = sorted(DEFENSES)


@functools.cache
def _default(name: str):
    """The default cascade's self-test of ``name``, run once per session."""
    return run_selftest(name)


# -- every registered defense ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_planted_recovery_is_found(name):
    result, cases = _default(name)
    assert DEFENSES[name].selftest is not None, f"registered defense {name!r} has no self-test config"
    causal = cases[0]
    res = causal.outcome.result
    assert causal.planted.sum() >= 3, result.detail  # at most one row lost (the monitor flags one undisturbed)
    assert res.success[causal.planted].all(), result.detail
    assert not (res.claimed & ~res.success)[causal.planted].any(), result.detail
    # the recoveries lie inside the threat set: the budget, and encoder-orthogonal where latents are pinned
    assert (res.relative_norm[causal.planted] <= selftest.BUDGET * (1 + 1e-4)).all()
    ortho = res.orthogonality[causal.planted]
    assert torch.isnan(ortho).all() or (ortho < 1e-5).all()
    assert result.planted_found and result.status == "verified" and result.passed, result.detail


@pytest.mark.parametrize("name", NAMES)
def test_impossible_recovery_is_never_claimed(name):
    result, cases = _default(name)
    for case in cases:
        res = case.outcome.result
        assert case.impossible.sum() > 0
        assert not res.success[case.impossible].any(), (case.name, result.detail)
        assert not (res.claimed & ~res.success)[case.impossible].any(), (case.name, result.detail)  # none refused
        if case.name == "causal":  # the read-out cannot see the perturbed token: its score never moved
            assert torch.allclose(res.score[case.impossible], res.defended_score[case.impossible], atol=1e-4)
        # the whole cascade ran on the impossible rows: no stage stopped early
        assert set(case.outcome.stages_run) >= {"adam", "pgd_restarts", "straight_through", "long", "random"}
    assert not result.impossible_claimed, result.detail
    assert [c.name for c in cases] == (["causal", "in_span"] if name == "clamp" else ["causal"])


def test_impossible_threshold_is_reachable_at_the_readout():
    """The causal case differs from a feasible one only by the perturbed position."""
    world = tiny_world()
    defense = build_defense(DEFENSES["splice"].selftest(FEATURES), world.saes, world_calibration(world, "splice"))
    batch = tiny_batch()
    reach = plant(world.model, defense, threat_for(defense, SITES[0], [-2]), batch, back=1)
    assert (reach.gap > selftest.MIN_GAP).all()
    objective = LogitDifferenceAt(reach.target, reach.other, threshold=reach.threshold, back=1)
    stages = default_stages(steps=5)
    at_readout = run_cascade(world.model, defense, threat_for(defense, SITES[0], [-2]), objective, batch, stages)
    assert at_readout.result.success.all()
    after = run_cascade(world.model, defense, threat_for(defense, SITES[0], [-1]), objective, batch, stages)
    assert not after.result.success.any() and not after.result.claimed.any()
    assert torch.allclose(after.result.score, after.result.defended_score, atol=1e-5)  # causally frozen


def test_verify_defenses_reports_each_name():
    results = verify_defenses(["splice", "direction_ablation"], steps=1)
    assert list(results) == ["splice", "direction_ablation"]
    for name, r in results.items():
        assert isinstance(r, SelfTestResult) and r.name == name
        assert r.to_dict()["status"] == r.status


def test_unknown_name_and_bad_spec_are_user_errors():
    with pytest.raises(ToolkitError, match="splice"):
        verify_defense("splcie")
    with pytest.raises(ToolkitError, match="selftest must be callable"):
        DefenseSpec(ShrinkConfig, Shrink, default=lambda f, s, c: ShrinkConfig(), selftest=object())
    with pytest.raises(ToolkitError, match="already registered"):
        register_defense(DEFENSES["splice"])


# -- a user defense ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ShrinkConfig(DefenseConfig):
    name = "test_shrink"
    factor: float = 0.5


class Shrink(Defense):
    """Scales the residual at the first site: a defense with no SAE."""

    def __init__(self, config: ShrinkConfig, saes=None, calibration=None) -> None:
        self.config = config

    @property
    def sites(self) -> tuple[str, ...]:
        return (SITES[0],)

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        return resid * self.config.factor


def _shrink_spec(selftest=None) -> DefenseSpec:
    return DefenseSpec(ShrinkConfig, Shrink, default=lambda features, sites, calibration: ShrinkConfig(),
                       selftest=selftest)


def test_defense_without_selftest_config_is_unverified():
    with DEFENSES.scoped():
        register_defense(_shrink_spec())
        result = verify_defense("test_shrink")
        assert result.status == "unverified"
        assert not result.passed and not result.planted_found and not result.impossible_claimed
        assert "no self-test config" in result.detail
        assert verify_defenses(["test_shrink"])["test_shrink"].status == "unverified"
    assert "test_shrink" not in DEFENSES  # the scope restored the registry


def test_selftest_config_verifies_a_user_defense():
    with DEFENSES.scoped():
        register_defense(_shrink_spec(selftest=lambda features: ShrinkConfig()))
        result = verify_defense("test_shrink", steps=5)
        assert result.status == "verified", result.detail


# -- mutation sanity: broken attacks fail the tests --------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_zero_step_attack_misses_the_planted_recovery(name):
    result = verify_defense(name, stages=single_stage(AttackConfig(steps=0)))
    assert not result.planted_found and result.status == "failed", result.detail
    assert not result.impossible_claimed


class LeakyPositions(GradientRecovery):
    """Broken: perturbs every position, not only the threat's (the read-out token included)."""

    def __init__(self, model, defense, threat, objective, config=None) -> None:
        leaky = ThreatModel(threat.sites, Positions.make("all"), threat.norm, threat.budget, threat.relative,
                            threat.scope, threat.constraint)
        super().__init__(model, defense, leaky, objective, config)


class Lenient(Objective):
    """Broken search predicate: any example 'succeeds' whenever a margin is asked for."""

    def __init__(self, inner: Objective) -> None:
        self.inner = inner

    def readout(self, batch):
        return self.inner.readout(batch)

    def score(self, logits, rows):
        return self.inner.score(logits, rows)

    def success(self, logits, rows, margin: float = 0.0):
        if margin > 0:
            return torch.ones(len(rows), dtype=torch.bool, device=logits.device)
        return self.inner.success(logits, rows, margin)


class Overclaiming(GradientRecovery):
    """Broken: its search claims successes that the engine's independent check then refuses."""

    def __init__(self, model, defense, threat, objective, config=None) -> None:
        super().__init__(model, defense, threat, Lenient(objective), config)


@pytest.mark.parametrize("name", ["clamp", "splice", "error_monitor", "direction_ablation"])
def test_attack_outside_the_threat_set_is_caught(name):
    result = verify_defense(name, stages=(Stage("leaky", LeakyPositions, AttackConfig(steps=20)),))
    assert result.impossible_claimed and result.status == "failed", result.detail


def test_claims_the_check_refuses_are_caught():
    result, (case,) = run_selftest("splice", stages=(Stage("overclaim", Overclaiming, AttackConfig(steps=5)),))
    res = case.outcome.result
    assert (res.claimed & ~res.success)[case.impossible].all()
    assert result.impossible_claimed and not result.planted_found and result.status == "failed"


def test_in_span_case_catches_an_attack_that_ignores_the_constraint():
    free = (Stage("free", UnconstrainedRecovery, AttackConfig(steps=40, step_size=0.2)),)
    result, (causal, in_span) = run_selftest("clamp", stages=free)
    assert in_span.outcome.result.success.all(), result.detail  # the constraint is what made it impossible
    assert not causal.outcome.result.success[causal.impossible].any()  # causality holds regardless
    assert result.impossible_claimed and result.status == "failed"


def test_building_the_world_leaves_the_callers_random_streams_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    selftest.tiny_model(seed=1)
    assert torch.equal(torch.rand(3), expected)
