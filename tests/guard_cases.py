"""Every registered defense built on tiny random SAEs with calibrations fitted on random data.

Shared by the tests/guard/ files: ``calibrations(saes)`` fits each calibration once,
``build_all(saes, calibs)`` gives {name: defense} at working settings, ``build_identity``
gives each defense at a setting that edits nothing.
"""

from __future__ import annotations

# The tiny world (sites, features, random benign data, calibrations, working configs) lives in
# the library, so certify.selftest can verify the attack against the same defenses.
from certify.selftest import FEATURES, SITES, benign_data, calibrations, working_configs
from guard.bottleneck import BottleneckConfig
from guard.clamp import ClampConfig
from guard.closed_loop import ClosedLoopConfig
from guard.direction import DirectionConfig
from guard.ellipsoid import EllipsoidConfig
from guard.error_dropout import ErrorDropoutConfig
from guard.error_norm import ErrorNormConfig
from guard.gated_clamp import GatedClampConfig
from guard.monitor import ErrorMonitorConfig
from guard.registry import DEFENSES, build_defense
from guard.splice import SpliceConfig
from guard.subspace import ErrorSubspaceConfig
from tests.helpers import D_MODEL

__all__ = ["FEATURES", "SITES", "benign_data", "build", "build_all", "build_identity", "calibrations",
           "identity_configs", "working_configs"]


def identity_configs() -> dict:
    """Each registered defense at a setting that edits nothing (identity Jacobian expected)."""
    empty = {s: () for s in SITES}
    return {
        "clamp": ClampConfig(features=FEATURES, mode="multiply", value=1.0),
        "gated_clamp": GatedClampConfig(features=FEATURES, threshold_scale=1e6),
        "splice": SpliceConfig(features=empty, error_scale=1.0),
        "bottleneck": BottleneckConfig(features={SITES[0]: ()}, error_scale=1.0),
        "error_norm": ErrorNormConfig(features=empty, threshold_scale=1e6),
        "error_subspace": ErrorSubspaceConfig(features=empty, rank=D_MODEL, remove_behaviour=False),
        "error_ellipsoid": EllipsoidConfig(features=empty, scale=1e6, keep_complement=True),
        "error_dropout": ErrorDropoutConfig(features=empty, keep=1.0),
        "closed_loop": ClosedLoopConfig(features=FEATURES, mode="multiply", value=1.0),
        "error_monitor": ErrorMonitorConfig(features=empty),
        "direction_ablation": DirectionConfig(strength=0.0),
    }


def build(configs: dict, saes, calibs: dict) -> dict:
    missing = set(DEFENSES) - set(configs)
    assert not missing, f"test cases lack registered defenses {missing}"
    return {name: build_defense(cfg, saes, calibs.get(name)) for name, cfg in configs.items()}


def build_all(saes, calibs: dict) -> dict:
    return build(working_configs(), saes, calibs)


def build_identity(saes, calibs: dict) -> dict:
    # the closed-loop echo was calibrated for another clamp; the identity case runs without one
    return build(identity_configs(), saes, {k: v for k, v in calibs.items() if k != "closed_loop"})
