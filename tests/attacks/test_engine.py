"""Attack unit tests: planted recoveries are found, impossible ones are never claimed.

The analytic case: perturb the LAST residual (blocks.1.hook_resid_post of the 2-layer tiny
model) at the last token, with the unembedding bias zeroed. Then
``logit[a] - logit[b] = v . h_def / rms(h_def)`` with ``v = w_ln * (W_U[:, a] - W_U[:, b])``,
so its sign is the sign of ``v . h_def``. A clamp at that site keeps the SAE error, so an
encoder-orthogonal delta moves ``h_def`` by exactly delta. Hence:

- if v lies in span(W_enc[:, S]), no encoder-orthogonal delta can change the sign (negative case);
- if v is orthogonal to span(W_enc[:, S]), delta = c v is feasible and recovers once
  ``||delta|| > |v . h_def| / ||v||`` (positive case, with the exact minimal budget).
"""

from __future__ import annotations

import math

import pytest
import torch

import attacks.engine as engine
from attacks.baselines import RandomSearch, RandomSearchConfig, UnconstrainedRecovery
from attacks.batch import AttackBatch
from attacks.budget import minimal_budget
from attacks.engine import AttackConfig, GradientRecovery
from attacks.forward import DefendedForward
from attacks.objectives import ChoiceObjective, Continuation, LogitDifference
from attacks.projection import budget_excess
from attacks.replay import attribution_replay
from attacks.threat import ThreatModel
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae, tiny_tokens

LAST = "blocks.1.hook_resid_post"
FIRST = "blocks.0.hook_resid_post"
S = (0, 1, 2, 3)
A, B = 3, 7


