"""The attack runner: cascade order, per-sample worst case, per-row budgets, budget 0."""

from __future__ import annotations

import torch

from attacks.engine import AttackConfig, GradientRecovery
from attacks.runner import STAGE_NAMES, Stage, attack_samples, default_stages, run_cascade, single_stage
from attacks.threat import ThreatModel
from tests.attacks.test_engine import LAST, linear_case


def _threat(budget: float, constraint: str = "encoder") -> ThreatModel:
    return ThreatModel.make(LAST, positions="last", budget=budget, relative=False, constraint=constraint)


def test_default_stages_scale_with_steps_and_keep_their_order():
    stages = default_stages(steps=7, seed=3)
    assert tuple(s.name for s in stages) == STAGE_NAMES
    steps = {s.name: s.config.steps for s in stages}
    assert steps == {"adam": 7, "pgd_restarts": 7, "straight_through": 7, "detector": 7, "long": 21, "random": 7}
    assert [s.name for s in stages if s.detector_only] == ["detector"]
    assert len({s.config.seed for s in stages}) == len(stages)


def test_impossible_case_runs_every_stage_and_claims_nothing():
    model, defense, batch, objective, _ = linear_case(v_in_span=True)
    outcome = run_cascade(model, defense, _threat(5.0), objective, batch, default_stages(steps=4))
    assert outcome.stages_run == ("adam", "pgd_restarts", "straight_through", "long", "random")  # no detector
    assert not outcome.result.success.any() and outcome.stage == (None,) * batch.size
    assert not (outcome.result.claimed & ~outcome.result.success).any()
    assert all(set(s) == set(outcome.stages_run) for s in outcome.stage_scores)
    assert outcome.result.steps.tolist() == [4 + 8 + 4 + 12 + 4] * batch.size


def test_a_later_stage_recovers_what_the_first_missed():
    model, defense, batch, objective, required = linear_case(v_in_span=False)
    weak = Stage("weak", GradientRecovery, AttackConfig(steps=1, step_size=1e-3))
    strong = single_stage(AttackConfig(steps=60), name="strong")[0]
    budget = float(required.max()) * 1.5
    outcome = run_cascade(model, defense, _threat(budget), objective, batch, [weak, strong])
    assert outcome.result.success.all()
    assert "strong" in outcome.stage
    for i, name in enumerate(outcome.stage):
        assert outcome.stage_steps[i][name] >= 0 and outcome.result.steps[i] == sum(outcome.stage_steps[i].values())
    assert (outcome.result.delta_norm <= budget * (1 + 1e-4)).all()


def test_per_row_budgets_share_batches_and_budget_zero_never_moves():
    model, defense, batch, objective, required = linear_case(v_in_span=False, n=4)
    big = float(required.max()) * 2
    pairs = [(i, b) for b in (0.0, big) for i in range(batch.size)]
    tokens = [batch.tokens[i, : int(batch.lengths[i])].tolist() for i in range(batch.size)]
    target, other = objective.target, objective.other

    def objective_for(chunk):
        rows = torch.tensor([i for i, _ in chunk])
        return type(objective)(target[rows], other[rows])

    chunks = attack_samples(model, defense, _threat(big), pairs, objective_for, lambda p: tokens[p[0]],
                            default_stages(steps=30), batch_size=8, budget_of=lambda p: p[1])
    assert len(chunks) == 1 and chunks[0].samples == pairs
    result = chunks[0].outcome.result
    zero = torch.tensor([b == 0 for _, b in pairs])
    assert not result.success[zero].any() and (result.delta_norm[zero] == 0).all()
    assert result.success[~zero].all() and (result.delta_norm[~zero] <= big * (1 + 1e-4)).all()
