"""The attack registry: config class + attack class (a ``guard.named.Variant``) by config ``name``.

A cascade stage (``attacks.runner.Stage``) names its attack class and config directly; the
registry turns a recorded stage config (run fingerprints, JSON) back into its config class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attacks.baselines import RandomSearch, RandomSearchConfig
from attacks.engine import AttackConfig, GradientRecovery, RecoveryAttack
from attacks.tokens import TokenConfig, TokenSearch
from guard.named import Registry, Variant
from guard.named import config_from_dict as _config_from_dict

ATTACKS: Registry[Variant] = Registry("attack")


def register_attack(config_cls: type[AttackConfig], attack_cls: type[RecoveryAttack], *,
                    replace: bool = False) -> None:
    ATTACKS.add(config_cls.name, Variant(config_cls, attack_cls), replace=replace)


def attack_config_from_dict(data: Mapping[str, Any]) -> AttackConfig:
    return _config_from_dict(ATTACKS, data)


register_attack(AttackConfig, GradientRecovery)
register_attack(RandomSearchConfig, RandomSearch)
register_attack(TokenConfig, TokenSearch)
