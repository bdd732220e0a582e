"""Ellipsoidal error guard: map the SAE error into an ellipsoid fitted to benign errors.

Source: our residual-aware candidate (docs/METHOD.md section 6); the fit is the classical
minimum-volume enclosing ellipsoid (a log-det convex program), solved with cvxpy.

Calibration (``calibrate_ellipsoid``), per site: centre the benign errors (mean ``mu``),
take the top ``rank`` PCA directions ``U`` [d, r], coordinates ``y = U^T (e - mu)``; drop the
``1 - coverage`` share of points with the largest whitened norm (Mahalanobis distance; this
trimming is a heuristic, not a minimum over subsets), keep at most ``max_points`` of the
outermost remaining points (the ellipsoid only depends on hull points), and solve

    maximise log det A   s.t.  ||A y_i + b|| <= 1,  A symmetric PSD

so the ellipsoid is ``{y : ||A (y - c)|| <= 1}``, ``c = -A^{-1} b``. The coverage actually
achieved on all calibration points is stored.

Defense: ``y' = c + (y - c) / max(1, ||A (y - c)|| / scale)`` (a radial retraction in the
ellipsoid's own metric, not the Euclidean nearest point), and
``T(e) = mu + U y' (+ the part of e - mu outside span U if keep_complement)``.

Threat model: none (a defense). Shapes: resid [batch, pos, d_model]; calibration data
{site: [n, d_model]}.

Example::

    calib = calibrate_ellipsoid(saes, benign, rank=16, coverage=0.99)
    guard = EllipsoidGuard(EllipsoidConfig(features={site: (5, 17)}), saes, calibration=calib)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from guard.calibration import Calibration
from guard.errors import ToolkitError
from guard.residual import ResidualConfig, ResidualDefense, benign_errors
from guard.spec import CalibrationData, DefenseSpec, Sweep


@dataclass(frozen=True)
class EllipsoidCalibration(Calibration):
    """Per site: ``mean`` [d], ``basis`` [d, r], ellipsoid ``shape`` A [r, r] and ``center`` c [r],
    ``achieved`` [1] (share of calibration errors inside); ``coverage`` the requested share."""

    kind = "error_ellipsoid"
    width_fields = ("mean", "basis")
    mean: dict[str, torch.Tensor]
    basis: dict[str, torch.Tensor]
    shape: dict[str, torch.Tensor]
    center: dict[str, torch.Tensor]
    achieved: dict[str, torch.Tensor]
    coverage: float = 0.99


def _fit_mvee(points: torch.Tensor, solver: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-volume ellipsoid {w: ||A w + b|| <= 1} covering ``points`` [n, r] (float64)."""
    import cvxpy as cp  # deferred: ~4 s to import, and only this fit needs it

    pts = points.numpy()
    r = pts.shape[1]
    shape = cp.Variable((r, r), PSD=True)
    offset = cp.Variable(r)
    constraints = [cp.norm(pts @ shape + np.ones((len(pts), 1)) @ offset[None, :], 2, axis=1) <= 1]
    problem = cp.Problem(cp.Maximize(cp.log_det(shape)), constraints)
    problem.solve(solver=solver)
    if problem.status not in ("optimal", "optimal_inaccurate") or shape.value is None:
        raise ToolkitError(f"defense 'error_ellipsoid': ellipsoid fit failed (cvxpy status {problem.status!r})")
    a = torch.from_numpy(np.asarray(shape.value, dtype=np.float64))
    return (a + a.T) / 2, torch.from_numpy(np.asarray(offset.value, dtype=np.float64))


