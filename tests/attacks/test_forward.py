"""The cached attack forward equals an ordinary forward; gradients are exact; hooks never leak."""

from __future__ import annotations

import pytest
import torch

from attacks.batch import AttackBatch
from attacks.forward import DefendedForward, full_forward
from attacks.perturbation import Perturbation, perturbation_hooks
from attacks.threat import ThreatModel
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae

SITES = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")


def _setup(dtype=torch.float32, kind="jumprelu"):
    model = tiny_model(dtype=dtype)
    saes = {"blocks.0.hook_resid_post": tiny_sae(kind, seed=1, dtype=dtype),
            "blocks.1.hook_resid_post": tiny_sae("standard", seed=2, dtype=dtype)}
    defense = FeatureClamp(ClampConfig(features={s: (1, 2, 3, 5, 8) for s in saes}), saes)
    batch = AttackBatch.from_lists([[1, 2, 3, 4, 5, 6, 7], [3, 4, 5, 6, 7], [9, 8, 7, 6, 5, 4, 3, 2]])
    return model, defense, batch


def _no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("positions", ["last", "all", [-2, -1], [2]])
def test_cached_forward_matches_full_forward(site, positions):
    model, defense, batch = _setup()
    bound = ThreatModel.make(site, positions=positions, constraint="none").bind(defense, model)
    readout = torch.stack([batch.last(), batch.last() - 1], dim=1)
    fwd = DefendedForward(model, bound, batch, readout)
    rows = torch.tensor([2, 0])
    delta = torch.randn(2, batch.width, 16, generator=torch.Generator().manual_seed(0))
    out = fwd.run(rows, {site: delta})
    logits, latents = full_forward(model, defense, batch.select(rows),
                                   [Perturbation(site, delta, fwd.masks[site][rows])], bound.monitored)
    want = logits.gather(1, readout[rows][..., None].expand(-1, -1, logits.shape[-1]))
    assert torch.allclose(out.logits, want, atol=1e-5)
    for z, z_full in zip(out.latents, latents, strict=True):
        real = out.computed[..., None].expand_as(z)
        assert torch.allclose(z[real], out.take(z_full)[real], atol=1e-5)
    if positions == "last":  # each row only from its own first read-out position to its end
        assert torch.equal(out.positions[:, 0], batch.last()[rows] - 1)
        assert out.computed.sum(1).tolist() == [2, 2]
    assert _no_hooks_left(model)


def test_two_perturbed_sites_and_zero_delta_is_defended_run():
    model, defense, batch = _setup()
    sites = ["blocks.1.hook_resid_post", "blocks.0.hook_resid_post"]
    bound = ThreatModel.make(sites, positions="all", constraint="none").bind(defense, model)
    fwd = DefendedForward(model, bound, batch, batch.last()[:, None])
    rows = torch.arange(3)
    deltas = {s: torch.randn(3, batch.width, 16) for s in sites}
    out = fwd.run(rows, deltas)
    perts = [Perturbation(s, deltas[s], fwd.masks[s]) for s in sites]
    logits, _ = full_forward(model, defense, batch, perts)
    assert torch.allclose(out.logits[:, 0], logits[rows, batch.last()], atol=1e-5)
    zero = fwd.run(rows, {s: torch.zeros(3, batch.width, 16) for s in sites})
    with defense.applied(model):
        plain = model(batch.tokens)
    assert torch.allclose(zero.logits[:, 0], plain[rows, batch.last()], atol=1e-5)


def test_gradcheck_defended_forward_float64():
    model, defense, batch = _setup(torch.float64, kind="standard")
    site = "blocks.0.hook_resid_post"
    bound = ThreatModel.make(site, positions=[-2, -1], constraint="none").bind(defense, model)
    fwd = DefendedForward(model, bound, batch, batch.last()[:, None])
    rows = torch.tensor([0, 1])
    delta = (0.1 * torch.randn(2, batch.width, 16, dtype=torch.float64)).requires_grad_()

    def f(d):
        out = fwd.run(rows, {site: d})
        return out.logits[..., :6], out.latents[-1]

    assert torch.autograd.gradcheck(f, (delta,), eps=1e-6, atol=1e-5)
    assert _no_hooks_left(model)


def test_perturbation_hooks_offset_and_window():
    delta = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[False, True, True, False], [True, False, False, True]])
    p = Perturbation("s", delta, mask)
    (site, fn), = perturbation_hooks([p], offset=lambda: 2)
    out = fn(torch.zeros(2, 3, 3), hook=None)  # positions 2, 3, 4 (4 lies beyond the delta)
    assert torch.equal(out[:, :2], p.masked()[:, 2:4]) and out[:, 2].eq(0).all()
    assert site == "s"
    with pytest.raises(ToolkitError, match="mask"):
        Perturbation("s", delta, mask.float())
    with pytest.raises(ToolkitError, match="does not fit"):
        fn(torch.zeros(3, 3, 3), hook=None)


def test_hooks_removed_after_errors():
    model, defense, batch = _setup()
    bound = ThreatModel.make(SITES[0], constraint="none").bind(defense, model)
    fwd = DefendedForward(model, bound, batch, batch.last()[:, None])
    with pytest.raises(ToolkitError):
        fwd.run(torch.arange(3), {SITES[0]: torch.zeros(2, batch.width, 16)})  # wrong batch size
    assert _no_hooks_left(model)
