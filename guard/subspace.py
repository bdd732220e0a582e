"""Error subspace projection: keep the SAE error inside the subspace benign errors occupy,
and/or remove its components along behaviour directions.

Source: our residual-aware candidate (docs/METHOD.md section 6). Benign errors concentrate in
a low-dimensional affine subspace (PCA); a recovery perturbation that must pass through
the error channel has to fit there too. Behaviour directions are difference-of-means
directions of the *errors* of behaviour vs contrast activations (one per site).

    project_benign:    T(e) = orthogonal projection onto the affine set  mu + span U
    remove_behaviour:  T(e) = orthogonal projection onto  {x : B^T x = 0}
    both:              T(e) = orthogonal projection onto  (mu + span U) ∩ {x : B^T x = 0}

(U: top-k PCA basis [d, k]; B: orthonormal behaviour directions [d, m]). Each case is a
projection, so T is idempotent and, in the last case, behaviour-free: with ``a0 = U^T (e -
mu)`` and ``C = U^T B``, ``a = a0 - pinv(C^T) (C^T a0 + B^T mu)``, ``T(e) = mu + U a``. If span U
is (numerically) orthogonal to B, pinv drops that direction and the constant ``B^T mu``
stays. ``rank`` picks k directly, else the smallest k whose explained variance reaches
``energy``. With k = d_model and no behaviour removal T is the identity.

Threat model: none (a defense). Shapes: resid [batch, pos, d_model]; calibration data
{site: [n, d_model]}.

Example::

    calib = calibrate_error_subspace(saes, benign, behaviour_resid=harmful, contrast_resid=harmless)
    proj = ErrorSubspaceProjection(ErrorSubspaceConfig(features={site: ()}), saes, calibration=calib)
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
class ErrorSubspaceCalibration(Calibration):
    """Per site: ``mean`` [d], PCA ``components`` [d, k] (orthonormal columns, by decreasing
    variance), their ``variance`` [k], and optional ``behaviour`` directions [d, m]."""

    kind = "error_subspace"
    width_fields = ("mean", "components", "behaviour")
    mean: dict[str, torch.Tensor]
    components: dict[str, torch.Tensor]
    variance: dict[str, torch.Tensor]
    behaviour: dict[str, torch.Tensor]

    def rank_for(self, site: str, energy: float) -> int:
        var = self.variance[site].to(torch.float64)
        share = var.cumsum(0) / var.sum().clamp_min(1e-30)
        return int((share < energy - 1e-12).sum().item()) + 1


def difference_of_means(behaviour: torch.Tensor, contrast: torch.Tensor, *, defense: str, site: str) -> torch.Tensor:
    """Unit difference-of-means direction [d, 1] (float64)."""
    diff = behaviour.mean(0) - contrast.mean(0)
    norm = diff.norm()
    if norm <= 1e-12 * max(float(behaviour.norm(dim=-1).mean()), 1.0):
        raise ToolkitError(f"defense {defense!r} at {site!r}: behaviour and contrast data have the same mean; "
                           "no direction to estimate")
    return (diff / norm)[:, None]


def calibrate_error_subspace(saes: Mapping[str, object], benign_resid: Mapping[str, torch.Tensor], *,
                             behaviour_resid: Mapping[str, torch.Tensor] | None = None,
                             contrast_resid: Mapping[str, torch.Tensor] | None = None,
                             max_rank: int | None = None) -> ErrorSubspaceCalibration:
    """PCA of benign SAE errors per site, plus error-space behaviour directions when
    ``behaviour_resid`` and ``contrast_resid`` ({site: [n, d_model]}) are both given."""
    name = "error_subspace"
    if (behaviour_resid is None) != (contrast_resid is None):
        raise ToolkitError(f"defense {name!r}: pass both behaviour_resid and contrast_resid, or neither")
    errors = benign_errors(saes, benign_resid, defense=name)
    mean, components, variance, behaviour = {}, {}, {}, {}
    for site, err in errors.items():
        mu = err.mean(0)
        _, sing, vh = torch.linalg.svd(err - mu, full_matrices=False)
        k = len(sing) if max_rank is None else min(max_rank, len(sing))
        mean[site] = mu.float()
        components[site] = vh[:k].T.contiguous().float()
        variance[site] = (sing[:k] ** 2 / max(len(err) - 1, 1)).float()
    if behaviour_resid is not None:
        beh = benign_errors(saes, behaviour_resid, defense=name, min_rows=1)
        con = benign_errors(saes, contrast_resid, defense=name, min_rows=1)
        for site in errors:
            if site not in beh or site not in con:
                raise ToolkitError(f"defense {name!r} at {site!r}: behaviour/contrast data lack this site")
            behaviour[site] = difference_of_means(beh[site], con[site], defense=name, site=site).float()
    return ErrorSubspaceCalibration(mean=mean, components=components, variance=variance, behaviour=behaviour)


@dataclass(frozen=True)
class ErrorSubspaceConfig(ResidualConfig):
    """Error subspace projection: ``project_benign`` onto the top ``rank`` (or ``energy``) PCA
    directions of benign errors; ``remove_behaviour`` directions; ``calibration`` folder."""

    name = "error_subspace"
    project_benign: bool = True
    remove_behaviour: bool = True
    rank: int | None = None
    energy: float = 0.95
    calibration: str = ""


class ErrorSubspaceProjection(ResidualDefense):
    """Projects the SAE error onto benign subspaces / off behaviour directions; see the module docstring."""

    config: ErrorSubspaceConfig

    def __init__(self, config: ErrorSubspaceConfig, saes: Mapping[str, object],
                 calibration: ErrorSubspaceCalibration | None = None) -> None:
        super().__init__(config, saes)
        name = config.name
        if not 0.0 < config.energy <= 1.0:
            raise ToolkitError(f"defense {name!r}: energy must be in (0, 1], got {config.energy}")
        calib = self.calibrated(calibration, ErrorSubspaceCalibration)
        self.calibration = calib
        self.basis: dict[str, torch.Tensor] = {}
        self.behaviour: dict[str, torch.Tensor] = {}
        self._correction: dict[str, torch.Tensor] = {}  # pinv(C^T) [k, m], C = U^T B
        for site in self.sites:
            available = calib.components[site].shape[1]
            k = config.rank if config.rank is not None else calib.rank_for(site, config.energy)
            if not 1 <= k <= available:
                raise ToolkitError(f"defense {name!r} at {site!r}: rank {k} not in [1, {available}] "
                                   "(the calibration's stored components)")
            self.basis[site] = calib.components[site][:, :k]
            if config.remove_behaviour:
                if site not in calib.behaviour:
                    raise ToolkitError(f"defense {name!r} at {site!r}: remove_behaviour needs behaviour directions; "
                                       "calibrate with behaviour_resid and contrast_resid, or set remove_behaviour=False")
                q, _ = torch.linalg.qr(calib.behaviour[site].to(torch.float64))
                self.behaviour[site] = q.float()
                if config.project_benign:
                    c = self.basis[site].to(torch.float64).T @ q
                    self._correction[site] = torch.linalg.pinv(c.T, rtol=1e-6).float()

    def rank(self, site: str) -> int:
        return int(self.basis[site].shape[1])

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        project, remove = self.config.project_benign, self.config.remove_behaviour
        if not project and not remove:
            return error
        if not project:
            b = self.behaviour[site].to(error)
            return error - (error @ b) @ b.T
        mu, basis = self.calibration.mean[site].to(error), self.basis[site].to(error)
        coords = (error - mu) @ basis
        if remove:
            b, correction = self.behaviour[site].to(error), self._correction[site].to(error)
            coords = coords - (coords @ (basis.T @ b) + mu @ b) @ correction.T
        return mu + coords @ basis.T


def _calibrate(data: CalibrationData) -> ErrorSubspaceCalibration:
    return calibrate_error_subspace(data.saes_here(), data.benign, behaviour_resid=data.behaviour,
                                    contrast_resid=data.contrast, **data.options_for(ErrorSubspaceConfig.name))


SPEC = DefenseSpec(ErrorSubspaceConfig, ErrorSubspaceProjection,
                   calibrate=_calibrate,
                   selftest=lambda features: ErrorSubspaceConfig(features=features, rank=5),
                   sweep=Sweep("energy", (0.5, 0.8, 0.95)))
