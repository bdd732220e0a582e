"""One registry of settings: config class + setting class, keyed by config ``name``."""

from __future__ import annotations

from typing import Any

from experiments.settings.base import Setting, SettingConfig
from experiments.settings.ioi import IOIConfig, IOISetting
from experiments.settings.recall import RecallConfig, RecallSetting
from guard.errors import ToolkitError, unknown_name

SETTINGS: dict[str, tuple[type[SettingConfig], type[Setting]]] = {}


def register(config_cls: type[SettingConfig], setting_cls: type[Setting]) -> None:
    SETTINGS[config_cls.name] = (config_cls, setting_cls)


def _lookup(name: str) -> tuple[type[SettingConfig], type[Setting]]:
    if name not in SETTINGS:
        raise unknown_name("setting", name, SETTINGS.keys())
    return SETTINGS[name]


def config_from_dict(data: dict[str, Any]) -> SettingConfig:
    """Inverse of ``SettingConfig.to_dict`` (lists come back as tuples)."""
    data = dict(data)
    if "name" not in data:
        raise ToolkitError(f"setting config {data}: missing 'name'")
    config_cls, _ = _lookup(data.pop("name"))
    try:
        return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except TypeError as err:
        raise ToolkitError(f"setting {config_cls.name!r}: bad config fields ({err})") from None


def get_setting(name: str, **overrides: Any) -> Setting:
    """A setting by name, its config built from defaults plus ``overrides``."""
    return setting_from_config(config_from_dict({"name": name, **overrides}))


def setting_from_config(config: SettingConfig) -> Setting:
    _, setting_cls = _lookup(config.name)
    return setting_cls(config)


register(IOIConfig, IOISetting)
register(RecallConfig, RecallSetting)
