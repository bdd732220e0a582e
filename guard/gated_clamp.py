"""Gated (conditional) clamping: the clamp edits a token only where a gate fires.

Source: conditional clamping (Khoriaty et al., arXiv 2503.11127; Dynamic SAE Guardrails,
arXiv 2504.08192). A plain clamp edits every token, so its cost on benign text is the cost of
removing its latents everywhere; a gated clamp leaves tokens alone where its gate is quiet.

Gate score of a token at a site: ``s = max_{i in G} z_i / c_i`` over the gate latents ``G``
(default: the clamped latents themselves), ``c_i`` the mean activation of latent i over the
benign tokens where it is active (1 where it never is), so latents of different scale count
alike. The gate fires where ``s > tau``, ``tau = threshold_scale x`` the ``1 - benign_rate``
quantile of benign scores: at the default scale it fires on ``benign_rate`` of benign tokens.
Then ``out = resid + g * clamp_edit`` with ``g = 1[s > tau]``; sink tokens are left alone as
in the plain clamp. ``calibrate_gate`` keeps the sorted benign scores, so any rate can be
chosen later without refitting.

The gate is decided per token, not "from the first firing token on": the attack engine runs
the positions after a cached prompt prefix in a call of their own, and only a per-token rule
gives the same edit there as in one full forward.

Attack surface: the hard gate has zero gradient, so a gradient attacker cannot see that
lowering the gate score switches the clamp off. Inside ``guard.sae_ops.straight_through()``
(the cascade's ``straight_through`` stage) the gate's backward pass is that of
``sigmoid((s - tau) / surrogate_width)``, so that attack moves gate and clamp together; the
forward values never change.

Measured on the subject at blocks.6 (README): the default gate, the clamp's own latents, fires
on position 0 of most chunks (below the sink ratio there) and on tokens whose residual is
aligned with position 0's, where those dense latents are largest; with those tokens spared it
suppresses nothing. A gate that selects the behaviour needs latents chosen for it (``gate``).

Threat model: none (a defense). Shapes: resid [batch, pos, d_model].

Example::

    calib = calibrate_gate(saes, collect_resid(model, benign_tokens, saes), {site: (5, 17)})
    gated = GatedClamp(GatedClampConfig(features={site: (5, 17)}, benign_rate=0.01), saes, calib)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from guard.calibration import Calibration, check_covers, check_site_data, resolve
from guard.clamp import ClampConfig, FeatureClamp, clamp_delta, normalise_features
from guard.errors import ToolkitError, unknown_name
from guard.sae_ops import check_activations, check_features, encode, sink_mask, straight_through_active
from guard.spec import CalibrationData, DefenseSpec, Sweep


@dataclass(frozen=True)
class GateCalibration(Calibration):
    """Per site: ``scales`` [|G|] (mean benign activation of each gate latent where active),
    ``scores`` [n] (sorted benign gate scores); ``gate`` {site: ids} the latents it was fitted for."""

    kind = "gate"
    scales: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    gate: dict[str, list[int]] = field(default_factory=dict)

    def threshold(self, site: str, benign_rate: float) -> float:
        return float(torch.quantile(self.scores[site].to(torch.float64), 1.0 - benign_rate))


def gate_scores(gate_acts: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``max_i z_i / c_i``: the gate latents' activations [..., |G|] -> [...]."""
    return (gate_acts / scales.to(gate_acts.dtype)).amax(dim=-1)


@torch.no_grad()
def calibrate_gate(saes: Mapping[str, object], benign_resid: Mapping[str, torch.Tensor],
                   gate: Mapping[str, Sequence[int]], *, chunk: int = 4096) -> GateCalibration:
    """Scales and sorted benign scores of the ``gate`` latents {site: ids}, from benign
    activations {site: [n, d_model]} (position 0 and sinks already left out)."""
    name = GatedClampConfig.name
    gate = normalise_features(gate)
    scales, scores = {}, {}
    for site, ids in gate.items():
        if site not in saes:
            raise unknown_name("SAE site", site, saes.keys(), f"defense {name!r} calibration")
        if site not in benign_resid:
            raise unknown_name("site with benign activations", site, benign_resid.keys(), f"defense {name!r}")
        if not ids:
            raise ToolkitError(f"defense {name!r} at {site!r}: empty gate")
        sae = saes[site]
        x = check_site_data({site: benign_resid[site]}, int(sae.cfg.d_in), defense=name,
                            what="benign activations")[site]
        ids_t = check_features(torch.tensor(ids), sae, defense=name, site=site)
        z = torch.cat([encode(sae, rows.to(sae.W_dec.dtype))[:, ids_t].double() for rows in x.split(chunk)])
        active = z > 0
        mean_active = z.sum(0) / active.sum(0).clamp_min(1)
        scales[site] = torch.where(active.any(0), mean_active, torch.ones_like(mean_active)).float()
        scores[site] = gate_scores(z, scales[site]).sort().values.float()
    return GateCalibration(scales=scales, scores=scores, gate={s: list(v) for s, v in gate.items()})


