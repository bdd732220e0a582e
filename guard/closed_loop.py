"""Closed-loop clamping: clamp at the source sites and re-clamp the behaviour's echo downstream.

Source: our residual-aware candidate (docs/METHOD.md section 6, "re-apply clamps at several
layers after any perturbation"). Every clamp re-encodes its own input, so a plain
multi-site clamp already re-clamps *its* latents after any upstream perturbation. What
closed loop adds is which latents downstream are held: ``calibrate_closed_loop`` runs
behaviour prompts with and without the source clamp and, at every SAE site after the first
source site, picks up to ``k`` latents with the largest *relative* drop (mean over non-sink
tokens of ``relu(z_free - z_clamped)`` divided by the mean of ``z_free``), among latents
active on at least ``min_active`` of the tokens (a latent seen once says nothing), keeping
only those that lose at least ``min_relative_drop`` of their activation: the downstream latents the
source features drive (the behaviour's echo). The drop is relative because an absolute
one selects dense, high-magnitude latents that every small upstream change moves a little
(on the subject, zeroing those raised next-token loss by ~5.7 nats). The echo is looked
for as a drop, so this calibration suits suppressing clamps (set to 0, multiply < 1); for
amplifying clamps the echo would be a rise, which it does not search for. Those are clamped too, with the same mode and value, so a perturbation
injected after the source clamp must keep the echo quiet at every later SAE site as well;
in a cross-layer attack they join the defended latents whose drift is measured.

Without a calibration this is exactly the plain multi-site clamp on ``features``.

Threat model: none (a defense). Shapes: resid [batch, pos, d_model].

Example::

    calib = calibrate_closed_loop(model, saes, behaviour_tokens, {"blocks.6.hook_resid_post": (5, 17)}, k=16)
    loop = ClosedLoopClamp(ClosedLoopConfig(features={"blocks.6.hook_resid_post": (5, 17)}), saes, calib)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from guard.base import DefenseConfig
from guard.calibration import Calibration, resolve
from guard.clamp import ClampConfig, FeatureClamp, normalise_features
from guard.errors import ToolkitError, unknown_name
from guard.sae_ops import check_features, encode, sink_mask
from guard.spec import CalibrationData, DefenseSpec


@dataclass(frozen=True)
class ClosedLoopCalibration(Calibration):
    """Propagated latents ``features`` {site: LongTensor [k]} and their ``scores`` {site: [k]}
    (relative activation drop under the source clamp), for the ``source`` clamp recorded in meta."""

    kind = "closed_loop"
    features: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    source: dict[str, Any] = field(default_factory=dict)
    mode: str = "set"
    value: float = 0.0
    positive_only: bool = False


def _site_order(model, sites: Iterable[str]) -> list[str]:
    order = list(model.hook_dict)
    return sorted(sites, key=order.index)


def _latents_at(model, sites: Sequence[str], saes, tokens, hooks, sink_ratio) -> tuple[dict, dict]:
    """Latents [n, d_sae] of the activations *entering* each site (recorded before any defense
    hook), position 0 left out, and the bool [n] non-sink masks."""
    latents: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    keep: dict[str, list[torch.Tensor]] = {s: [] for s in sites}

    def make(site):
        def rec(resid, hook):
            resid = resid[:, 1:]
            keep[site].append((~sink_mask(resid, sink_ratio)).flatten())
            latents[site].append(encode(saes[site], resid).flatten(0, 1).detach())
        return rec

    for batch in tokens:
        with model.hooks(fwd_hooks=[(s, make(s)) for s in sites] + hooks):
            model(batch, return_type=None)
    return ({s: torch.cat(v) for s, v in latents.items()}, {s: torch.cat(v) for s, v in keep.items()})


@torch.no_grad()
def calibrate_closed_loop(model, saes: Mapping[str, object], tokens, source: Mapping[str, Sequence[int]], *,
                          k: int = 16, min_relative_drop: float = 0.25, min_active: float = 0.05,
                          mode: str = "set", value: float = 0.0,
                          positive_only: bool = False, sink_ratio: float | None = 8.0) -> ClosedLoopCalibration:
    """Pick up to ``k`` downstream latents per SAE site most suppressed (relative drop at least
    ``min_relative_drop``) by the source clamp.

    ``tokens``: behaviour prompts, [batch, pos] or a list of [1, pos] / [pos] tensors.
    ``source``: {site: latent ids} of the clamp; downstream sites are all SAE sites after
    the first source site, in forward order.
    """
    name = "closed_loop"
    if k < 1:
        raise ToolkitError(f"defense {name!r}: k must be >= 1, got {k}")
    clamp = FeatureClamp(ClampConfig(features=source, mode=mode, value=value, positive_only=positive_only,
                                     sink_ratio=sink_ratio), saes)
    ordered = _site_order(model, saes)
    first = min(ordered.index(s) for s in clamp.sites)
    downstream = ordered[first + 1:]
    if not downstream:
        raise ToolkitError(f"defense {name!r}: no SAE site after the source sites {list(clamp.sites)}")
    if isinstance(tokens, torch.Tensor):
        tokens = [tokens] if tokens.ndim == 2 else [tokens[None]]
    else:
        tokens = [t if t.ndim == 2 else t[None] for t in tokens]
    free, keep = _latents_at(model, downstream, saes, tokens, [], sink_ratio)
    held, _ = _latents_at(model, downstream, saes, tokens, clamp.fwd_hooks(), sink_ratio)
    features, scores = {}, {}
    for site in downstream:
        # sinks judged on the free run, so both runs average over the same tokens
        rows = keep[site]
        active = free[site][rows].mean(0)
        drop = (free[site] - held[site])[rows].clamp_min(0).mean(0) / active.clamp_min(1e-12)
        drop[(free[site][rows] > 0).double().mean(0) < max(min_active, 1e-12)] = 0  # too rare to judge
        if site in clamp.features:
            drop[clamp.features[site]] = 0  # already clamped at this site
        top = drop.topk(min(k, drop.numel()))
        chosen = top.values >= max(min_relative_drop, 1e-12)
        if chosen.any():
            features[site] = top.indices[chosen].long()
            scores[site] = top.values[chosen].float()
    return ClosedLoopCalibration(features=features, scores=scores, source={s: list(v) for s, v in clamp.config.features.items()},
                                 mode=mode, value=value, positive_only=positive_only)


@dataclass(frozen=True)
class ClosedLoopConfig(DefenseConfig):
    """Closed loop: source clamp ``features`` / ``mode`` / ``value`` / ``positive_only``; ``calibration``
    folder with the propagated latents ("" = none); ``sink_ratio`` as in ``ClampConfig``."""

    name = "closed_loop"
    features: Mapping[str, Sequence[int]] = field(default_factory=dict)
    mode: Literal["set", "multiply"] = "set"
    value: float = 0.0
    positive_only: bool = False
    calibration: str = ""
    sink_ratio: float | None = 8.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", normalise_features(self.features))


class ClosedLoopClamp(FeatureClamp):
    """Source clamp plus calibrated downstream re-clamping; see the module docstring."""

    config: ClosedLoopConfig

    def __init__(self, config: ClosedLoopConfig, saes: Mapping[str, object],
                 calibration: ClosedLoopCalibration | None = None) -> None:
        super().__init__(config, saes)
        self.calibration = None
        if calibration is not None or config.calibration:
            self.calibration = resolve(calibration, config.calibration, ClosedLoopCalibration, config.name)
            self._merge(self.calibration, saes)

    def _merge(self, calib: ClosedLoopCalibration, saes: Mapping[str, object]) -> None:
        name = self.config.name
        source = {s: tuple(int(i) for i in v) for s, v in calib.source.items()}
        clamp = (calib.mode, calib.value, calib.positive_only)
        mine = (self.config.mode, self.config.value, self.config.positive_only)
        if source != dict(self.config.features) or clamp != mine:
            raise ToolkitError(f"defense {name!r}: the calibration was made for source clamp {source} {clamp}, "
                               f"not {dict(self.config.features)} {mine}; recalibrate")
        for site, ids in calib.features.items():
            if site not in saes:
                raise unknown_name("SAE site", site, saes.keys(), f"defense {name!r}")
            ids = check_features(ids, saes[site], defense=name, site=site)
            self.saes[site] = saes[site]
            old = self.features.get(site, torch.zeros(0, dtype=torch.long))
            self.features[site] = torch.cat([old, ids[~torch.isin(ids, old)]])

    @property
    def sites(self) -> tuple[str, ...]:
        # forward order: blocks.N sites by layer, others after, stable otherwise
        def layer(site: str) -> float:
            parts = site.split(".")
            return int(parts[1]) if parts[0] == "blocks" and parts[1].isdigit() else float("inf")
        return tuple(sorted(self.features, key=layer))


def _calibrate(data: CalibrationData) -> ClosedLoopCalibration:
    # the echo is read at every SAE site downstream of the clamp, so it sees the whole subject
    return calibrate_closed_loop(data.model, data.saes, list(data.behaviour_prompts), data.features,
                                 **{**data.clamp, **data.options_for(ClosedLoopConfig.name)})


def _unusable(model, saes: Mapping[str, object], features: Mapping[str, Sequence[int]]) -> str | None:
    ordered = _site_order(model, saes)
    first = min(ordered.index(s) for s in features if s in ordered) if set(features) & set(ordered) else None
    if first is None or first + 1 >= len(ordered):
        return f"no SAE site after the clamp's sites {sorted(features)} to echo to (SAEs at {ordered})"
    return None


SPEC = DefenseSpec(ClosedLoopConfig, ClosedLoopClamp,
                   calibrate=_calibrate, unusable=_unusable,
                   # the source clamp at the first site only, so there is a site downstream to echo to
                   selftest=lambda features: ClosedLoopConfig(features=dict(list(features.items())[:1])))
