"""Gradients are part of the defense contract: gradcheck in float64, identity Jacobian when nothing is edited."""

from __future__ import annotations

import pytest
import torch

from guard.registry import DEFENSES
from tests.guard_cases import SITES, build_all, build_identity, calibrations
from tests.helpers import D_MODEL, tiny_model, tiny_sae, tiny_tokens

F64 = torch.float64


def _saes(kind: str, k: int = 4) -> dict:
    return {site: tiny_sae(kind, seed=10 + i, dtype=F64, k=k) for i, site in enumerate(SITES)}


@pytest.fixture(scope="module", params=["standard", "jumprelu"])
def setup(request):
    saes = _saes(request.param)
    calibs = calibrations(saes)
    return saes, build_all(saes, calibs), build_identity(saes, calibs)


def _edit(defense, resid: torch.Tensor, site: str) -> torch.Tensor:
    defense.draw(0)  # a randomized defense: the same draw on every call gradcheck makes
    return defense.edit(resid, site)


def _resid(seed: int = 0, shape=(2, 3, D_MODEL), scale: float = 1.5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=F64) * scale + 0.5).requires_grad_(True)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_gradcheck_every_defense(setup, name):
    _, defenses, _ = setup
    defense = defenses[name]
    resid = _resid()
    for site in defense.sites:
        out = defense.edit(resid, site)
        if name != "error_monitor":  # the monitor's forward is its clamp; the others must really edit here
            assert not torch.allclose(out, resid), f"{name} edits nothing at {site}: gradcheck would be vacuous"
        assert torch.autograd.gradcheck(lambda r, s=site: _edit(defense, r, s), (resid,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_identity_jacobian_when_nothing_is_edited(setup, name):
    _, _, identities = setup
    defense = identities[name]
    resid = _resid(seed=1)
    for site in defense.sites:
        out = defense.edit(resid, site)
        torch.testing.assert_close(out, resid, atol=1e-6, rtol=0)
        token = resid[:1, :1].detach()  # [1, 1, d]: one token, Jacobian [d, d]
        jac = torch.autograd.functional.jacobian(lambda r, s=site: defense.edit(r, s), token)
        torch.testing.assert_close(jac.reshape(D_MODEL, D_MODEL), torch.eye(D_MODEL, dtype=F64), atol=1e-6, rtol=0)


def _topk_margin(sae, resid: torch.Tensor, k: int) -> float:
    """Smallest gap between the k-th and (k+1)-th pre-activation over tokens: the set is stable
    under perturbations much smaller than this."""
    with torch.no_grad():
        hidden_pre = sae.process_sae_in(resid) @ sae.W_enc + sae.b_enc
    top = hidden_pre.topk(k + 1, dim=-1).values
    return float((top[..., k - 1] - top[..., k]).min())


def test_gradcheck_topk_away_from_ties():
    """TopK's active set is not differentiable at ties; check at a point whose gap is >> eps."""
    saes = _saes("topk", k=4)
    defenses = build_all(saes, calibrations(saes))
    resid = next(r for r in (_resid(seed=s) for s in range(50))
                 if all(_topk_margin(saes[site], r.detach(), 4) > 1e-3 for site in SITES))
    for defense in defenses.values():
        for site in defense.sites:
            assert torch.autograd.gradcheck(lambda r, s=site, d=defense: _edit(d, r, s), (resid,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["splice", "error_ellipsoid", "closed_loop", "direction_ablation"])
def test_gradcheck_through_model_with_attack_hook_first(name):
    """d logits / d delta through the hooked model: the attacker's hook runs before the defense's."""
    model = tiny_model(dtype=F64)
    saes = _saes("standard")
    defense = build_all(saes, calibrations(saes))[name]
    tokens = tiny_tokens(batch=1, pos=4)
    delta = (torch.randn(D_MODEL, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.3).requires_grad_(True)
    last = torch.zeros(1, 4, 1, dtype=F64)
    last[0, -1] = 1.0  # perturb the last position only: enough to reach both defended sites

    def logits(d: torch.Tensor) -> torch.Tensor:
        hooks = [(SITES[0], lambda resid, hook: resid + last * d)] + defense.fwd_hooks()
        with model.hooks(fwd_hooks=hooks):
            return model(tokens)[0, -1, :4]

    assert torch.autograd.gradcheck(logits, (delta,), eps=1e-6, atol=1e-5)