@dataclass(frozen=True)
class GatedClampConfig(ClampConfig):
    """Gated clamp: the clamp of ``ClampConfig`` where the gate fires. ``gate`` {site: ids} (empty: the
    clamped latents); ``benign_rate`` of benign tokens the gate fires on, times ``threshold_scale``;
    ``surrogate_width`` of the attacker's straight-through gate; ``calibration`` folder."""

    name = "gated_clamp"
    gate: Mapping[str, Sequence[int]] = field(default_factory=dict)
    benign_rate: float = 0.01
    threshold_scale: float = 1.0
    surrogate_width: float = 0.5
    calibration: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "gate", normalise_features(self.gate))

    def gate_latents(self) -> dict[str, tuple[int, ...]]:
        """{site: gate ids}: the given gate, else the clamped latents."""
        return dict(self.gate) if self.gate else dict(self.features)


class GatedClamp(FeatureClamp):
    """The plain clamp applied only where the gate fires; see the module docstring."""

    config: GatedClampConfig

    def __init__(self, config: GatedClampConfig, saes: Mapping[str, object],
                 calibration: GateCalibration | None = None) -> None:
        super().__init__(config, saes)
        name = config.name
        if not 0.0 < config.benign_rate < 1.0:
            raise ToolkitError(f"defense {name!r}: benign_rate must be in (0, 1), got {config.benign_rate}")
        if config.threshold_scale <= 0 or config.surrogate_width <= 0:
            raise ToolkitError(f"defense {name!r}: threshold_scale and surrogate_width must be > 0, got "
                               f"{config.threshold_scale} and {config.surrogate_width}")
        wanted = config.gate_latents()
        if set(wanted) != set(self.sites):
            raise ToolkitError(f"defense {name!r}: the gate must name exactly the clamp's sites {list(self.sites)}, "
                               f"got {list(wanted)}")
        calib = resolve(calibration, config.calibration, GateCalibration, name)
        check_covers(calib, self.sites, {s: int(sae.cfg.d_in) for s, sae in self.saes.items()}, defense=name)
        fitted = {s: tuple(int(i) for i in calib.gate.get(s, ())) for s in self.sites}
        if fitted != wanted:
            raise ToolkitError(f"defense {name!r}: the calibration was fitted for gate {fitted}, not {wanted}; "
                               "recalibrate")
        self.calibration = calib
        self.gate = {s: check_features(torch.tensor(ids), self.saes[s], defense=name, site=s)
                     for s, ids in wanted.items()}
        self.thresholds = {s: config.threshold_scale * calib.threshold(s, config.benign_rate) for s in self.sites}

    def gate_open(self, resid: torch.Tensor, site: str, feature_acts: torch.Tensor | None = None) -> torch.Tensor:
        """The gate [batch, pos] in resid's dtype: 1 where it fires, 0 elsewhere (straight-through
        sigmoid gradient inside ``straight_through()``). ``feature_acts``: ``encode(resid)`` if known."""
        if feature_acts is None:
            feature_acts = encode(self.saes[site], resid)
        scores = gate_scores(feature_acts[..., self.gate[site]], self.calibration.scales[site])
        tau = self.thresholds[site]
        hard = (scores.detach() > tau).to(resid.dtype)
        if not (straight_through_active() and scores.requires_grad):
            return hard
        soft = torch.sigmoid((scores - tau) / self.config.surrogate_width).to(resid.dtype)
        return hard + (soft - soft.detach())

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        sae, feats = self.saes[site], self.features[site]
        check_activations(resid, sae, defense=self.name, site=site)
        feature_acts = encode(sae, resid)  # one encode serves the clamp and its gate
        change = clamp_delta(sae, feats, feature_acts, self.config).to(resid.dtype)
        keep = (~sink_mask(resid, self.config.sink_ratio)).to(resid.dtype)
        return resid + change * (self.gate_open(resid, site, feature_acts) * keep)[..., None]


def _calibrate(data: CalibrationData) -> GateCalibration:
    return calibrate_gate(data.saes_here(), data.benign, data.features, **data.options_for(GatedClampConfig.name))


SPEC = DefenseSpec(GatedClampConfig, GatedClamp,
                   calibrate=_calibrate,
                   # fires on about half of the tiny world's random benign tokens, so it edits there
                   selftest=lambda features: GatedClampConfig(features=features, mode="multiply", value=0.3,
                                                              benign_rate=0.5),
                   sweep=Sweep("threshold_scale", (0.5, 1.0, 2.0)))
