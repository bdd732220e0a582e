"""Property tests of the attack projections: idempotent, within budget, orthogonal, exact."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.projection import (
    EncoderProjector,
    encoder_projector,
    nullspace_step,
    orthogonality_ratio,
    project_budget,
)
from guard.base import DefendedLatents
from tests.helpers import tiny_sae

# Stated tolerance of the encoder-orthogonal projection in float32 (measured ~3e-8 on these shapes).
ORTH_TOL_F32 = 1e-6

seeds = st.integers(0, 2**31 - 1)
fast = settings(max_examples=40, deadline=None)  # per test: a global profile would change others' tests


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _columns(seed: int, d: int, k: int, scale: float) -> torch.Tensor:
    return torch.randn(d, k, generator=_gen(seed)) * scale


@fast
@given(seed=seeds, d=st.integers(4, 64), k=st.integers(1, 12), scale=st.floats(1e-3, 1e3))
def test_encoder_projector_idempotent_symmetric_orthogonal(seed, d, k, scale):
    cols = _columns(seed, d, min(k, d - 1), scale)
    proj = EncoderProjector(cols, "site")
    x = torch.randn(3, 5, d, generator=_gen(seed + 1)) * 50
    y = torch.randn(3, 5, d, generator=_gen(seed + 2))
    px = proj(proj(x))
    assert torch.allclose(proj(px), px, atol=1e-4 * x.abs().max().item())  # idempotent
    assert torch.allclose((px * y).sum(-1), (x * proj(y)).sum(-1), rtol=1e-4, atol=1e-3 * 50)  # symmetric
    assert (px.norm(dim=-1) <= x.norm(dim=-1) * (1 + 1e-6)).all()  # a contraction
    # error relative to the input: ||A^T P x|| <= tol ||A|| ||x||
    lhs = (px.double() @ cols.double()).norm(dim=-1)
    assert (lhs <= ORTH_TOL_F32 * torch.linalg.matrix_norm(cols.double(), ord=2) * x.double().norm(dim=-1)).all()
    # an attack re-projects delta itself every step, so delta ~ P delta and the ratio is small
    assert orthogonality_ratio(cols, proj(px)).max() < ORTH_TOL_F32


def test_full_rank_columns_leave_only_zero():
    cols = _columns(0, 6, 6, 1.0)
    assert EncoderProjector(cols)(torch.randn(2, 6)).eq(0).all()


@fast
@given(seed=seeds)
def test_projector_rank_deficient_columns(seed):
    base = _columns(seed, 16, 3, 1.0)
    cols = torch.cat([base, base[:, :1] * 2.0, base.sum(1, keepdim=True)], dim=1)  # rank 3
    proj = EncoderProjector(cols)
    assert proj.rank == 3
    x = torch.randn(7, 16, generator=_gen(seed))
    assert orthogonality_ratio(cols, proj(proj(x))).max() < ORTH_TOL_F32


@fast
@given(seed=seeds, radius=st.floats(1e-3, 1e3), scope=st.sampled_from(["position", "example"]))
def test_l2_budget_projection_within_and_idempotent(seed, radius, scope):
    g = _gen(seed)
    delta = torch.randn(4, 6, 8, generator=g) * radius * 3
    mask = torch.rand(4, 6, generator=g) > 0.4
    mask[:, 0] = True
    r = torch.full((4, 6), radius) if scope == "position" else torch.full((4,), radius)
    out = project_budget(delta, mask, r, "l2", scope)
    size = out.norm(dim=-1) if scope == "position" else out.flatten(1).norm(dim=-1)
    assert (size <= r * (1 + 1e-5)).all()
    assert (out[~mask] == 0).all()
    assert torch.allclose(project_budget(out, mask, r, "l2", scope), out, rtol=1e-5, atol=1e-6 * radius)


@fast
@given(seed=seeds, radius=st.floats(1e-2, 1e2), linear=st.booleans())
def test_linf_budget_projection_within_box(seed, radius, linear):
    g = _gen(seed)
    cols = torch.randn(8, 2, generator=g)
    proj = EncoderProjector(cols)
    delta = torch.randn(3, 4, 8, generator=g) * radius * 2
    if linear:
        delta = proj(delta)
    mask = torch.ones(3, 4, dtype=torch.bool)
    out = project_budget(delta, mask, torch.full((3, 4), radius), "linf", "position", linear=linear)
    assert (out.abs() <= radius * (1 + 1e-6)).all()
    if linear:  # the shrink keeps the subspace, where a clip would not
        assert orthogonality_ratio(cols, out).max() < ORTH_TOL_F32


@fast
@given(seed=seeds, radius=st.floats(0.1, 10.0))
def test_subspace_then_ball_is_the_exact_projection(seed, radius):
    """P_ball(P_V(x)) is the nearest point of V ∩ ball: no random feasible point is closer."""
    g = _gen(seed)
    proj = EncoderProjector(torch.randn(10, 3, generator=g))
    x = torch.randn(1, 1, 10, generator=g) * radius * 2
    mask = torch.ones(1, 1, dtype=torch.bool)
    r = torch.full((1, 1), radius)
    best = project_budget(proj(x), mask, r, "l2")
    cands = proj(torch.randn(500, 1, 10, generator=g))
    cands = cands * (torch.rand(500, 1, 1, generator=g) * radius / cands.norm(dim=-1, keepdim=True))
    assert ((x - best).norm() <= (x - cands).norm(dim=-1).min() + 1e-4).item()


@fast
@given(seed=seeds, m=st.integers(1, 6))
def test_nullspace_step_removes_jacobian_motion_and_restores(seed, m):
    g = _gen(seed)
    jac = torch.randn(2, m, 20, generator=g, dtype=torch.float64)
    update = torch.randn(2, 20, generator=g, dtype=torch.float64)
    residual = torch.randn(2, m, generator=g, dtype=torch.float64)
    free = nullspace_step(jac, update)
    assert (jac @ free[..., None]).abs().max() < 1e-8 * update.abs().max() * jac.abs().max() * 20
    restored = nullspace_step(jac, update, residual)
    assert torch.allclose((jac @ restored[..., None])[..., 0], -residual, atol=1e-8)
    # the null-space part of the update is untouched
    assert torch.allclose(nullspace_step(jac, free), free, atol=1e-10)


def test_encoder_projector_cached_per_sae_and_features():
    sae = tiny_sae("jumprelu", seed=3)
    lat = DefendedLatents("blocks.0.hook_resid_post", sae, torch.tensor([1, 4, 9]))
    assert encoder_projector([lat]) is encoder_projector([lat])
    other = DefendedLatents("blocks.0.hook_resid_post", sae, torch.tensor([1, 4]))
    assert encoder_projector([other]) is not encoder_projector([lat])
    with torch.no_grad():
        sae.W_enc.mul_(2.0)  # an edited SAE gets a fresh projector
    assert encoder_projector([lat]) is not encoder_projector([other])
    assert orthogonality_ratio(sae.W_enc[:, [1, 4, 9]], encoder_projector([lat])(torch.randn(5, 16))).max() < ORTH_TOL_F32


@fast
@given(seed=seeds, scale=st.floats(1e-3, 1e3))
def test_orthogonality_ratio_bounded_and_scale_free(seed, scale):
    g = _gen(seed)
    cols, x = torch.randn(12, 4, generator=g), torch.randn(5, 12, generator=g)
    r = orthogonality_ratio(cols, x)
    assert ((r >= 0) & (r <= 1 + 1e-9)).all()
    assert torch.allclose(orthogonality_ratio(cols * scale, x * scale), r, rtol=1e-6, atol=1e-9)
    assert orthogonality_ratio(cols, torch.zeros(2, 12)).eq(0).all()
