"""The defense registry: one ``DefenseSpec`` per defense name (``guard.spec``).

The built-in defenses register their module's ``SPEC`` below; a user's defense registers
its own with ``register_defense``, and then every suite, utility table and self-test sees it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from guard import (
    bottleneck,
    clamp,
    closed_loop,
    direction,
    ellipsoid,
    error_dropout,
    error_norm,
    gated_clamp,
    monitor,
    splice,
    subspace,
)
from guard.base import Defense, DefenseConfig
from guard.calibration import Calibration
from guard.errors import ToolkitError
from guard.named import Registry
from guard.named import config_from_dict as _config_from_dict
from guard.spec import CalibrationData, DefenseSpec, Features

DEFENSES: Registry[DefenseSpec] = Registry("defense")


def register_defense(spec: DefenseSpec, *, replace: bool = False) -> DefenseSpec:
    """Register a defense under its config's ``name`` (a second one of that name is an error)."""
    if not isinstance(spec, DefenseSpec):
        raise ToolkitError(f"register_defense: expected a guard.DefenseSpec, got {type(spec).__name__}")
    return DEFENSES.add(spec.name, spec, replace=replace)


def config_from_dict(data: Mapping[str, Any]) -> DefenseConfig:
    return _config_from_dict(DEFENSES, data)


def build_defense(config: DefenseConfig, saes: Mapping[str, object] | None = None,
                  calibration: Calibration | None = None) -> Defense:
    """The registered defense for ``config``; ``calibration`` overrides ``config.calibration``."""
    defense_cls = DEFENSES[config.name].defense
    if calibration is None:
        return defense_cls(config, saes)
    return defense_cls(config, saes, calibration=calibration)


def needs_calibration(names: Sequence[str]) -> bool:
    return any(DEFENSES[name].calibrate is not None for name in names)


def build_defaults(names: Sequence[str], saes: Mapping[str, object], features: Features, sites: Sequence[str],
                   folder: str | Path, data: CalibrationData | Callable[[], CalibrationData] | None = None,
                   clamp: Mapping[str, Any] | None = None,
                   saved: Mapping[str, str | Path] | None = None) -> dict[str, Defense]:
    """Each named defense at its spec's default config on ``features`` (``sites``: where one without
    features acts). A defense that calibrates is fitted on ``data`` (or on what the callable returns,
    called once and only if some defense needs it), its calibration saved to ``folder/<name>`` and read
    back through the config, so what runs is exactly what was saved; ``saved`` maps a defense to a
    calibration folder saved earlier from the same data, read instead of fitting. ``clamp`` (``mode``,
    ``value``) replaces how the clamp edits its latents in every config that has those fields."""
    specs = [DEFENSES[name] for name in names]
    saved = dict(saved or {})
    if callable(data) and needs_calibration([n for n in names if n not in saved]):
        data = data()
    out = {}
    for spec in specs:
        calibration = ""
        if spec.calibrate is not None and spec.name in saved:
            calibration = str(saved[spec.name])
        elif spec.calibrate is not None:
            if not isinstance(data, CalibrationData):
                raise ToolkitError(f"defense {spec.name!r} needs calibration data (guard.CalibrationData)")
            calibration = str(spec.calibrate(data).save(Path(folder) / spec.name))
        config = spec.default_config(features, tuple(sites), calibration)
        fields = {f.name for f in dataclasses.fields(config)}
        config = dataclasses.replace(config, **{k: v for k, v in (clamp or {}).items() if k in fields})
        out[spec.name] = build_defense(config, saes)
    return out


for _module in (clamp, gated_clamp, splice, bottleneck, error_norm, subspace, ellipsoid, error_dropout, closed_loop,
                monitor, direction):
    register_defense(_module.SPEC)
