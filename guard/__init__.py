"""Defenses: plain SAE feature clamping and residual-aware defenses, as TransformerLens hooks.

What a user's file imports::

    from guard import ResidualConfig, ResidualDefense, DefenseSpec, register_defense

    @dataclass(frozen=True)
    class MyConfig(ResidualConfig):
        name = "my_defense"

    class MyDefense(ResidualDefense):
        def transform_error(self, error, site, keep): ...

    register_defense(DefenseSpec(MyConfig, MyDefense, selftest=lambda features: MyConfig(features=features)))

after which every certify suite, the utility table and the attack unit tests include it.

Modules: ``base`` (interface, composition), ``clamp`` (baseline), ``gated_clamp`` (the clamp
where a gate fires), ``residual`` (clamp + error transform), ``splice``, ``bottleneck`` (splices at several layers), ``error_norm``,
``subspace``, ``ellipsoid``, ``error_dropout`` (randomized), ``closed_loop``, ``monitor``, ``direction`` (dense comparator),
``calibration`` (saved calibration folders, benign activation collection), ``spec`` (one
``DefenseSpec`` per defense), ``registry`` (``DEFENSES``, ``build_defense``, ``build_defaults``),
``named`` (the ``Registry`` type), ``utility`` (CE / KL cost of a defense).
"""

from guard.base import DefendedLatents, Defense, DefenseConfig
from guard.calibration import Calibration, collect_resid, last_token_resid, load_calibration
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.named import Registry
from guard.registry import DEFENSES, build_defaults, build_defense, config_from_dict, register_defense
from guard.residual import ResidualConfig, ResidualDefense
from guard.spec import CalibrationData, DefenseSpec, Sweep
from guard.utility import measure_utility, measure_utility_many

__all__ = [
    "DEFENSES", "CalibrationData", "Calibration", "ClampConfig", "DefendedLatents", "Defense", "DefenseConfig",
    "DefenseSpec", "FeatureClamp", "Registry", "ResidualConfig", "ResidualDefense", "Sweep", "ToolkitError",
    "build_defaults", "build_defense", "collect_resid", "config_from_dict", "last_token_resid",
    "load_calibration", "measure_utility", "measure_utility_many", "register_defense",
]
