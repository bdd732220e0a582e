"""The setting registry: config class + setting class (a ``guard.named.Variant``) by config ``name``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from experiments.settings.base import Setting, SettingConfig
from experiments.settings.ioi import IOIConfig, IOISetting
from experiments.settings.recall import RecallConfig, RecallSetting
from experiments.settings.unlearning import UnlearningConfig, UnlearningSetting
from guard.named import Registry, Variant
from guard.named import config_from_dict as _config_from_dict

SETTINGS: Registry[Variant] = Registry("setting")


def register_setting(config_cls: type[SettingConfig], setting_cls: type[Setting], *, replace: bool = False) -> None:
    SETTINGS.add(config_cls.name, Variant(config_cls, setting_cls), replace=replace)


def config_from_dict(data: Mapping[str, Any]) -> SettingConfig:
    """Inverse of ``SettingConfig.to_dict`` (lists come back as tuples)."""
    return _config_from_dict(SETTINGS, data)


def get_setting(name: str, **overrides: Any) -> Setting:
    """A setting by name, its config built from defaults plus ``overrides``."""
    return setting_from_config(config_from_dict({"name": name, **overrides}))


def setting_from_config(config: SettingConfig) -> Setting:
    return SETTINGS[config.name].impl(config)


register_setting(IOIConfig, IOISetting)
register_setting(RecallConfig, RecallSetting)
register_setting(UnlearningConfig, UnlearningSetting)
