"""One registry of defense variants: config class + defense class, keyed by config ``name``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from guard.base import Defense, DefenseConfig
from guard.calibration import Calibration
from guard.clamp import ClampConfig, FeatureClamp
from guard.closed_loop import ClosedLoopClamp, ClosedLoopConfig
from guard.direction import DirectionAblation, DirectionConfig
from guard.ellipsoid import EllipsoidConfig, EllipsoidGuard
from guard.error_norm import ErrorNormBound, ErrorNormConfig
from guard.errors import ToolkitError, unknown_name
from guard.monitor import ErrorMonitor, ErrorMonitorConfig
from guard.splice import ReconstructionSplice, SpliceConfig
from guard.subspace import ErrorSubspaceConfig, ErrorSubspaceProjection

DEFENSES: dict[str, tuple[type[DefenseConfig], type[Defense]]] = {}


def register(config_cls: type[DefenseConfig], defense_cls: type[Defense]) -> None:
    DEFENSES[config_cls.name] = (config_cls, defense_cls)


def config_from_dict(data: dict[str, Any]) -> DefenseConfig:
    data = dict(data)
    name = data.pop("name")
    if name not in DEFENSES:
        raise unknown_name("defense", name, DEFENSES.keys())
    try:
        return DEFENSES[name][0](**data)
    except TypeError as exc:
        raise ToolkitError(f"defense {name!r}: bad config fields: {exc}") from exc


def build_defense(config: DefenseConfig, saes: Mapping[str, object] | None = None,
                  calibration: Calibration | None = None) -> Defense:
    """The registered defense for ``config``; ``calibration`` overrides ``config.calibration``."""
    if config.name not in DEFENSES:
        raise unknown_name("defense", config.name, DEFENSES.keys())
    defense_cls = DEFENSES[config.name][1]
    if calibration is None:
        return defense_cls(config, saes)
    return defense_cls(config, saes, calibration=calibration)


register(ClampConfig, FeatureClamp)
register(SpliceConfig, ReconstructionSplice)
register(ErrorNormConfig, ErrorNormBound)
register(ErrorSubspaceConfig, ErrorSubspaceProjection)
register(EllipsoidConfig, EllipsoidGuard)
register(ClosedLoopConfig, ClosedLoopClamp)
register(ErrorMonitorConfig, ErrorMonitor)
register(DirectionConfig, DirectionAblation)
