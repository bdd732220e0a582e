"""One registry of defense variants: config class + defense class, keyed by config ``name``."""

from __future__ import annotations

from typing import Any

from guard.base import Defense, DefenseConfig
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import unknown_name

DEFENSES: dict[str, tuple[type[DefenseConfig], type[Defense]]] = {}


def register(config_cls: type[DefenseConfig], defense_cls: type[Defense]) -> None:
    DEFENSES[config_cls.name] = (config_cls, defense_cls)


def config_from_dict(data: dict[str, Any]) -> DefenseConfig:
    data = dict(data)
    name = data.pop("name")
    if name not in DEFENSES:
        raise unknown_name("defense", name, DEFENSES.keys())
    return DEFENSES[name][0](**data)


register(ClampConfig, FeatureClamp)
