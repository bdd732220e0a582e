"""Reconstruction splice: replace the activation by the (clamped) SAE reconstruction.

Source: splicing an SAE into the forward pass is the standard way SAE fidelity is measured
(the "CE loss recovered" of SAE papers); as a defense it closes the error channel that
post-intervention recovery uses (Cui, Shen, Yang, arXiv 2606.18322, attribution replay:
the error part alone recovers 23/24). Costs utility: the model now runs on reconstructions.

``out = recon + clamp_edit + error_scale * error``; ``error_scale`` 0 (default) drops the
error, 1 keeps it (a plain clamp). No calibration.

Threat model: none (a defense). Shapes: resid [batch, pos, d_model].

Example::

    splice = ReconstructionSplice(SpliceConfig(features={"blocks.12.hook_resid_post": (5, 17)}), saes)
    with splice.applied(model):
        logits = model(tokens)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from guard.residual import ResidualConfig, ResidualDefense
from guard.spec import DefenseSpec, Sweep


@dataclass(frozen=True)
class SpliceConfig(ResidualConfig):
    """Splice: ``error_scale`` multiplies the SAE error (0 drops it)."""

    name = "splice"
    error_scale: float = 0.0


class ReconstructionSplice(ResidualDefense):
    """Drops (or scales) the SAE error term at each site; see the module docstring."""

    config: SpliceConfig

    def __init__(self, config: SpliceConfig, saes: Mapping[str, object]) -> None:
        super().__init__(config, saes)

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        return error * self.config.error_scale


SPEC = DefenseSpec(SpliceConfig, ReconstructionSplice,
                   selftest=lambda features: SpliceConfig(features=features),
                   sweep=Sweep("error_scale", (0.0, 0.25, 0.5)))
