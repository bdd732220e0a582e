"""Config + class + registry: every registered variant round-trips through dict and JSON."""

from __future__ import annotations

import json

import pytest

from guard.errors import ToolkitError
from guard.registry import DEFENSES, build_defense, config_from_dict
from tests.guard_cases import identity_configs, working_configs


def _all_configs():
    cases = []
    for name, spec in sorted(DEFENSES.items()):
        cases.append(pytest.param(spec.config(), id=f"{name}-default"))
    for label, configs in (("working", working_configs()), ("identity", identity_configs())):
        cases.extend(pytest.param(cfg, id=f"{name}-{label}") for name, cfg in configs.items())
    return cases


@pytest.mark.parametrize("config", _all_configs())
def test_config_round_trip(config):
    data = config.to_dict()
    assert data["name"] == config.name
    assert config_from_dict(data) == config
    assert config_from_dict(json.loads(json.dumps(data))) == config  # lists come back as tuples


def test_every_registered_variant_has_test_cases():
    assert set(working_configs()) == set(DEFENSES) == set(identity_configs())
    for name, spec in DEFENSES.items():
        assert spec.config.name == name == spec.name


def test_unknown_defense_name_lists_close_names():
    with pytest.raises(ToolkitError, match="error_norm"):
        config_from_dict({"name": "error_nrom"})
    with pytest.raises(ToolkitError, match="splice.*bogus"):
        config_from_dict({"name": "splice", "bogus": 1})


def test_uncalibrated_defense_says_what_it_needs(model):
    from tests.helpers import tiny_sae

    saes = {"blocks.0.hook_resid_post": tiny_sae()}
    config = config_from_dict({"name": "error_norm", "features": {"blocks.0.hook_resid_post": [1]}})
    with pytest.raises(ToolkitError, match="'error_norm' needs a calibration"):
        build_defense(config, saes)


def test_build_defaults_edits_the_clamps_latents_as_the_clamp_does(tmp_path):
    from guard.registry import build_defaults
    from guard.spec import CalibrationData
    from tests.guard_cases import SITES
    from tests.helpers import tiny_model, tiny_sae, tiny_tokens

    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=i) for i, site in enumerate(SITES)}
    features, clamp = {SITES[0]: (1, 2)}, {"mode": "multiply", "value": -4.0}
    data = CalibrationData.collect(model, saes, (SITES[0],), tiny_tokens(4, 8, seed=1), list(tiny_tokens(3, 5, seed=2)),
                                   list(tiny_tokens(3, 5, seed=3)), features, clamp=clamp)
    # the closed loop's calibration runs the clamp: built with another mode or value it would be refused
    built = build_defaults(["clamp", "splice", "closed_loop"], saes, features, (SITES[0],), tmp_path, data,
                           clamp=clamp)
    assert {name: (d.config.mode, d.config.value) for name, d in built.items()} == dict.fromkeys(
        ("clamp", "splice", "closed_loop"), ("multiply", -4.0))
