"""The gated clamp: fires at its calibrated benign rate, is the plain clamp where open and the
identity where closed, and gives the attacker a surrogate gate gradient only when asked."""

from __future__ import annotations

import pytest
import torch

from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.gated_clamp import GatedClamp, GatedClampConfig, calibrate_gate, gate_scores
from guard.sae_ops import encode, straight_through
from tests.guard_cases import FEATURES, SITES, benign_data
from tests.helpers import tiny_sae

SITE = SITES[0]


@pytest.fixture(scope="module")
def saes():
    return {site: tiny_sae("jumprelu", seed=60 + i) for i, site in enumerate(SITES)}


@pytest.fixture(scope="module")
def calib(saes):
    return calibrate_gate(saes, benign_data(n=2000, seed=3), FEATURES)


def _gated(saes, calib, **kw) -> GatedClamp:
    return GatedClamp(GatedClampConfig(features=FEATURES, **kw), saes, calib)


@pytest.mark.parametrize("rate", [0.02, 0.1, 0.5])
def test_gate_fires_on_the_calibrated_share_of_benign_tokens(saes, calib, rate):
    defense = _gated(saes, calib, benign_rate=rate)
    fitted = benign_data(n=2000, seed=3)[SITE][:, None, :]  # [n, 1, d]: sinks never arise from one token
    held_out = benign_data(n=4000, seed=4)[SITE][:, None, :]
    on_fit = float(defense.gate_open(fitted, SITE).mean())
    assert abs(on_fit - rate) <= 1 / 2000 + 1e-9  # the quantile itself, up to one tie
    on_held_out = float(defense.gate_open(held_out, SITE).mean())
    assert abs(on_held_out - rate) < 4 * (rate * (1 - rate) / 4000) ** 0.5 + 1 / 2000


def test_open_tokens_get_the_plain_clamp_and_closed_tokens_nothing(saes, calib):
    defense = _gated(saes, calib, benign_rate=0.3, mode="multiply", value=0.2)
    clamp = FeatureClamp(ClampConfig(features=FEATURES, mode="multiply", value=0.2), saes)
    resid = benign_data(n=60, seed=5)[SITE].reshape(3, 20, -1)
    out, plain = defense.edit(resid, SITE), clamp.edit(resid, SITE)
    gate = defense.gate_open(resid, SITE).bool()
    assert 0 < int(gate.sum()) < gate.numel(), "the test needs open and closed tokens"
    torch.testing.assert_close(out[gate], plain[gate])
    torch.testing.assert_close(out[~gate], resid[~gate], rtol=0, atol=0)
    assert not torch.allclose(out[gate], resid[gate])


def test_a_separate_gate_decides_where_the_clamp_acts(saes):
    gate = {SITE: (2, 3, 9, 11)}
    calib = calibrate_gate(saes, benign_data(n=2000, seed=3), gate)
    defense = GatedClamp(GatedClampConfig(features={SITE: FEATURES[SITE]}, gate=gate, benign_rate=0.3), saes, calib)
    resid = benign_data(n=60, seed=5)[SITE][None]
    expected = gate_scores(encode(saes[SITE], resid)[..., list(gate[SITE])], calib.scales[SITE]) > defense.thresholds[SITE]
    assert torch.equal(defense.gate_open(resid, SITE).bool(), expected)


def test_the_attacker_sees_the_surrogate_gate_gradient_only_inside_straight_through(saes, calib):
    saes_64 = {site: tiny_sae("jumprelu", seed=60 + i, dtype=torch.float64) for i, site in enumerate(SITES)}
    defense_64 = GatedClamp(GatedClampConfig(features=FEATURES, benign_rate=0.3, surrogate_width=0.7), saes_64, calib)
    resid = benign_data(n=12, seed=6)[SITE].reshape(2, 6, -1).double().requires_grad_(True)
    assert not defense_64.gate_open(resid, SITE).requires_grad  # exact gate: piecewise constant
    with straight_through():
        gate = defense_64.gate_open(resid, SITE)
        scores = gate_scores(encode(defense_64.saes[SITE], resid)[..., defense_64.gate[SITE]], calib.scales[SITE])
        surrogate = torch.sigmoid((scores - defense_64.thresholds[SITE]) / 0.7)
        weights = torch.randn(gate.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        (got,) = torch.autograd.grad((gate * weights).sum(), resid, retain_graph=True)
        (want,) = torch.autograd.grad((surrogate * weights).sum(), resid)
    assert torch.equal(gate.detach(), defense_64.gate_open(resid.detach(), SITE))  # forward unchanged
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, want)


def test_calibration_round_trip_and_mismatched_gates_are_refused(saes, calib, tmp_path):
    folder = calib.save(tmp_path / "gate")
    from_folder = GatedClamp(GatedClampConfig(features=FEATURES, calibration=str(folder)), saes)
    resid = benign_data(n=30, seed=7)[SITE][None]
    torch.testing.assert_close(from_folder.edit(resid, SITE), _gated(saes, calib).edit(resid, SITE))
    with pytest.raises(ToolkitError, match="fitted for gate"):
        GatedClamp(GatedClampConfig(features=FEATURES, gate={SITE: (0,), SITES[1]: (1,)}), saes, calib)
    with pytest.raises(ToolkitError, match="exactly the clamp's sites"):
        GatedClamp(GatedClampConfig(features=FEATURES, gate={SITE: (0,)}), saes, calib)
    with pytest.raises(ToolkitError, match="benign_rate"):
        _gated(saes, calib, benign_rate=1.0)
    with pytest.raises(ToolkitError, match="needs a calibration"):
        GatedClamp(GatedClampConfig(features=FEATURES), saes)
