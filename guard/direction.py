"""Dense behaviour-direction ablation: project behaviour directions out of the residual stream
at many layers (no SAE), the non-SAE comparator for the SAE defenses.

Source: directional ablation with a difference-of-means direction, as in refusal-direction
work (Arditi et al., "Refusal in Language Models Is Mediated by a Single Direction", 2024),
applied at several layers; refusal lives in several directions rather than one
(arXiv 2502.17420), hence rank k. Arditi et al. keep only directions whose ablation barely
changes harmless outputs (their KL filter); ``select_layers`` applies that kind of filter to
the layers: ablating at every layer of our subject costs +6.8 nats of next-token loss (layer 6
alone +4.1, layer 3 +1.3; none of layers 12, 15, ..., 27 above +0.04), so a pipeline
keeps the layers whose ablation, alone and together, stays within ``max_delta_ce`` nats on
benign calibration text. Per site, the first direction is unit(mean(behaviour) -
mean(contrast)); directions 2..k are the top right singular vectors of the behaviour rows minus
the contrast mean, orthogonalised against the earlier ones. With the orthonormal basis R [d, k]
of the first ``rank`` directions

    out = resid - strength * R R^T resid

``strength`` 1 removes the components, 0 is the identity. Attention-sink tokens pass
through (see ``guard.sae_ops.sink_mask``). A pipeline calibrates it at every
``blocks.N.hook_resid_post`` of the model on the setting's own behaviour and contrast prompts
(``CalibrationData.contrast_prompts``), so the direction separates the behaviour, not a prompt format,
then keeps the layers ``select_layers`` picks on ``CalibrationData.benign_tokens``.

Threat model: none (a defense). Shapes: resid [batch, pos, d_model]; calibration data
{site: [n, d_model]} (e.g. last-token activations of behaviour and contrast prompts).

Example::

    calib = calibrate_directions(collect(harmful), collect(harmless))
    ablate = DirectionAblation(DirectionConfig(sites=("blocks.12.hook_resid_post",)), calibration=calib)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from guard.base import Defense, DefenseConfig
from guard.calibration import Calibration, check_covers, check_site_data, last_token_resid, resolve
from guard.errors import ToolkitError
from guard.sae_ops import sink_mask
from guard.spec import CalibrationData, DefenseSpec, Sweep
from guard.subspace import difference_of_means
from guard.utility import measure_utility_many


@dataclass(frozen=True)
class DirectionCalibration(Calibration):
    """Behaviour directions per site: ``directions`` {site: [d, m]} (orthonormal columns). After
    ``select_layers``: ``layer_delta_ce`` the single-layer ablation cost of every candidate layer,
    ``delta_ce`` that of the kept layers together, ``max_delta_ce`` the budget (nats, calibration text)."""

    kind = "direction"
    width_fields = ("directions",)
    directions: dict[str, torch.Tensor]
    layer_delta_ce: dict[str, float] | None = None
    delta_ce: float | None = None
    max_delta_ce: float | None = None


def calibrate_directions(behaviour_resid: Mapping[str, torch.Tensor],
                         contrast_resid: Mapping[str, torch.Tensor], max_rank: int = 4) -> DirectionCalibration:
    """Up to ``max_rank`` orthonormal behaviour directions per site from {site: [n, d_model]} behaviour /
    contrast data: the difference of means first (see the module docstring)."""
    if max_rank < 1:
        raise ToolkitError(f"defense 'direction_ablation': max_rank must be >= 1, got {max_rank}")
    name = "direction_ablation"
    missing = set(behaviour_resid) ^ set(contrast_resid)
    if missing:
        raise ToolkitError(f"defense {name!r}: behaviour and contrast data cover different sites: {sorted(missing)}")
    widths = {site: torch.as_tensor(x).shape[-1] for site, x in behaviour_resid.items()}
    beh = check_site_data(behaviour_resid, widths, defense=name, what="behaviour activations")
    con = check_site_data(contrast_resid, widths, defense=name, what="contrast activations")
    out = {}
    for site in beh:
        first = difference_of_means(beh[site], con[site], defense=name, site=site)
        centred = beh[site].to(torch.float64) - con[site].to(torch.float64).mean(0)
        centred = centred - (centred @ first) @ first.T  # what the first direction leaves
        _, sv, vh = torch.linalg.svd(centred, full_matrices=False)
        more = vh[: max_rank - 1][sv[: max_rank - 1] > 1e-9 * max(float(sv[0]) if sv.numel() else 0.0, 1.0)].T
        out[site] = torch.cat([first, more], dim=1).float()
    return DirectionCalibration(directions=out)


@dataclass(frozen=True)
class DirectionConfig(DefenseConfig):
    """Direction ablation: ``sites`` (default: every calibrated site), ``rank`` (the first this many of the
    calibrated directions), ``strength`` in [0, 1], ``sink_ratio`` (see ``guard.sae_ops.sink_mask``),
    ``calibration`` folder."""

    name = "direction_ablation"
    sites: Sequence[str] = ()
    rank: int = 1
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
        if config.rank < 1:
            raise ToolkitError(f"defense {name!r}: rank must be >= 1, got {config.rank}")
        self.calibration = resolve(calibration, config.calibration, DirectionCalibration, name)
        self._sites = config.sites or self.calibration.sites
        widths = {s: self.calibration.directions[s].shape[0] for s in self.calibration.sites}
        check_covers(self.calibration, self._sites, widths, defense=name)
        self.basis = {}
        for site in self._sites:
            q, _ = torch.linalg.qr(self.calibration.directions[site][:, : config.rank].to(torch.float64))
            self.basis[site] = q.float()  # fewer than rank where the calibration found fewer directions

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


def every_layer(model) -> list[str]:
    """``blocks.N.hook_resid_post`` for every layer of ``model``."""
    return [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]


def select_layers(model, calibration: DirectionCalibration, tokens: torch.Tensor, max_delta_ce: float = 0.1, *,
                  sink_ratio: float | None = DirectionConfig.sink_ratio) -> DirectionCalibration:
    """The calibration restricted to the layers whose rank-1 ablation costs at most ``max_delta_ce`` nats of
    next-token loss on ``tokens`` [batch, pos] (benign text), alone and together: layers are ranked by
    their own cost and the longest prefix of that ranking whose joint cost fits is kept, found by
    bisection (where none fits, the cheapest layer alone, with a warning)."""
    name = DirectionConfig.name
    if not max_delta_ce > 0:
        raise ToolkitError(f"defense {name!r}: max_delta_ce must be > 0 nats, got {max_delta_ce}")

    def ablation(sites: Sequence[str]) -> DirectionAblation:
        return DirectionAblation(DirectionConfig(sites=tuple(sites), sink_ratio=sink_ratio), calibration=calibration)

    cost = {s: r.delta_ce for s, r in measure_utility_many(model, {s: ablation([s]) for s in calibration.sites},
                                                            tokens).items()}
    ranked = sorted((s for s in cost if cost[s] <= max_delta_ce), key=cost.__getitem__)
    if not ranked:  # still a defense to evaluate, its cost in every utility table
        cheapest = min(cost, key=cost.__getitem__)
        warnings.warn(f"defense {name!r}: no layer's ablation costs <= {max_delta_ce} nats on the benign calibration "
                      f"text; keeping the cheapest, {cheapest} ({cost[cheapest]:+.3f} nats)", stacklevel=2)
        ranked = [cheapest]
    joint = {1: cost[ranked[0]]}

    def joint_cost(n: int) -> float:
        if n not in joint:
            joint[n] = measure_utility_many(model, {"joint": ablation(ranked[:n])}, tokens)["joint"].delta_ce
        return joint[n]

    low, high = 1, len(ranked)  # bisection: the joint cost grows with the prefix (each layer adds its own)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if joint_cost(mid) <= max_delta_ce else (low, mid - 1)
    kept = set(ranked[:low])
    return DirectionCalibration(directions={s: d for s, d in calibration.directions.items() if s in kept},
                                layer_delta_ce=cost, delta_ce=joint[low], max_delta_ce=max_delta_ce)


def _calibrate(data: CalibrationData) -> DirectionCalibration:
    options = data.options_for(DirectionConfig.name)
    budget = options.pop("max_delta_ce", 0.1)
    if data.model is None or not data.behaviour_prompts or not data.contrast_prompts:
        return calibrate_directions(data.behaviour, data.contrast, **options)  # the defended sites' data alone
    sites = every_layer(data.model)
    calib = calibrate_directions(last_token_resid(data.model, data.behaviour_prompts, sites),
                                 last_token_resid(data.model, data.contrast_prompts, sites), **options)
    if data.benign_tokens is None or budget is None:
        return calib
    return select_layers(data.model, calib, data.benign_tokens, budget)


SPEC = DefenseSpec(DirectionConfig, DirectionAblation,
                   default=lambda features, sites, calibration: DirectionConfig(calibration=calibration),
                   calibrate=_calibrate,
                   selftest=lambda features: DirectionConfig(),
                   sweep=Sweep("rank", (1, 2, 4)))
