"""The settings registry: every config survives a JSON round trip; names are checked."""

from __future__ import annotations

import json

import pytest

from experiments.settings import SETTINGS, Setting, config_from_dict, get_setting, setting_from_config
from experiments.settings.ioi import IOIConfig, IOISetting
from guard.errors import ToolkitError


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_config_round_trips_through_json(name):
    config_cls, setting_cls = SETTINGS[name].config, SETTINGS[name].impl
    config = config_cls()
    again = config_from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and type(again) is config_cls
    setting = setting_from_config(again)
    assert isinstance(setting, setting_cls) and isinstance(setting, Setting) and setting.name == name


def test_both_issue_settings_are_registered():
    assert {"ioi", "recall", "unlearning"} <= set(SETTINGS)


def test_overrides_and_errors():
    setting = get_setting("recall", n_latents=7, categories=["capital"], site="blocks.6.hook_resid_post")
    assert setting.config.n_latents == 7 and setting.config.categories == ("capital",)
    with pytest.raises(ToolkitError, match="Closest valid names: ioi"):
        get_setting("iio")
    with pytest.raises(ToolkitError, match="bad config fields"):
        get_setting("ioi", n_latent=3)
    with pytest.raises(ToolkitError, match="selection_positions"):
        get_setting("ioi", selection_positions="first")
    with pytest.raises(ToolkitError, match="IOIConfig"):
        IOISetting(config_from_dict({"name": "recall"}))
    assert IOISetting().config == IOIConfig()
