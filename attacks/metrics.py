"""Constraint-cost metrics of a recovery, as docs/METHOD.md section 3 defines them.

All take the defense-input latents of the monitored defended sites for the attacked run
(``latents``) and the un-attacked defended run (``baseline``), one [batch, pos, |S|]
tensor per ``DefendedLatents``, plus ``valid`` bool [batch, pos] (positions delta can reach:
from the first perturbed position to the last real token). Each returns one value per
example, pooled over all monitored sites, positions and latents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EPS = 1e-12
FLOOR = 1e-6  # denominator floor: with every monitored latent at 0, any change reads as a huge drift


def _flat(latents: Sequence[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """[batch, sum of pos*|S|] with invalid positions zeroed."""
    m = valid[..., None]
    return torch.cat([(z * m.to(z.dtype)).flatten(1) for z in latents], dim=1)


def _norm(x: torch.Tensor) -> torch.Tensor:
    # sqrt(s + eps^2) - eps: exactly 0 at 0, with a finite gradient there (the Lagrangian differentiates it)
    return (x.square().sum(dim=1) + EPS**2).sqrt() - EPS


def relative_drift(latents: Sequence[torch.Tensor], baseline: Sequence[torch.Tensor],
                   valid: torch.Tensor) -> torch.Tensor:
    """``||z_S(rec) - z_S(def)|| / ||z_S(def)||`` per example; differentiable. 0 with nothing monitored."""
    if not latents:
        return torch.zeros(valid.shape[0], device=valid.device)
    z, z0 = _flat(latents, valid), _flat(baseline, valid)
    return _norm(z - z0) / _norm(z0).clamp_min(FLOOR)


def floor_violation(latents: Sequence[torch.Tensor], baseline: Sequence[torch.Tensor],
                    valid: torch.Tensor) -> torch.Tensor:
    """``||relu(z_S(def) - z_S(rec))|| / ||z_S(def)||``: how far latents were pushed below their value."""
    if not latents:
        return torch.zeros(valid.shape[0], device=valid.device)
    z, z0 = _flat(latents, valid), _flat(baseline, valid)
    return _norm(torch.relu(z0 - z)) / _norm(z0).clamp_min(FLOOR)


def reactivation(latents: Sequence[torch.Tensor], baseline: Sequence[torch.Tensor],
                 valid: torch.Tensor) -> torch.Tensor:
    """Fraction of monitored latents inactive (<= 0) without the attack that become positive with it."""
    if not latents:
        return torch.zeros(valid.shape[0], device=valid.device)
    m = torch.cat([valid[..., None].expand_as(z).flatten(1) for z in latents], dim=1)
    z, z0 = _flat(latents, valid), _flat(baseline, valid)
    off = (z0 <= 0) & m
    woke = off & (z > 0)
    return woke.sum(dim=1) / off.sum(dim=1).clamp_min(1)


def relative_norm(delta: torch.Tensor, mask: torch.Tensor, resid_def: torch.Tensor) -> torch.Tensor:
    """``max_pos ||delta|| / ||h_def||`` over the perturbed positions, per example."""
    ratio = delta.norm(dim=-1) / resid_def.norm(dim=-1).clamp_min(1e-12)
    return torch.where(mask, ratio, torch.zeros_like(ratio)).amax(dim=1)