def _defended_last(model, defense, batch) -> torch.Tensor:
    store = {}
    hooks = defense.fwd_hooks() + [(LAST, lambda r, hook: store.__setitem__("h", r.detach()))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(batch.tokens)
    return store["h"][torch.arange(batch.size), batch.last()]


def linear_case(v_in_span: bool, n: int = 6, seed: int = 0, kind: str = "jumprelu"):
    model = tiny_model(seed=seed)
    sae = tiny_sae(kind, seed=seed + 1)
    with torch.no_grad():
        model.unembed.b_U.zero_()
        v = model.ln_final.w * (model.unembed.W_U[:, A] - model.unembed.W_U[:, B])
        cols = sae.W_enc[:, list(S)]
        if v_in_span:
            cols[:, 0] = v
        else:
            cols -= torch.outer(v, v @ cols) / v.dot(v)
        sae.W_enc[:, list(S)] = cols
    defense = FeatureClamp(ClampConfig(features={LAST: S}), {LAST: sae})
    batch = AttackBatch.from_lists(tiny_tokens(n, 8, seed=seed).tolist())
    m = _defended_last(model, defense, batch) @ v
    target = torch.where(m < 0, A, B)  # the defended model prefers the other token everywhere
    other = torch.where(m < 0, B, A)
    required = m.abs() / v.norm()  # smallest ||delta|| that flips the sign (positive case)
    return model, defense, batch, LogitDifference(target, other), required


def test_negative_case_never_recovered_but_unconstrained_is():
    model, defense, batch, obj, required = linear_case(v_in_span=True)
    big = float(required.max()) * 20
    threat = ThreatModel.make(LAST, budget=big, relative=False, constraint="encoder")
    cfg = AttackConfig(steps=40, step_size=0.2, restarts=2)
    res = GradientRecovery(model, defense, threat, obj, cfg).run(batch)
    assert res.recovered == 0
    assert res.orthogonality.max() < 1e-6
    rnd = RandomSearch(model, defense, threat, obj, RandomSearchConfig(steps=30)).run(batch)
    assert rnd.recovered == 0
    # positive control: without the constraint the same budget recovers every example
    free = UnconstrainedRecovery(model, defense, threat, obj, cfg).run(batch)
    assert free.recovered == batch.size


@pytest.mark.parametrize("kind", ["jumprelu", "standard"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_planted_recovery_found_within_budget(kind, optimizer):
    model, defense, batch, obj, required = linear_case(v_in_span=False, kind=kind)
    budget = 2 * required  # per example: a recovering delta provably exists
    threat = ThreatModel.make(LAST, budget=1.0, relative=False, constraint="encoder")
    res = GradientRecovery(model, defense, threat, obj, AttackConfig(steps=60, optimizer=optimizer)).run(
        batch, budget=budget)
    assert res.success.all()
    assert (res.delta_norm <= budget * (1 + 1e-5)).all()
    assert res.orthogonality.max() < 1e-6
    assert res.drift.max() < 1e-5  # the clamped latents' input did not move
    assert (res.defended_score < 0).all() and (res.score > 0).all()


def test_budget_zero_gives_defended_rate():
    model, defense, batch, obj, _ = linear_case(v_in_span=False)
    mixed = LogitDifference(obj.target, obj.other, threshold=torch.tensor([-1e3, 0, 0, -1e3, 0, 0.0]))
    threat = ThreatModel.make(LAST, budget=0.0, constraint="encoder")
    res = GradientRecovery(model, defense, threat, mixed, AttackConfig(steps=5)).run(batch)
    assert res.success.tolist() == [True, False, False, True, False, False]
    assert res.delta_norm.eq(0).all()


def test_minimal_budget_brackets_the_exact_minimum():
    model, defense, batch, obj, required = linear_case(v_in_span=False, n=4)
    threat = ThreatModel.make(LAST, budget=float(required.max()) * 3, relative=False, constraint="encoder")
    attack = GradientRecovery(model, defense, threat, obj, AttackConfig(steps=80, optimizer="sgd", step_size=0.2))
    found = minimal_budget(attack, batch, iterations=7)
    assert torch.isfinite(found.budget).all()
    assert (found.budget >= required * (1 - 1e-4)).all()  # nothing below the provable minimum
    assert (found.budget <= required * 1.3 + 1e-6).all()
    assert (found.lower < found.budget).all()


def test_early_stop_bounds_overshoot():
    model, defense, batch, obj, required = linear_case(v_in_span=False)
    threat = ThreatModel.make(LAST, budget=float(required.max()) * 10, relative=False, constraint="encoder")
    cfg = AttackConfig(steps=40, step_size=0.05)
    stop = GradientRecovery(model, defense, threat, obj, cfg).run(batch)
    never = LogitDifference(obj.target, obj.other, threshold=math.inf)  # an unbounded objective
    run_on = GradientRecovery(model, defense, threat, never, cfg).run(batch)
    assert stop.success.all()
    assert (stop.steps < cfg.steps).all()
    assert (stop.score < run_on.score).all()


def test_batched_equals_alone():
    model, defense, batch, obj, required = linear_case(v_in_span=False)
    threat = ThreatModel.make(LAST, budget=1.0, relative=False, constraint="encoder")
    attack = GradientRecovery(model, defense, threat, obj, AttackConfig(steps=30))
    budget = 1.5 * required
    together = attack.run(batch, budget=budget)
    for i in (0, 3):
        alone = attack.run(batch, budget=budget, rows=torch.tensor([i]))
        assert alone.success.tolist() == [j == i and bool(together.success[i]) for j in range(batch.size)]
        assert alone.steps[i] == together.steps[i]
        assert torch.allclose(alone.perturbations[0].delta[i], together.perturbations[0].delta[i], atol=1e-4)


def test_cross_layer_successes_respect_drift_threshold():
    model = tiny_model(seed=2)
    saes = {FIRST: tiny_sae("jumprelu", seed=5), LAST: tiny_sae("standard", seed=6)}
    defense = FeatureClamp(ClampConfig(features={FIRST: S, LAST: (4, 5, 6)}), saes)
    batch = AttackBatch.from_lists(tiny_tokens(6, 8, seed=3).tolist())
    with torch.no_grad(), defense.applied(model):
        last = model(batch.tokens)[torch.arange(6), batch.last()]
    target, other = last.argmin(-1), last.argmax(-1)
    obj = LogitDifference(target, other, threshold=-0.5 * (last.amax(-1) - last.amin(-1)))
    results = {}
    for method in ("jacobian", "lagrangian"):
        c = {"name": "cross_layer", "method": method, "drift_threshold": 0.02}
        threat = ThreatModel.make(FIRST, positions=[-2, -1], budget=1.0, constraint=c)
        results[method] = GradientRecovery(model, defense, threat, obj, AttackConfig(steps=25)).run(batch)
        r = results[method]
        assert (r.drift[r.success] <= 0.02).all()
        assert r.orthogonality.max() < 1e-6
    enc = ThreatModel.make(FIRST, positions=[-2, -1], budget=1.0, constraint="encoder")
    plain = GradientRecovery(model, defense, enc, obj, AttackConfig(steps=25)).run(batch)
    # the encoder-only attack moves downstream latents; the Jacobian method keeps them put
    assert plain.recovered > 0 and results["jacobian"].recovered > 0
    both = plain.success & results["jacobian"].success
    assert (results["jacobian"].drift[both] <= 0.02).all() and plain.drift[plain.success].max() > 0.02


def test_result_to_dict_and_flags():
    model, defense, batch, obj, required = linear_case(v_in_span=False, n=3)
    threat = ThreatModel.make(LAST, budget=float(required.max()) * 2, relative=False, constraint="encoder")
    res = GradientRecovery(model, defense, threat, obj, AttackConfig(steps=10)).run(batch)
    d = res.to_dict()
    assert d["n"] == 3 and len(d["examples"]["success"]) == 3 and d["threat"]["constraint"]["name"] == "encoder"
    assert d["recovered"] == res.recovered and "verification_disagrees" not in d["flags"]


def test_attribution_replay_parts_sum_and_clamped_part_is_inert():
    model, defense, batch, obj, required = linear_case(v_in_span=False)
    threat = ThreatModel.make(LAST, budget=1.0, relative=False, constraint="encoder")
    res = GradientRecovery(model, defense, threat, obj, AttackConfig(steps=40)).run(batch, budget=2 * required)
    rep = attribution_replay(model, defense, obj, batch, res.perturbations[0])
    parts = rep.parts
    assert torch.allclose(parts["clamped"] + parts["other"] + parts["error"], parts["full"], atol=1e-5)
    assert parts["clamped"].abs().max() < 1e-5  # encoder-orthogonal: the clamped latents did not change
    assert torch.equal(rep.success["full"], res.success)
    assert not rep.success["clamped"].any()  # a zero delta leaves the defended (failing) state
    assert rep.to_dict()["n"] == batch.size


def test_choice_and_continuation_objectives():
    logits = torch.tensor([[[0.0, 3.0, 1.0, 2.0]], [[5.0, 0.0, 1.0, 0.0]]])
    rows = torch.arange(2)
    ch = ChoiceObjective(torch.tensor([[1, 2, 3], [0, 2, 3]]), torch.tensor([2, 0]))
    assert ch.score(logits, rows).tolist() == [-1.0, 4.0] and ch.success(logits, rows).tolist() == [False, True]
    ce = ChoiceObjective(torch.tensor([[1, 2, 3], [0, 2, 3]]), torch.tensor([2, 0]), kind="ce")
    assert (ce.score(logits, rows) < 0).all() and ce.success(logits, rows).tolist() == [False, True]
    batch = AttackBatch.from_lists([[5, 6, 1, 2], [5, 3, 0]], prompt_lengths=[2, 2])
    cont = Continuation(batch, refusal_ids=[9, 1])
    assert cont.readout(batch).tolist() == [[1, 2], [1, 2]] and cont.valid.tolist() == [[True, True], [True, False]]
    lg = torch.zeros(2, 2, 10)
    lg[0, 0, 1], lg[0, 1, 2] = 8.0, 8.0  # row 0 says its answer (1 then 2); token 1 is not a refusal of itself
    lg[1, 0, 9] = 8.0  # row 1 opens with a refusal token
    ok = cont.success(lg, torch.arange(2))
    assert ok.tolist() == [True, False]


def test_random_search_respects_budget_and_constraint():
    model, defense, batch, obj, required = linear_case(v_in_span=False)
    threat = ThreatModel.make(LAST, budget=0.3, constraint="encoder")
    res = RandomSearch(model, defense, threat, obj, RandomSearchConfig(steps=10)).run(batch)
    assert (res.relative_norm <= 0.3 * (1 + 1e-5)).all()
    assert res.orthogonality.max() < 1e-6


@pytest.mark.parametrize("norm, scope", [("linf", "position"), ("l2", "example"), ("linf", "example")])
def test_other_norms_and_scopes_stay_feasible(norm, scope):
    model, defense, batch, obj, _ = linear_case(v_in_span=False)
    threat = ThreatModel.make(LAST, positions="all", norm=norm, scope=scope, budget=0.05, constraint="encoder")
    res = GradientRecovery(model, defense, threat, obj, AttackConfig(steps=8, restarts=1)).run(batch)
    bound = threat.bind(defense, model)
    p = res.perturbations[0]
    fwd = DefendedForward(model, bound, batch, obj.readout(batch))
    radius = bound.radius(LAST, fwd.resid_def[LAST], p.mask)
    assert (budget_excess(p.delta, p.mask, radius, norm, scope) <= 1e-5).all()
    assert res.orthogonality.max() < 1e-6


def test_jacobian_memory_guard(monkeypatch):
    model = tiny_model(seed=2)
    saes = {FIRST: tiny_sae("jumprelu", seed=5), LAST: tiny_sae("standard", seed=6)}
    defense = FeatureClamp(ClampConfig(features={FIRST: S, LAST: (4, 5, 6)}), saes)
    batch = AttackBatch.from_lists(tiny_tokens(2, 8, seed=3).tolist())
    obj = LogitDifference(torch.tensor([1, 2]), torch.tensor([3, 4]), threshold=1e6)
    threat = ThreatModel.make(FIRST, budget=0.5, constraint="cross_layer")
    monkeypatch.setattr(engine, "MAX_JACOBIAN_BYTES", 1)
    with pytest.raises(ToolkitError, match="lagrangian"):
        GradientRecovery(model, defense, threat, obj, AttackConfig(steps=2)).run(batch)
