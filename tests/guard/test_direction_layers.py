"""The direction ablation's utility filter over layers (``guard.direction.select_layers``)."""

from __future__ import annotations

import pytest
import torch

from guard.direction import (
    DirectionAblation,
    DirectionCalibration,
    DirectionConfig,
    calibrate_directions,
    every_layer,
    select_layers,
)
from guard.errors import ToolkitError
from guard.utility import measure_utility
from tests.helpers import tiny_model, tiny_tokens


@pytest.fixture(scope="module")
def world():
    model = tiny_model(n_layers=4, seed=3)
    sites = every_layer(model)
    gen = torch.Generator().manual_seed(0)
    width = model.cfg.d_model
    # a behaviour mean far from the contrast's along a different random axis per layer
    behaviour = {s: torch.randn(6, width, generator=gen) + 4 * torch.randn(width, generator=gen) for s in sites}
    contrast = {s: torch.randn(6, width, generator=gen) for s in sites}
    tokens = tiny_tokens(batch=4, pos=12, seed=1)
    return model, calibrate_directions(behaviour, contrast), tokens


def _cost(model, calib, sites, tokens) -> float:
    ablate = DirectionAblation(DirectionConfig(sites=tuple(sites)), calibration=calib)
    return measure_utility(model, ablate, tokens).delta_ce


def test_kept_layers_fit_the_budget_alone_and_together(world):
    model, calib, tokens = world
    single = {s: _cost(model, calib, [s], tokens) for s in calib.sites}
    budget = sorted(single.values())[2]  # between the layers' own costs: at least one is left out
    picked = select_layers(model, calib, tokens, budget)
    assert picked.layer_delta_ce == pytest.approx(single, abs=1e-9) and picked.max_delta_ce == budget
    kept = picked.sites
    assert kept and all(single[s] <= budget for s in kept) and len(kept) < len(calib.sites)
    assert picked.delta_ce == pytest.approx(_cost(model, calib, kept, tokens), abs=1e-9) and picked.delta_ce <= budget
    for site in kept:
        torch.testing.assert_close(picked.directions[site], calib.directions[site])
    ranked = sorted((s for s in single if single[s] <= budget), key=single.__getitem__)
    assert set(kept) == set(ranked[: len(kept)])  # the cheapest first
    if len(kept) < len(ranked):  # the next one would break the joint budget
        assert _cost(model, calib, ranked[: len(kept) + 1], tokens) > budget
    # a budget no layer exceeds keeps them all; a DirectionAblation built on the result acts only there
    everything = select_layers(model, calib, tokens, max(single.values()) + 10.0)
    assert everything.sites == calib.sites
    assert DirectionAblation(DirectionConfig(), calibration=picked).sites == kept


def test_a_budget_no_layer_meets_keeps_the_cheapest_with_a_warning(world):
    model, calib, tokens = world
    single = {s: _cost(model, calib, [s], tokens) for s in calib.sites}
    costly = {s: d for s, d in calib.directions.items() if single[s] > 0}  # (a random model: some help)
    assert costly
    with pytest.warns(UserWarning, match="no layer's ablation costs <= .*keeping the cheapest"):
        kept = select_layers(model, DirectionCalibration(directions=costly), tokens, min(single[s] for s in costly) / 2)
    assert kept.sites == (min(costly, key=single.__getitem__),)
    with pytest.raises(ToolkitError, match="max_delta_ce must be > 0"):
        select_layers(model, calib, tokens, 0.0)


def test_the_selection_survives_save_and_load(world, tmp_path):
    model, calib, tokens = world
    picked = select_layers(model, calib, tokens, 1e6)
    loaded = type(picked).load(picked.save(tmp_path / "dir"))
    assert loaded.layer_delta_ce == pytest.approx(picked.layer_delta_ce) and loaded.delta_ce == picked.delta_ce
    assert loaded.sites == picked.sites
