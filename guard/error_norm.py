"""Error norm bound: shrink the SAE error to a norm benign text does not exceed.

Source: our residual-aware candidate (docs/METHOD.md section 6): recovery perturbations land
mostly in the SAE error (Cui, Shen, Yang, arXiv 2606.18322), so bounding ``||error||`` per
token to a benign quantile limits how much an attacker can push through that channel
while leaving ordinary tokens (below the bound) exactly untouched.

``T(error) = error * min(1, tau_site / ||error||)`` with ``tau_site = threshold_scale *
quantile_q(benign ||error|| at site)``. Calibrate once with ``calibrate_error_norms``; the
calibration keeps the sorted benign norms, so any quantile can be chosen later.

Threat model: none (a defense). Shapes: resid [batch, pos, d_model]; benign activations
{site: [n, d_model]} (position 0 and sinks excluded, see ``guard.calibration.collect_resid``).

Example::

    calib = calibrate_error_norms(saes, collect_resid(model, benign_tokens, saes))
    calib.save("calib/error_norm")
    bound = ErrorNormBound(ErrorNormConfig(features={site: (5, 17)}, calibration="calib/error_norm"), saes)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from guard.calibration import Calibration
from guard.errors import ToolkitError
from guard.residual import ResidualConfig, ResidualDefense, benign_errors
from guard.spec import CalibrationData, DefenseSpec, Sweep


@dataclass(frozen=True)
class ErrorNormCalibration(Calibration):
    """Sorted benign SAE-error norms per site: ``norms`` {site: [n]}."""

    kind = "error_norm"
    norms: dict[str, torch.Tensor]

    def threshold(self, site: str, quantile: float) -> float:
        return float(torch.quantile(self.norms[site].to(torch.float64), quantile))


def calibrate_error_norms(saes: Mapping[str, object], benign_resid: Mapping[str, torch.Tensor]) -> ErrorNormCalibration:
    """Benign error norms at every site of ``benign_resid`` ({site: [n, d_model]})."""
    errors = benign_errors(saes, benign_resid, defense="error_norm")
    return ErrorNormCalibration(norms={s: e.norm(dim=-1).sort().values.float() for s, e in errors.items()})


def check_quantile(q: float, defense: str) -> None:
    if not 0.0 < q <= 1.0:
        raise ToolkitError(f"defense {defense!r}: quantile must be in (0, 1], got {q}")


@dataclass(frozen=True)
class ErrorNormConfig(ResidualConfig):
    """Error norm bound: ``quantile`` of benign norms, times ``threshold_scale``; ``calibration`` folder."""

    name = "error_norm"
    quantile: float = 0.99
    threshold_scale: float = 1.0
    calibration: str = ""


class ErrorNormBound(ResidualDefense):
    """Shrinks the SAE error radially to a calibrated per-site norm; see the module docstring."""

    config: ErrorNormConfig

    def __init__(self, config: ErrorNormConfig, saes: Mapping[str, object],
                 calibration: ErrorNormCalibration | None = None) -> None:
        super().__init__(config, saes)
        check_quantile(config.quantile, config.name)
        self.calibration = self.calibrated(calibration, ErrorNormCalibration)
        # a zero bound (a perfect SAE on benign text) would divide 0 by 0
        self.thresholds = {site: max(config.threshold_scale * self.calibration.threshold(site, config.quantile),
                                     1e-12) for site in self.sites}

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        tau = self.thresholds[site]
        norms = error.norm(dim=-1, keepdim=True)
        return error * (tau / norms.clamp_min(tau))


def _calibrate(data: CalibrationData) -> ErrorNormCalibration:
    return calibrate_error_norms(data.saes_here(), data.benign, **data.options_for(ErrorNormConfig.name))


SPEC = DefenseSpec(ErrorNormConfig, ErrorNormBound,
                   calibrate=_calibrate,
                   selftest=lambda features: ErrorNormConfig(features=features, quantile=0.3),
                   sweep=Sweep("threshold_scale", (0.25, 0.5, 1.0)))
