"""What each defense guarantees, checked as invariants on tiny random SAEs and a tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from guard.clamp import ClampConfig, FeatureClamp
from guard.closed_loop import ClosedLoopConfig, calibrate_closed_loop
from guard.errors import ToolkitError
from guard.monitor import ErrorMonitor, false_positive_rate
from guard.registry import DEFENSES, build_defense
from guard.sae_ops import encode, split
from tests.guard_cases import FEATURES, SITES, benign_data, build_all, calibrations, working_configs
from tests.helpers import tiny_sae, tiny_tokens

SITE = SITES[0]


@pytest.fixture(scope="module")
def saes():
    return {site: tiny_sae("jumprelu", seed=40 + i) for i, site in enumerate(SITES)}


@pytest.fixture(scope="module")
def calibs(saes):
    return calibrations(saes)


@pytest.fixture(scope="module")
def defenses(saes, calibs):
    return build_all(saes, calibs)


def _resid(seed=0, shape=(3, 5, 16), scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * scale + 0.5


def _split_out(defense, resid, site=SITE):
    """(defended output, its part beyond the clamped reconstruction) for a residual-aware defense."""
    sae, feats = defense.saes[site], defense.features[site]
    feature_acts, recon, error = split(sae, resid)
    clamp_only = FeatureClamp(ClampConfig(features={site: tuple(feats.tolist())}), {site: sae}).edit(resid, site)
    out = defense.edit(resid, site)
    return out, out - (clamp_only - error), error


def test_residual_defense_with_identity_transform_equals_plain_clamp(saes):
    clamp = FeatureClamp(ClampConfig(features=FEATURES, mode="multiply", value=0.2), saes)
    keep = build_defense(DEFENSES["splice"].config(features=FEATURES, mode="multiply", value=0.2, error_scale=1.0), saes)
    resid = _resid()
    for site in SITES:
        torch.testing.assert_close(keep.edit(resid, site), clamp.edit(resid, site))


def test_splice_returns_the_clamped_reconstruction_and_spares_sinks(defenses):
    splice = defenses["splice"]
    resid = _resid()
    resid[0, 0] *= 500  # an attention sink
    sae, feats = splice.saes[SITE], splice.features[SITE]
    z = encode(sae, resid)
    z_clamped = z.clone()
    z_clamped[..., feats] = 0.0
    expected = sae.decode(z_clamped)
    out = splice.edit(resid, SITE)
    torch.testing.assert_close(out[0, 1:], expected[0, 1:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1:], expected[1:], atol=1e-4, rtol=1e-4)
    # the sink passes through unedited (clamp included), unless sink handling is off
    torch.testing.assert_close(out[0, 0], resid[0, 0])
    clamp_all = FeatureClamp(ClampConfig(features={SITE: tuple(feats.tolist())}, sink_ratio=None), splice.saes)
    clamp_sinkless = FeatureClamp(ClampConfig(features={SITE: tuple(feats.tolist())}), splice.saes)
    torch.testing.assert_close(clamp_sinkless.edit(resid, SITE)[0, 0], resid[0, 0])
    assert not torch.allclose(clamp_all.edit(resid, SITE)[0, 0], resid[0, 0])
    torch.testing.assert_close(clamp_all.edit(resid, SITE)[1:], clamp_sinkless.edit(resid, SITE)[1:])


def test_error_norm_bound_caps_the_error_and_leaves_small_errors_alone(defenses):
    bound = defenses["error_norm"]
    tau = bound.thresholds[SITE]
    resid = _resid(scale=1.0) * torch.linspace(0.05, 4.0, 15).reshape(3, 5, 1)  # small to large tokens
    _, new_error, error = _split_out(bound, resid)
    assert (new_error.norm(dim=-1) <= tau * (1 + 1e-5)).all()
    small = error.norm(dim=-1) <= tau
    assert small.any() and (~small).any(), "test point should have errors on both sides of the bound"
    torch.testing.assert_close(new_error[small], error[small], atol=1e-5, rtol=1e-5)
    # large errors keep their direction
    cos = torch.nn.functional.cosine_similarity(new_error[~small], error[~small], dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0))
def test_error_subspace_projection_is_idempotent_and_kills_behaviour(defenses, seed, scale):
    proj = defenses["error_subspace"]
    error = _resid(seed, scale=scale)
    keep = torch.ones(error.shape[:-1], dtype=torch.bool)
    once = proj.transform_error(error, SITE, keep)
    twice = proj.transform_error(once, SITE, keep)
    tol = 1e-5 * (1 + scale)
    torch.testing.assert_close(twice, once, atol=tol, rtol=1e-4)
    assert (once @ proj.behaviour[SITE]).abs().max() <= tol


def test_error_subspace_rank_from_energy(saes, calibs):
    calib = calibs["error_subspace"]
    config = dataclasses.replace(working_configs()["error_subspace"], rank=None, energy=0.5)
    proj = build_defense(config, saes, calib)
    k = proj.rank(SITE)
    share = calib.variance[SITE].cumsum(0) / calib.variance[SITE].sum()
    assert share[k - 1] >= 0.5 - 1e-6 and (k == 1 or share[k - 2] < 0.5)
    with pytest.raises(ToolkitError, match="rank 99 not in"):
        build_defense(dataclasses.replace(config, rank=99), saes, calib)
    with pytest.raises(ToolkitError, match="needs behaviour directions"):
        build_defense(config, saes, dataclasses.replace(calib, behaviour={}))


def test_ellipsoid_guard_maps_errors_into_the_ellipsoid(defenses, saes, calibs):
    guard = defenses["error_ellipsoid"]
    resid = _resid(scale=4.0)
    _, new_error, error = _split_out(guard, resid)
    inside = guard.ellipsoid_norm(new_error, SITE)
    assert (inside <= 1 + 1e-4).all()
    assert (guard.ellipsoid_norm(error, SITE) > 1).any(), "test point should start outside"
    # with the complement kept, an error already inside is unchanged
    keep_all = build_defense(dataclasses.replace(working_configs()["error_ellipsoid"], keep_complement=True),
                             saes, calibs["error_ellipsoid"])
    calib = calibs["error_ellipsoid"]
    mask = torch.ones(1, 1, dtype=torch.bool)
    at_center = (calib.mean[SITE] + calib.basis[SITE] @ calib.center[SITE])[None, None] + 0.01
    torch.testing.assert_close(keep_all.transform_error(at_center, SITE, mask), at_center)


def test_closed_loop_calibrates_and_clamps_the_echo(model, saes):
    config = ClosedLoopConfig(features={SITE: FEATURES[SITE]})
    resid = _resid()
    plain = FeatureClamp(ClampConfig(features={SITE: FEATURES[SITE]}), saes)
    torch.testing.assert_close(build_defense(config, saes).edit(resid, SITE), plain.edit(resid, SITE))

    tokens = tiny_tokens(batch=4, pos=8, seed=5)
    calib = calibrate_closed_loop(model, saes, tokens, {SITE: FEATURES[SITE]}, k=3)
    assert calib.sites == (SITES[1],), "random tiny model: the source clamp should move some latent downstream"
    ids = calib.features[SITES[1]]
    assert 1 <= len(ids) <= 3 and (calib.scores[SITES[1]] > 0).all()
    loop = build_defense(config, saes, calib)
    assert loop.sites == SITES
    held = {d.site: d.features for d in loop.defended_latents()}
    assert torch.equal(held[SITES[1]], ids)
    # at a downstream site the edit is the plain clamp of the echo latents
    after = loop.edit(resid, SITES[1])
    expected = FeatureClamp(ClampConfig(features={SITES[1]: tuple(ids.tolist())}), saes).edit(resid, SITES[1])
    torch.testing.assert_close(after, expected)
    with pytest.raises(ToolkitError, match="calibration was made for source clamp"):
        build_defense(dataclasses.replace(config, value=1.0), saes, calib)


def test_monitor_flags_large_errors_accumulates_and_resets(saes, calibs):
    config = dataclasses.replace(working_configs()["error_monitor"], quantile=1.0)
    monitor: ErrorMonitor = build_defense(config, saes, calibs["error_norm"])
    calm = benign_data(8, seed=99)[SITE].reshape(2, 4, 16).requires_grad_(True)  # like the calibration data
    monitor.reset()
    out = monitor.edit(calm, SITE)
    clamp = FeatureClamp(ClampConfig(features={SITE: FEATURES[SITE]}), monitor.saes)
    torch.testing.assert_close(out, clamp.edit(calm, SITE))  # pass-through apart from the clamp
    assert not monitor.flags().any()
    loud = calm.detach().clone()
    push = torch.randn(16, generator=torch.Generator().manual_seed(0))
    loud[1, 2] += 28.0 * push / push.norm()  # below a sink's norm (8 x the median, ~37 here)
    monitor.edit(loud, SITE)
    assert monitor.flags().tolist() == [False, True]
    monitor.edit(calm.detach(), SITE)
    assert monitor.flags().tolist() == [False, True]  # flags accumulate until reset
    assert monitor.excess()[1] == 0  # ... while the penalty is the latest forward's
    monitor.reset()
    assert monitor.flags() is None
    monitor.edit(loud.requires_grad_(True), SITE)
    penalty = monitor.excess()
    assert penalty[0] == 0 and penalty[1] > 0
    penalty.sum().backward()  # differentiable for an adaptive attacker
    assert loud.grad[1, 2].abs().sum() > 0 and loud.grad[0].abs().sum() == 0
    # a sink-sized token (norm > sink_ratio x median) is exempt: documented, far beyond attack budgets
    sink = calm.detach().clone()
    sink[0, 0] *= 50
    monitor.reset()
    monitor.edit(sink, SITE)
    assert not monitor.flags()[0]


def test_monitor_ignores_padding_when_told_which_tokens_are_real(saes, calibs):
    config = dataclasses.replace(working_configs()["error_monitor"], quantile=1.0)
    monitor: ErrorMonitor = build_defense(config, saes, calibs["error_norm"])
    resid = benign_data(8, seed=99)[SITE].reshape(2, 4, 16).requires_grad_(True)
    loud = resid.detach().clone()
    push = torch.randn(16, generator=torch.Generator().manual_seed(0))
    loud[1, 3] += 28.0 * push / push.norm()  # the loud token is row 1's padding
    real = torch.tensor([[True] * 4, [True, True, True, False]])
    monitor.reset()
    monitor.edit(loud.requires_grad_(True), SITE)
    assert monitor.flags().tolist() == [False, True]  # unmasked: the pad flags its row
    assert monitor.flags(valid=real).tolist() == [False, False]
    assert monitor.excess(valid=real).tolist() == [0.0, 0.0] and monitor.excess()[1] > 0
    with pytest.raises(ToolkitError, match="valid mask"):
        monitor.excess(valid=real[:, :3])


def test_monitor_refusal_and_false_positive_rate(model, saes, calibs):
    config = dataclasses.replace(working_configs()["error_monitor"], action="refuse", quantile=1.0, threshold_scale=1e6)
    monitor = build_defense(config, saes, calibs["error_norm"])
    tokens = tiny_tokens(batch=5, pos=6)
    rate = false_positive_rate(model, monitor, tokens)
    assert (rate.n, rate.k, rate.rate) == (5, 0, 0.0)
    strict = build_defense(dataclasses.replace(config, threshold_scale=1e-6), saes, calibs["error_norm"])
    rate = false_positive_rate(model, strict, [t for t in tokens])
    assert (rate.n, rate.k, rate.rate) == (5, 5, 1.0)
    assert strict.respond(["a"]) == [config.refusal]  # the last prompt was flagged
    assert rate.to_dict()["n"] == 5


def test_direction_ablation_removes_the_direction_only(defenses):
    ablate = defenses["direction_ablation"]
    resid = _resid()
    direction = ablate.basis[SITE][:, 0]
    out = ablate.edit(resid, SITE)
    assert (out @ direction).abs().max() < 1e-4
    orth = resid - (resid @ direction)[..., None] * direction
    torch.testing.assert_close(out, orth, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_bad_activations_name_the_defense_and_the_site(defenses, name):
    defense = defenses[name]
    site = defense.sites[0]
    nan = _resid()
    nan[1, 2, 3] = float("nan")
    with pytest.raises(ToolkitError, match=rf"'{name}' at '{site}'.*NaN"):
        defense.edit(nan, site)
    with pytest.raises(ToolkitError, match=rf"'{name}' at '{site}'.*width 9"):
        defense.edit(torch.randn(2, 3, 9), site)


def test_bad_config_values_are_rejected(saes, calibs):
    configs = working_configs()
    cases = [
        ("clamp", dict(mode="add")),
        ("error_norm", dict(quantile=1.5)),
        ("error_subspace", dict(energy=0.0)),
        ("error_ellipsoid", dict(scale=0.0)),
        ("closed_loop", dict(mode="add")),
        ("error_monitor", dict(action="shout")),
        ("direction_ablation", dict(strength=2.0)),
    ]
    for name, change in cases:
        calib = None if name in ("clamp", "closed_loop") else calibs[name]
        with pytest.raises(ToolkitError, match=f"'{name}'"):
            build_defense(dataclasses.replace(configs[name], **change), saes, calib)
