"""Multi-layer SAE bottleneck: the clamp's splice, and a splice at each of the next SAE sites downstream.

Source: an SAE spliced into the forward pass as a bottleneck cut GCG/BEAST success up to 5x
(Saiyed et al., arXiv 2604.18756) but was never attacked adaptively. Here the bottleneck sits at
several layers at once, so a perturbation injected at the clamp's site must survive reconstruction
by every later SAE, each of which drops (or scales) its own error part again.

At the clamp's sites ``out = recon + clamp_edit + error_scale * error`` (``guard.splice``); at each of
the ``downstream`` next SAE sites after the first clamp site (forward order of ``blocks.N`` names;
fewer when the subject has fewer) ``out = recon + error_scale * error``, no latent clamped. No
calibration. Costs utility at every spliced layer.

Threat model: none (a defense). Shapes: resid [batch, pos, d_model].

Example::

    bottleneck = MultiLayerBottleneck(BottleneckConfig(features={"blocks.6.hook_resid_post": (5, 17)},
                                                       downstream=2), saes)   # splices at 6, 12 and 18
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from guard.errors import ToolkitError
from guard.spec import DefenseSpec, Sweep
from guard.splice import ReconstructionSplice, SpliceConfig


def _layer(site: str) -> int | None:
    parts = site.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def downstream_sites(features: Mapping[str, Sequence[int]], saes: Mapping[str, object]) -> list[str]:
    """The SAE sites after the first of ``features``' sites, in forward (layer) order."""
    layers = [x for x in (_layer(s) for s in features) if x is not None]
    if not layers:
        return []
    first = min(layers)
    later = [(layer, s) for s in saes if s not in features and (layer := _layer(s)) is not None and layer > first]
    return [s for _, s in sorted(later)]


@dataclass(frozen=True)
class BottleneckConfig(SpliceConfig):
    """Bottleneck: the splice of ``SpliceConfig`` at the clamp's sites and at ``downstream`` later SAE sites."""

    name = "bottleneck"
    downstream: int = 3


class MultiLayerBottleneck(ReconstructionSplice):
    """Splices at the clamp's sites and the next ``downstream`` SAE sites; see the module docstring."""

    config: BottleneckConfig

    def __init__(self, config: BottleneckConfig, saes: Mapping[str, object]) -> None:
        if config.downstream < 0:
            raise ToolkitError(f"defense {config.name!r}: downstream must be >= 0, got {config.downstream}")
        later = downstream_sites(config.features, saes or {})[: config.downstream]
        super().__init__(dataclasses.replace(config, features={**config.features, **{s: () for s in later}}), saes)
        self.config = config  # as given: a strength sweep replaces ``downstream`` on it



def _unusable(model, saes: Mapping[str, object], features: Mapping[str, Sequence[int]]) -> str | None:
    if not downstream_sites(features, saes):
        return f"no SAE site after the clamp's sites {sorted(features)} to splice at (SAEs at {sorted(saes)})"
    return None


SPEC = DefenseSpec(BottleneckConfig, MultiLayerBottleneck, unusable=_unusable,
                   # the clamp at the first site only, so the second one is spliced downstream
                   selftest=lambda features: BottleneckConfig(features=dict(list(features.items())[:1])),
                   sweep=Sweep("downstream", (1, 2, 3)))
