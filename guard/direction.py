"""Dense behaviour-direction ablation: project a difference-of-means direction out of the
residual stream (no SAE), the non-SAE comparator for the SAE defenses.

Source: directional ablation with a difference-of-means direction, as in refusal-direction
work (Arditi et al., "Refusal in Language Models Is Mediated by a Single Direction", 2024)
and activation steering. Per site, ``r`` = unit(mean(behaviour) - mean(contrast)) and

    out = resid - strength * (resid . r) r        (for an orthonormal basis R [d, m]: R R^T resid)

``strength`` 1 removes the component, 0 is the identity. Attention-sink tokens pass
through (see ``guard.sae_ops.sink_mask``).

Threat model: none (a defense). Shapes: resid [batch, pos, d_model]; calibration data
{site: [n, d_model]} (e.g. last-token activations of behaviour and contrast prompts).

Example::

    calib = calibrate_directions(collect(harmful), collect(harmless))
    ablate = DirectionAblation(DirectionConfig(sites=("blocks.12.hook_resid_post",)), calibration=calib)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from guard.base import Defense, DefenseConfig
from guard.calibration import Calibration, check_covers, check_site_data, resolve
from guard.errors import ToolkitError
from guard.sae_ops import sink_mask
from guard.spec import CalibrationData, DefenseSpec, Sweep
from guard.subspace import difference_of_means


@dataclass(frozen=True)
class DirectionCalibration(Calibration):
    """Behaviour directions per site: ``directions`` {site: [d, m]} (orthonormal columns)."""

    kind = "direction"
    width_fields = ("directions",)
    directions: dict[str, torch.Tensor]


def calibrate_directions(behaviour_resid: Mapping[str, torch.Tensor],
                         contrast_resid: Mapping[str, torch.Tensor]) -> DirectionCalibration:
    """Unit difference-of-means direction per site from {site: [n, d_model]} behaviour / contrast data."""
    name = "direction_ablation"
    missing = set(behaviour_resid) ^ set(contrast_resid)
    if missing:
        raise ToolkitError(f"defense {name!r}: behaviour and contrast data cover different sites: {sorted(missing)}")
    widths = {site: torch.as_tensor(x).shape[-1] for site, x in behaviour_resid.items()}
    beh = check_site_data(behaviour_resid, widths, defense=name, what="behaviour activations")
    con = check_site_data(contrast_resid, widths, defense=name, what="contrast activations")
    return DirectionCalibration(directions={
        site: difference_of_means(beh[site], con[site], defense=name, site=site).float() for site in beh})


@dataclass(frozen=True)
class DirectionConfig(DefenseConfig):
    """Direction ablation: ``sites`` (default: every calibrated site), ``strength`` in [0, 1],
    ``sink_ratio`` (see ``guard.sae_ops.sink_mask``), ``calibration`` folder."""

    name = "direction_ablation"
    sites: Sequence[str] = ()
    strength: float = 1.0
    sink_ratio: float | None = 8.0
    calibration: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(str(s) for s in self.sites))


class DirectionAblation(Defense):
    """Projects calibrated behaviour directions out of the residual; see the module docstring."""

    config: DirectionConfig

    def __init__(self, config: DirectionConfig, saes: Mapping[str, object] | None = None,
                 calibration: DirectionCalibration | None = None) -> None:
        self.config = config
        name = config.name
        if not 0.0 <= config.strength <= 1.0:
            raise ToolkitError(f"defense {name!r}: strength must be in [0, 1], got {config.strength}")
        self.calibration = resolve(calibration, config.calibration, DirectionCalibration, name)
        self._sites = config.sites or self.calibration.sites
        widths = {s: self.calibration.directions[s].shape[0] for s in self.calibration.sites}
        check_covers(self.calibration, self._sites, widths, defense=name)
        self.basis = {}
        for site in self._sites:
            q, _ = torch.linalg.qr(self.calibration.directions[site].to(torch.float64))
            self.basis[site] = q.float()

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self._sites)

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        basis = self.basis[site]
        if resid.shape[-1] != basis.shape[0]:
            raise ToolkitError(f"defense {self.name!r} at {site!r}: activations have width {resid.shape[-1]} "
                               f"({tuple(resid.shape)}) but the direction has width {basis.shape[0]}")
        if not torch.isfinite(resid).all():
            raise ToolkitError(f"defense {self.name!r} at {site!r}: activations contain NaN or inf")
        basis = basis.to(resid)
        removed = self.config.strength * ((resid @ basis) @ basis.T)
        keep = ~sink_mask(resid, self.config.sink_ratio)
        return resid - removed * keep[..., None].to(resid.dtype)


def _calibrate(data: CalibrationData) -> DirectionCalibration:
    return calibrate_directions(data.behaviour, data.contrast, **data.options_for(DirectionConfig.name))


SPEC = DefenseSpec(DirectionConfig, DirectionAblation,
                   default=lambda features, sites, calibration: DirectionConfig(sites=sites, calibration=calibration),
                   calibrate=_calibrate,
                   selftest=lambda features: DirectionConfig(),
                   sweep=Sweep("strength", (0.25, 0.5, 1.0)))