def calibrate_ellipsoid(saes: Mapping[str, object], benign_resid: Mapping[str, torch.Tensor], *, rank: int = 16,
                        coverage: float = 0.99, max_points: int = 2000, solver: str | None = None) -> EllipsoidCalibration:
    """Fit one ellipsoid per site of ``benign_resid`` ({site: [n, d_model]}); see the module docstring."""
    name = "error_ellipsoid"
    if not 0.0 < coverage <= 1.0:
        raise ToolkitError(f"defense {name!r}: coverage must be in (0, 1], got {coverage}")
    if rank < 1 or max_points < 2:
        raise ToolkitError(f"defense {name!r}: need rank >= 1 and max_points >= 2, got {rank}, {max_points}")
    errors = benign_errors(saes, benign_resid, defense=name, min_rows=rank + 2)
    out: dict[str, dict[str, torch.Tensor]] = {k: {} for k in ("mean", "basis", "shape", "center", "achieved")}
    for site, err in errors.items():
        mu = err.mean(0)
        _, sing, vh = torch.linalg.svd(err - mu, full_matrices=False)
        r = min(rank, int((sing > sing[0] * 1e-9).sum()))
        basis = vh[:r].T
        y = (err - mu) @ basis
        scale = y.std(0).clamp_min(1e-12)
        radius = (y / scale).norm(dim=-1)
        kept = radius.argsort()[: max(math.ceil(coverage * len(y)), r + 1)]
        kept = kept[radius[kept].argsort(descending=True)][:max_points]  # outermost points decide the fit
        a_w, b_w = _fit_mvee(y[kept] / scale, solver)
        shape = a_w / scale  # A_y = A_w diag(1/s): scales columns
        center = -torch.linalg.solve(shape, b_w)
        inside = (((y - center) @ shape.T).norm(dim=-1) <= 1 + 1e-6).double().mean()
        for key, value in zip(("mean", "basis", "shape", "center", "achieved"),
                              (mu, basis.contiguous(), shape, center, inside[None]), strict=True):
            out[key][site] = value.float()
    return EllipsoidCalibration(**out, coverage=coverage)


@dataclass(frozen=True)
class EllipsoidConfig(ResidualConfig):
    """Ellipsoidal guard: ``scale`` inflates the ellipsoid; ``keep_complement`` keeps the error part
    outside the fitted subspace (default: dropped); ``calibration`` folder."""

    name = "error_ellipsoid"
    scale: float = 1.0
    keep_complement: bool = False
    calibration: str = ""


class EllipsoidGuard(ResidualDefense):
    """Retracts the SAE error into a benign-fitted ellipsoid; see the module docstring."""

    config: EllipsoidConfig

    def __init__(self, config: EllipsoidConfig, saes: Mapping[str, object],
                 calibration: EllipsoidCalibration | None = None) -> None:
        super().__init__(config, saes)
        if config.scale <= 0:
            raise ToolkitError(f"defense {config.name!r}: scale must be > 0, got {config.scale}")
        self.calibration = self.calibrated(calibration, EllipsoidCalibration)

    def ellipsoid_norm(self, error: torch.Tensor, site: str) -> torch.Tensor:
        """``||A (y - c)||`` [batch, pos]: <= 1 inside the fitted ellipsoid."""
        c = self.calibration
        y = (error - c.mean[site].to(error)) @ c.basis[site].to(error)
        return ((y - c.center[site].to(error)) @ c.shape[site].to(error).T).norm(dim=-1)

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        c = self.calibration
        mu, basis = c.mean[site].to(error), c.basis[site].to(error)
        center, shape = c.center[site].to(error), c.shape[site].to(error)
        centred = error - mu
        y = centred @ basis
        offset = y - center
        size = (offset @ shape.T).norm(dim=-1, keepdim=True) / self.config.scale
        y_new = center + offset / size.clamp_min(1.0)
        out = mu + y_new @ basis.T
        if self.config.keep_complement:
            out = out + centred - y @ basis.T
        return out


def _calibrate(data: CalibrationData) -> EllipsoidCalibration:
    return calibrate_ellipsoid(data.saes_here(), data.benign, **data.options_for(EllipsoidConfig.name))


SPEC = DefenseSpec(EllipsoidConfig, EllipsoidGuard,
                   calibrate=_calibrate,
                   selftest=lambda features: EllipsoidConfig(features=features),
                   sweep=Sweep("scale", (0.5, 1.0, 2.0)))
