"""Plain SAE feature clamping: the baseline every residual-aware defense is compared with.

Source: the feature-level interventions of SAE steering and unlearning work, as analysed in
Cui, Shen, Yang, "SAE Interventions are Unreliable" (arXiv 2606.18322). Edits latents in S:
``set`` (z_S <- value), ``multiply`` (z_S <- value * z_S); ``positive_only`` restricts the
edit to positions where z_S > 0. The error term passes through untouched:
``h_def = h + sum_{i in S} (z_i' - z_i) W_dec[i]``.

Threat model: none (this is a defense). Shapes: resid [batch, pos, d_model].

Example::

    clamp = FeatureClamp(ClampConfig(features={"blocks.12.hook_resid_post": (5, 17)}), saes)
    with clamp.applied(model):
        logits = model(tokens)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from guard.base import DefendedLatents, Defense, DefenseConfig
from guard.errors import ToolkitError, unknown_name
from guard.sae_ops import check_activations, check_features, encode


@dataclass(frozen=True)
class ClampConfig(DefenseConfig):
    name = "clamp"
    # site -> latent ids; tuples keep the config hashable and frozen
    features: Mapping[str, Sequence[int]] = field(default_factory=dict)
    mode: Literal["set", "multiply"] = "set"
    value: float = 0.0
    positive_only: bool = False


def edit_latents(z_s: torch.Tensor, mode: str, value: float, positive_only: bool) -> torch.Tensor:
    """The clamped values of the selected latents (same shape as ``z_s``)."""
    if mode == "set":
        edited = torch.full_like(z_s, value)
    elif mode == "multiply":
        edited = z_s * value
    else:
        raise ToolkitError(f"clamp mode must be 'set' or 'multiply', got {mode!r}")
    if positive_only:
        edited = torch.where(z_s > 0, edited, z_s)
    return edited


class FeatureClamp(Defense):
    """Plain clamping of SAE latents at one or more sites."""

    def __init__(self, config: ClampConfig, saes: Mapping[str, object]) -> None:
        self.config = config
        if not config.features:
            raise ToolkitError("defense 'clamp': no features given (features={site: [ids]})")
        self.saes = {}
        self.features = {}
        for site, ids in config.features.items():
            if site not in saes:
                raise unknown_name("SAE site", site, saes.keys(), f"defense {config.name!r}")
            self.saes[site] = saes[site]
            self.features[site] = check_features(torch.as_tensor(list(ids)), saes[site], defense=config.name, site=site)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.features)

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        sae, feats = self.saes[site], self.features[site]
        check_activations(resid, sae, defense=self.name, site=site)
        z_s = encode(sae, resid)[..., feats]
        edited = edit_latents(z_s, self.config.mode, self.config.value, self.config.positive_only)
        w_dec = sae.W_dec[feats].to(resid.dtype)
        return resid + (edited - z_s).to(resid.dtype) @ w_dec

    def defended_latents(self) -> list[DefendedLatents]:
        return [DefendedLatents(site, self.saes[site], self.features[site]) for site in self.sites]
