"""Convex bounds: SOCP against closed forms, soundness against attacks where linearisation is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from certify.bounds import closed_form_bound, convex_bound, convex_bounds, null_space_basis, projector
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.sae_ops import encoder_columns
from tests.helpers import tiny_sae

D = 16
SITE = "blocks.0.hook_resid_post"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: extra threads only add contention on a loaded machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _problem(seed: int, k: int = 3, m: int = 4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=D), rng.normal(size=(D, k)), rng.normal(size=(m, D))


def test_projector_is_the_orthogonal_projector_off_span_a():
    _, a, _ = _problem(0)
    p = projector(a, D)
    assert np.allclose(p @ p, p) and np.allclose(p, p.T)
    assert np.allclose(a.T @ p, 0, atol=1e-12)
    assert np.linalg.matrix_rank(p) == D - 3
    # rank-deficient A: a repeated column removes no extra direction
    assert null_space_basis(np.concatenate([a, a[:, :1]], axis=1), D).shape == (D, D - 3)
    assert np.allclose(projector(None, D), np.eye(D))


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.floats(0.1, 50.0), k=st.integers(0, 3))
def test_socp_matches_closed_form_without_j(seed, budget, k):
    g, a, _ = _problem(seed, k=max(k, 1))
    a = a[:, :k]
    closed = closed_form_bound(g, budget, a)
    assert closed.bound == pytest.approx(budget * np.linalg.norm(projector(a, D) @ g), rel=1e-12)
    socp = convex_bound(g, budget, a, method="socp")
    assert socp.method == "socp" and socp.lower == pytest.approx(closed.bound, rel=1e-6)
    assert socp.lower <= socp.bound + 1e-12


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.one_of(st.just(0.0), st.just(1e-200), st.floats(0.01, 5.0)))
def test_j_constraint_bound_is_sound_tight_and_never_looser(seed, eps):
    g, a, j = _problem(seed)
    budget = 2.0
    res = convex_bound(g, budget, a, j, eps)
    # the maximiser is exactly feasible and attains the bound up to the reported gap
    delta = res.delta
    assert np.linalg.norm(delta) <= budget * (1 + 1e-9)
    assert np.allclose(a.T @ delta, 0, atol=1e-9)
    assert np.linalg.norm(j @ delta) <= eps * (1 + 1e-9) + 1e-9
    assert g @ delta == pytest.approx(res.lower, abs=1e-9)
    assert 0 <= res.gap <= 1e-5 * max(1.0, res.bound)
    assert res.bound <= closed_form_bound(g, budget, a).bound
    assert res.bound >= convex_bound(g, budget, a, j, 0.0).bound - 1e-9  # eps = 0 is a subset
    # random feasible points never beat the bound
    rng = np.random.default_rng(seed)
    p = projector(a, D)
    for _ in range(200):
        x = p @ rng.normal(size=D)
        x *= min(budget / np.linalg.norm(x), eps / max(np.linalg.norm(j @ x), 1e-300))
        assert g @ x <= res.bound + 1e-9


def test_bound_scales_with_budget_and_handles_edges():
    g, a, j = _problem(1)
    one, two = convex_bound(g, 1.0, a, j, 0.5), convex_bound(g, 2.0, a, j, 1.0)
    assert two.bound == pytest.approx(2 * one.bound, rel=1e-5)  # the set scales by 2
    assert convex_bound(g, 0.0, a, j, 1.0).bound == 0.0
    assert convex_bound(g, 3.0, a, j, 1e6).bound == pytest.approx(closed_form_bound(g, 3.0, a).bound, rel=1e-6)
    full = np.eye(D)[:, :D]
    assert closed_form_bound(g, 3.0, full).bound == pytest.approx(0.0, abs=1e-12)  # nowhere to move
    batch = convex_bounds(np.stack([g, 2 * g]), [1.0, 1.0], a)
    assert batch[1].bound == pytest.approx(2 * batch[0].bound)
    assert set(batch[0].to_dict()) >= {"bound", "lower", "gap", "method", "status", "delta_norm"}


@pytest.mark.parametrize("kwargs, match", [
    (dict(g=np.ones((2, D)), budget=1.0), "dimension"),
    (dict(g=np.ones(D), budget=-1.0), "budget"),
    (dict(g=np.ones(D), budget=1.0, A=np.ones((D + 1, 2))), "A must be"),
    (dict(g=np.ones(D), budget=1.0, J=np.ones((2, D))), "without eps"),
    (dict(g=np.ones(D), budget=1.0, J=np.ones((2, D + 1)), eps=1.0), "J must be"),
    (dict(g=np.full(D, np.nan), budget=1.0), "NaN"),
    (dict(g=np.ones(D), budget=1.0, method="lp"), "method"),
])
def test_bad_input_names_the_problem(kwargs, match):
    with pytest.raises(ToolkitError, match=match):
        convex_bound(**kwargs)


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
@pytest.mark.parametrize("mode, value", [("set", 0.0), ("multiply", 3.0)])
def test_no_attack_beats_the_bound_when_linearisation_is_exact(kind, mode, value):
    """Linear readout behind a clamp of an elementwise SAE: for encoder-orthogonal delta the clamped
    latents do not move, so score(h + delta) - score(h) = w^T delta exactly and the bound is the true max."""
    torch.manual_seed(0)
    sae = tiny_sae(kind, seed=3, dtype=torch.float64)
    features = (1, 4, 9)
    clamp = FeatureClamp(ClampConfig(features={SITE: features}, mode=mode, value=value), {SITE: sae})
    a = encoder_columns(sae, torch.tensor(features)).detach()
    w = torch.randn(D, dtype=torch.float64)
    resid = torch.randn(2, 3, D, dtype=torch.float64) * 2
    j = torch.randn(5, D, dtype=torch.float64)  # a linear "downstream drift" map: exact too

    def score(delta):
        """[n, d_model] perturbations of sample 0's last position -> [n] defended scores."""
        h = resid[:1].repeat(delta.shape[0], 1, 1)
        h = torch.cat([h[:, :-1], (h[:, -1] + delta)[:, None]], dim=1)  # attacker before defense
        return clamp.edit(h, SITE)[:, -1] @ w

    zero = torch.zeros(1, D, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(score(zero).sum(), zero)
    with torch.no_grad():
        base = float(score(zero))

    def gain(delta):
        with torch.no_grad():
            return score(delta.reshape(-1, D)) - base

    budget, eps = 1.5, 0.4
    p = torch.as_tensor(projector(a, D))
    for jac, radius in ((None, None), (j, eps)):
        res = convex_bound(g[0], budget, a, jac, radius)

        def feasible(x, jac=jac, radius=radius):
            x = x @ p
            scale = budget / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            if jac is not None:
                scale = torch.minimum(scale, radius / (x @ jac.T).norm(dim=-1, keepdim=True).clamp_min(1e-300))
            return x * torch.clamp(scale, max=1.0)

        gen = torch.Generator().manual_seed(1)
        random_deltas = feasible(torch.randn(200, D, generator=gen, dtype=torch.float64))
        assert gain(random_deltas).max() <= res.bound + 1e-9
        # projected gradient ascent through the real defense, re-projected every step
        delta = torch.zeros(1, D, dtype=torch.float64)
        for _ in range(40):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(score(delta).sum(), delta)
            delta = feasible(delta.detach() + 0.2 * grad / grad.norm().clamp_min(1e-300))
            assert float(gain(delta)) <= res.bound + 1e-9
        # the certificate's own maximiser achieves it through the defended forward pass
        achieved = float(gain(torch.as_tensor(res.delta)))
        assert achieved == pytest.approx(res.bound, abs=1e-6 * max(1.0, res.bound))
        if jac is None:
            assert float(gain(delta)) >= 0.99 * res.bound  # PGD finds the closed-form optimum


@pytest.mark.parametrize("setting", ["planted", "planted_aligned"])
def test_demo_bound_is_attained_so_bound_exact_is_true(setting):
    """The demo suite records ``bound_exact``: its score is affine in every feasible delta, so the
    bound's own maximiser gains exactly the bound (clamp: ``B sqrt(1 - c^2)``; clamp_wide: 0)."""
    from certify.demo import SETTINGS, PlantedWorld

    world = PlantedWorld(setting, seed=0, n=4, device="cpu")
    sin = float(np.sqrt(1 - SETTINGS[setting] ** 2))
    for name, per_budget in (("none", 1.0), ("clamp", sin), ("clamp_wide", 0.0)):
        grads, cols = world.gradients(name), world.columns(name, exact=True)
        for budget in (0.5, 4.0):
            results = [convex_bound(g, budget, cols) for g in grads]
            assert np.allclose([r.bound for r in results], budget * per_budget, atol=1e-6, rtol=1e-6)
            deltas = torch.as_tensor(np.stack([r.delta for r in results]))
            with torch.no_grad():
                gain = world.score_at(name, deltas, exact=True) - world.scores(name, exact=True)
            assert torch.allclose(gain, torch.tensor([r.bound for r in results], dtype=gain.dtype), atol=1e-9)
    # and nothing feasible does better: random directions in the threat set at the full budget
    gen = torch.Generator().manual_seed(0)
    cols = world.columns("clamp", exact=True)
    q = torch.linalg.qr(cols)[0]
    for _ in range(5):
        d = torch.randn(4, D, generator=gen, dtype=torch.float64)
        d = d - d @ q @ q.T
        d = 4.0 * d / d.norm(dim=1, keepdim=True)
        with torch.no_grad():
            gain = world.score_at("clamp", d, exact=True) - world.scores("clamp", exact=True)
        assert (gain <= 4.0 * sin + 1e-9).all()
