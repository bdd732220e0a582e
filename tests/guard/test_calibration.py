"""Calibration is explicit data: saved as a folder, loaded back, validated with clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from guard.calibration import Calibration, collect_resid, last_token_resid, load_calibration
from guard.direction import DirectionCalibration, calibrate_directions
from guard.error_norm import ErrorNormCalibration, calibrate_error_norms
from guard.errors import ToolkitError
from guard.registry import build_defense
from guard.subspace import calibrate_error_subspace
from tests.guard_cases import SITES, benign_data, calibrations, working_configs
from tests.helpers import tiny_sae, tiny_tokens


@pytest.fixture(scope="module")
def saes():
    return {site: tiny_sae("standard", seed=30 + i) for i, site in enumerate(SITES)}


@pytest.fixture(scope="module")
def calibs(saes):
    return calibrations(saes)


def _equal(a: Calibration, b: Calibration) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict) and all(isinstance(v, torch.Tensor) for v in x.values()):
            assert x.keys() == y.keys(), f.name
            for site in x:
                torch.testing.assert_close(x[site], y[site])
        else:
            assert x == y, f.name


def test_every_calibration_round_trips_through_its_folder(calibs, tmp_path):
    for key, calib in calibs.items():
        folder = calib.save(tmp_path / key)
        assert sorted(p.name for p in folder.iterdir()) == ["calibration.json", "calibration.safetensors"]
        _equal(load_calibration(folder), calib)
        _equal(type(calib).load(folder), calib)


def test_config_pointing_at_a_folder_builds_the_same_defense(saes, calibs, tmp_path):
    resid = torch.randn(2, 5, 16)
    for name, config in working_configs().items():
        if name not in calibs:
            continue
        folder = calibs[name].save(tmp_path / name)
        in_memory = build_defense(config, saes, calibs[name])
        from_folder = build_defense(dataclasses.replace(config, calibration=str(folder)), saes)
        for site in in_memory.sites:
            torch.testing.assert_close(from_folder.edit(resid, site), in_memory.edit(resid, site))


def test_loading_the_wrong_kind_or_an_empty_folder_fails_clearly(calibs, tmp_path):
    calibs["direction_ablation"].save(tmp_path / "dir")
    with pytest.raises(ToolkitError, match="kind 'direction', expected 'error_norm'"):
        ErrorNormCalibration.load(tmp_path / "dir")
    with pytest.raises(ToolkitError, match="no calibration"):
        load_calibration(tmp_path / "missing")
    with pytest.raises(ToolkitError, match="needs a ErrorNormCalibration"):
        build_defense(working_configs()["error_norm"], {s: tiny_sae() for s in SITES}, calibs["direction_ablation"])


@pytest.mark.parametrize("calibrate", [calibrate_error_norms, calibrate_error_subspace])
def test_calibration_data_of_the_wrong_width_or_nan_names_defense_and_site(saes, calibrate):
    site = SITES[1]
    bad_width = {site: torch.randn(20, 7)}
    with pytest.raises(ToolkitError, match=rf"'error_\w+' at '{site}'.*\[n, 16\]"):
        calibrate(saes, bad_width)
    nan = {site: torch.randn(20, 16)}
    nan[site][3, 2] = float("nan")
    with pytest.raises(ToolkitError, match=rf"at '{site}'.*NaN"):
        calibrate(saes, nan)
    with pytest.raises(ToolkitError, match="unknown SAE site 'blocks.9.hook_resid_post'"):
        calibrate(saes, {"blocks.9.hook_resid_post": torch.randn(20, 16)})


def test_direction_calibration_checks_its_inputs():
    beh = benign_data(8, seed=1)
    with pytest.raises(ToolkitError, match="different sites"):
        calibrate_directions(beh, {SITES[0]: beh[SITES[0]]})
    with pytest.raises(ToolkitError, match="same mean"):
        calibrate_directions(beh, beh)
    contrast = {s: x + 1 for s, x in beh.items()}
    calib = calibrate_directions(beh, contrast, max_rank=3)
    assert isinstance(calib, DirectionCalibration)
    for site, d in calib.directions.items():
        assert d.shape[1] == 3  # orthonormal, the difference of means first
        torch.testing.assert_close(d.T @ d, torch.eye(3), atol=1e-5, rtol=0)
        mean_diff = beh[site].mean(0) - contrast[site].mean(0)
        torch.testing.assert_close(d[:, 0], mean_diff / mean_diff.norm(), atol=1e-5, rtol=0)
    with pytest.raises(ToolkitError, match="max_rank"):
        calibrate_directions(beh, contrast, max_rank=0)


def test_defense_rejects_a_calibration_that_misses_a_site_or_width(saes, calibs):
    config = working_configs()["error_subspace"]
    partial = dataclasses.replace(calibs["error_subspace"], **{
        f: {SITES[0]: getattr(calibs["error_subspace"], f)[SITES[0]]}
        for f in ("mean", "components", "variance", "behaviour")})
    with pytest.raises(ToolkitError, match=f"'error_subspace'.*unknown calibrated site '{SITES[1]}'"):
        build_defense(config, saes, partial)
    narrow = {s: tiny_sae(d_in=8, seed=3) for s in SITES}
    with pytest.raises(ToolkitError, match=rf"'error_subspace' at '{SITES[0]}'.*width 16.*width 8"):
        build_defense(dataclasses.replace(config, features={s: () for s in SITES}), narrow, calibs["error_subspace"])


def test_collect_resid_leaves_out_position_zero_and_sinks(model):
    tokens = tiny_tokens(batch=2, pos=6)
    site = "blocks.0.hook_resid_post"
    _, cache = model.run_with_cache(tokens)
    got = collect_resid(model, tokens, [site], sink_ratio=None)[site]
    torch.testing.assert_close(got, cache[site][:, 1:].reshape(-1, 16))

    def make_sink(resid, hook):
        resid = resid.clone()
        resid[0, 3] *= 1000  # an artificial attention sink at a later position
        return resid

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", make_sink)]):
        kept = collect_resid(model, tokens, [site])[site]
    assert kept.shape == (2 * 5 - 1, 16)
    last = last_token_resid(model, [tokens[0], tokens[1, :4]], [site])[site]
    torch.testing.assert_close(last[0], cache[site][0, -1])
    assert last.shape == (2, 16)


def test_ellipsoid_calibration_covers_the_requested_share(calibs):
    calib = calibs["error_ellipsoid"]
    for site in SITES:
        assert 0.85 <= float(calib.achieved[site]) <= 1.0
        assert calib.basis[site].shape == (16, 4)
        torch.testing.assert_close(calib.basis[site].T @ calib.basis[site], torch.eye(4), atol=1e-5, rtol=0)


def test_features_of_residual_defenses_are_checked(saes, calibs):
    bad = {SITES[0]: (0, 32)}
    for name, config in working_configs().items():
        if name == "direction_ablation":
            continue
        key = "error_norm" if name == "error_monitor" else name
        calib = calibs.get(key) if name != "closed_loop" else None
        with pytest.raises(ToolkitError, match=rf"'{name}' at '{SITES[0]}': feature ids \[32\] out of range"):
            build_defense(dataclasses.replace(config, features=bad), saes, calib)
        with pytest.raises(ToolkitError, match=rf"'{name}'.*unknown SAE site 'blocks.7.hook_resid_post'"):
            build_defense(dataclasses.replace(config, features={"blocks.7.hook_resid_post": (1,)}), saes, calib)
