"""Plain SAE feature clamping: the baseline every residual-aware defense is compared with.

Source: the feature-level interventions of SAE steering and unlearning work, as analysed in
Cui, Shen, Yang, "SAE Interventions are Unreliable" (arXiv 2606.18322). Edits latents in S:
``set`` (z_S <- value), ``multiply`` (z_S <- value * z_S); ``positive_only`` restricts the
edit to positions where z_S > 0. The error term passes through untouched:
``h_def = h + sum_{i in S} (z_i' - z_i) W_dec[i]``. Attention-sink tokens (residual norm
above ``sink_ratio`` x the median norm of the call, ``guard.sae_ops.sink_mask``) are left
alone: the SAEs never saw them, their latents there are huge (thousands on the subject at
blocks.18) and zeroing them wrecks the sink. ``sink_ratio=None`` clamps every token.

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
from guard.sae_ops import check_activations, check_features, encode, feature_delta, sink_mask
from guard.spec import DefenseSpec, Sweep

MODES = ("set", "multiply")


def normalise_features(features: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """{site: tuple of ints}: so a config equals itself after a JSON round trip (lists -> tuples)."""
    return {str(site): tuple(int(i) for i in ids) for site, ids in dict(features).items()}


@dataclass(frozen=True)
class ClampConfig(DefenseConfig):
    """Plain clamp: ``features`` {site: latent ids}, ``mode`` set|multiply, ``value``, ``positive_only``,
    ``sink_ratio`` (sink tokens left alone; None: clamp every token)."""

    name = "clamp"
    # site -> latent ids, normalised to tuples of ints
    features: Mapping[str, Sequence[int]] = field(default_factory=dict)
    mode: Literal["set", "multiply"] = "set"
    value: float = 0.0
    positive_only: bool = False
    sink_ratio: float | None = 8.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", normalise_features(self.features))


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


def bind_features(config, saes: Mapping[str, object] | None, *, allow_empty: bool = False) -> tuple[dict, dict]:
    """({site: sae}, {site: LongTensor ids}) for a config with ``features``; checks sites, ids and mode."""
    name = config.name
    if config.mode not in MODES:
        raise ToolkitError(f"defense {name!r}: clamp mode must be one of {MODES}, got {config.mode!r}")
    if not config.features:
        raise ToolkitError(f"defense {name!r}: no sites given (features={{site: [ids]}})")
    saes = saes or {}
    bound_saes, bound_features = {}, {}
    for site, ids in config.features.items():
        if site not in saes:
            raise unknown_name("SAE site", site, saes.keys(), f"defense {name!r}")
        if not ids and not allow_empty:
            raise ToolkitError(f"defense {name!r} at {site!r}: empty feature list")
        bound_saes[site] = saes[site]
        bound_features[site] = check_features(torch.tensor(list(ids), dtype=torch.long), saes[site],
                                              defense=name, site=site)
    return bound_saes, bound_features


def clamp_delta(sae, features: torch.Tensor, feature_acts: torch.Tensor, config) -> torch.Tensor:
    """Residual change [.., d_model] that clamps ``features`` per ``config`` (mode, value, positive_only)."""
    z_s = feature_acts[..., features]
    edited = edit_latents(z_s, config.mode, config.value, config.positive_only)
    return feature_delta(sae, features, z_s, edited)


def sink_masked(change: torch.Tensor, resid: torch.Tensor, config) -> torch.Tensor:
    """``change`` [batch, pos, d_model] with sink tokens (per ``config.sink_ratio``) zeroed."""
    keep = ~sink_mask(resid, config.sink_ratio)
    return change.to(resid.dtype) * keep[..., None].to(resid.dtype)


class FeatureClamp(Defense):
    """Plain clamping of SAE latents at one or more sites (see the module docstring)."""

    def __init__(self, config: ClampConfig, saes: Mapping[str, object]) -> None:
        self.config = config
        self.saes, self.features = bind_features(config, saes)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(self.features)

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        sae, feats = self.saes[site], self.features[site]
        check_activations(resid, sae, defense=self.name, site=site)
        return resid + sink_masked(clamp_delta(sae, feats, encode(sae, resid), self.config), resid, self.config)

    def defended_latents(self) -> list[DefendedLatents]:
        return [DefendedLatents(site, self.saes[site], self.features[site]) for site in self.sites]


SPEC = DefenseSpec(ClampConfig, FeatureClamp,
                   selftest=lambda features: ClampConfig(features=features, mode="multiply", value=0.3),
                   sweep=Sweep("features", (0.25, 0.5, 1.0)))
