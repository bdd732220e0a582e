"""Shared shape of the residual-aware defenses: clamp the latents, transform the SAE error.

At each of its sites a residual-aware defense splits its input inside autograd,
``resid = recon + error`` with ``feature_acts = encode(resid)``, and returns

    out = recon + clamp_edit + T(error)  =  resid + clamp_edit + (T(error) - error)

where ``clamp_edit`` is exactly the plain clamp's edit (``guard.clamp``) of the latents
listed for that site (an empty list clamps nothing) and ``T`` is the defense's error
transform. With ``T`` the identity the defense equals ``FeatureClamp``. Attention-sink
tokens (norm above ``sink_ratio`` x the median norm of the call; see
``guard.sae_ops.sink_mask``) pass through unedited, as in the plain clamp: the SAE never
saw them. This is
an exemption an attacker could use only with a perturbation of norm ~(sink_ratio - 1) x the
median residual norm (about 7 x 144 at blocks.12 of the subject), far beyond the budgets
the threat models allow; on the subject position 0 is ~150x the median from layer 12 on,
but only ~6.5x at layer 6, where it is left in (as are a few other tokens of similar norm
that the SAEs were trained on).

Subclasses implement ``transform_error`` and, when calibrated, ``_bind_calibration``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from guard.base import DefendedLatents, Defense
from guard.calibration import Calibration, check_covers, check_site_data, resolve
from guard.clamp import ClampConfig, bind_features, clamp_delta
from guard.errors import ToolkitError, unknown_name
from guard.sae_ops import check_activations, sink_mask, split

C = TypeVar("C", bound=Calibration)


@dataclass(frozen=True)
class ResidualConfig(ClampConfig):
    """Fields every residual-aware defense shares: those of ``ClampConfig``.

    ``features``: {site: latent ids}; its keys are the sites the defense acts on (an empty
    id list means: transform the error there but clamp nothing). ``mode``, ``value``,
    ``positive_only``, ``sink_ratio``: the clamp, as in ``ClampConfig``.
    """

    name = "residual"


class ResidualDefense(Defense):
    """Base class: clamp edit plus an error transform at each site (see the module docstring)."""

    config: ResidualConfig

    def __init__(self, config: ResidualConfig, saes: Mapping[str, object]) -> None:
        self.config = config
        self.saes, self.features = bind_features(config, saes, allow_empty=True)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.features)

    def widths(self) -> dict[str, int]:
        return {site: int(sae.cfg.d_in) for site, sae in self.saes.items()}

    def calibrated(self, calibration: Calibration | None, kind: type[C]) -> C:
        """``calibration``, else the one in ``config.calibration``: of ``kind``, covering every site here."""
        calib = resolve(calibration, self.config.calibration, kind, self.name)
        check_covers(calib, self.sites, self.widths(), defense=self.name)
        return calib

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        """The new error [batch, pos, d_model]; ``keep`` [batch, pos] marks non-sink tokens."""
        raise NotImplementedError

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        sae, feats = self.saes[site], self.features[site]
        check_activations(resid, sae, defense=self.name, site=site)
        feature_acts, _, error = split(sae, resid)
        keep = ~sink_mask(resid, self.config.sink_ratio)
        change = torch.zeros_like(resid)
        if feats.numel():
            change = change + clamp_delta(sae, feats, feature_acts, self.config).to(resid.dtype)
        new_error = self.transform_error(error, site, keep)
        if new_error is not error:
            change = change + (new_error - error)
        return resid + change * keep[..., None].to(resid.dtype)

    def defended_latents(self) -> list[DefendedLatents]:
        return [DefendedLatents(site, self.saes[site], feats) for site, feats in self.features.items()
                if feats.numel()]


def benign_errors(saes: Mapping[str, object], benign_resid: Mapping[str, torch.Tensor], *, defense: str,
                  min_rows: int = 2, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """SAE errors of benign activations: {site: [n, d_model]} float64, checked for width and NaN."""
    for site in benign_resid:
        if site not in saes:
            raise unknown_name("SAE site", site, saes.keys(), f"defense {defense!r} calibration")
    widths = {site: int(saes[site].cfg.d_in) for site in benign_resid}
    data = check_site_data(benign_resid, widths, defense=defense, what="benign activations", min_rows=min_rows)
    out = {}
    with torch.no_grad():
        for site, x in data.items():
            sae = saes[site]
            parts = [split(sae, rows.to(sae.W_dec.dtype))[2].to(torch.float64) for rows in x.split(chunk)]
            out[site] = torch.cat(parts)
            if not torch.isfinite(out[site]).all():
                raise ToolkitError(f"defense {defense!r} at {site!r}: SAE error of the benign data is not finite")
    return out
