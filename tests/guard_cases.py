"""Every registered defense built on tiny random SAEs with calibrations fitted on random data.

Shared by the tests/test_guard_*.py files: ``calibrations(saes)`` fits each calibration once,
``build_all(saes, calibs)`` gives {name: defense} at working settings, ``build_identity``
gives each defense at a setting that edits nothing.
"""

from __future__ import annotations

import torch

from guard.clamp import ClampConfig
from guard.closed_loop import ClosedLoopCalibration, ClosedLoopConfig
from guard.direction import DirectionConfig, calibrate_directions
from guard.ellipsoid import EllipsoidConfig, calibrate_ellipsoid
from guard.error_norm import ErrorNormConfig, calibrate_error_norms
from guard.monitor import ErrorMonitorConfig
from guard.registry import DEFENSES, build_defense
from guard.splice import SpliceConfig
from guard.subspace import ErrorSubspaceConfig, calibrate_error_subspace
from tests.helpers import D_MODEL

SITES = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
FEATURES = {SITES[0]: (1, 4, 7), SITES[1]: (0, 5)}


def benign_data(n: int = 64, seed: int = 0, sites=SITES, d: int = D_MODEL, scale: float = 1.0) -> dict:
    """Random 'benign' activations {site: [n, d]}: anisotropic Gaussian, so PCA has structure."""
    gen = torch.Generator().manual_seed(seed)
    spread = torch.linspace(2.0, 0.1, d)
    return {s: (torch.randn(n, d, generator=gen) * spread + 0.5) * scale for s in sites}


def calibrations(saes, seed: int = 0) -> dict:
    """One calibration of each kind, fitted on random data (n > d, so PCA is full rank)."""
    benign = benign_data(seed=seed)
    behaviour = benign_data(16, seed + 1)
    contrast = {s: x - 1.0 for s, x in benign_data(16, seed + 2).items()}
    # the closed-loop echo comes from a model run; a hand-made one keeps these cases model-free
    echo = ClosedLoopCalibration(features={SITES[1]: torch.tensor([9, 11])}, scores={SITES[1]: torch.tensor([0.5, 0.2])},
                                 source={SITES[0]: list(FEATURES[SITES[0]])})
    return {
        "error_norm": calibrate_error_norms(saes, benign),
        "error_subspace": calibrate_error_subspace(saes, benign, behaviour_resid=behaviour, contrast_resid=contrast),
        "error_ellipsoid": calibrate_ellipsoid(saes, benign, rank=4, coverage=0.9),
        "closed_loop": echo,
        "direction_ablation": calibrate_directions(behaviour, contrast),
    }


def working_configs() -> dict:
    """Each registered defense at settings that edit (quantiles low enough to bite on random data)."""
    return {
        "clamp": ClampConfig(features=FEATURES, mode="multiply", value=0.3),
        "splice": SpliceConfig(features=FEATURES),
        "error_norm": ErrorNormConfig(features=FEATURES, quantile=0.3),
        "error_subspace": ErrorSubspaceConfig(features=FEATURES, rank=5),
        "error_ellipsoid": EllipsoidConfig(features=FEATURES),
        "closed_loop": ClosedLoopConfig(features={SITES[0]: FEATURES[SITES[0]]}),
        "error_monitor": ErrorMonitorConfig(features=FEATURES, quantile=0.5),
        "direction_ablation": DirectionConfig(),
    }


def identity_configs() -> dict:
    """Each registered defense at a setting that edits nothing (identity Jacobian expected)."""
    empty = {s: () for s in SITES}
    return {
        "clamp": ClampConfig(features=FEATURES, mode="multiply", value=1.0),
        "splice": SpliceConfig(features=empty, error_scale=1.0),
        "error_norm": ErrorNormConfig(features=empty, threshold_scale=1e6),
        "error_subspace": ErrorSubspaceConfig(features=empty, rank=D_MODEL, remove_behaviour=False),
        "error_ellipsoid": EllipsoidConfig(features=empty, scale=1e6, keep_complement=True),
        "closed_loop": ClosedLoopConfig(features=FEATURES, mode="multiply", value=1.0),
        "error_monitor": ErrorMonitorConfig(features=empty),
        "direction_ablation": DirectionConfig(strength=0.0),
    }


def build(configs: dict, saes, calibs: dict) -> dict:
    missing = set(DEFENSES) - set(configs)
    assert not missing, f"test cases lack registered defenses {missing}"
    return {name: build_defense(cfg, saes, calibs.get(name if name != "error_monitor" else "error_norm"))
            for name, cfg in configs.items()}


def build_all(saes, calibs: dict) -> dict:
    return build(working_configs(), saes, calibs)


def build_identity(saes, calibs: dict) -> dict:
    # the closed-loop echo was calibrated for another clamp; the identity case runs without one
    return build(identity_configs(), saes, {k: v for k, v in calibs.items() if k != "closed_loop"})
