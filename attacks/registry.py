"""One registry of attack variants: config class + attack class, keyed by config ``name``."""

from __future__ import annotations

from typing import Any

from attacks.baselines import RandomSearch, RandomSearchConfig
from attacks.engine import AttackConfig, GradientRecovery, RecoveryAttack
from guard.errors import unknown_name

ATTACKS: dict[str, tuple[type[AttackConfig], type[RecoveryAttack]]] = {}


def register(config_cls: type[AttackConfig], attack_cls: type[RecoveryAttack]) -> None:
    ATTACKS[config_cls.name] = (config_cls, attack_cls)


def attack_config_from_dict(data: dict[str, Any]) -> AttackConfig:
    data = dict(data)
    name = data.pop("name")
    if name not in ATTACKS:
        raise unknown_name("attack", name, ATTACKS.keys())
    return ATTACKS[name][0](**data)


def make_attack(config: AttackConfig, model, defense, threat, objective) -> RecoveryAttack:
    """The attack a config names, bound to a model, defense, threat model and objective."""
    if config.name not in ATTACKS:
        raise unknown_name("attack", config.name, ATTACKS.keys())
    return ATTACKS[config.name][1](model, defense, threat, objective, config)


register(AttackConfig, GradientRecovery)
register(RandomSearchConfig, RandomSearch)
