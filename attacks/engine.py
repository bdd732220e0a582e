"""The recovery attack engine: one template ``run`` with small hooks for the step.

Source: post-intervention recovery (Cui, Shen, Yang, arXiv 2606.18322, section 2 of
docs/METHOD.md), rebuilt to fix the reference implementation's flaws: delta itself is
re-projected after every step (not only the gradient), cross-layer constraints are real
(Jacobian null-space projection with restoration, or an augmented Lagrangian), examples are
optimised together with their own deltas, budgets and stops, and every step starts at the
perturbed layer with the unchanged prefix cached.

Threat model: a ``ThreatModel`` (sites, positions, norm, budget, constraint); the attacker
knows the defense and differentiates through ``defense.edit`` (adaptive).

``RecoveryAttack.run(batch)`` does: setup (one un-attacked defended forward), then for each
restart and step: forward the still-running examples, record the best feasible delta per
example, stop those that succeed, and call ``step`` for the rest. Finally it re-checks
every reported success with an independent full forward from token 0 and measures drift
there. Against a randomized defense (``defense.draws`` > 1) every search step runs that many
forwards on the attacker's own random stream and uses their mean score (expectation over
transformation); no row stops on the attacker's own draws (their noise would end searches
early): each keeps its best delta by mean score, and the check runs every one on the judge's
draws and takes their majority. Subclasses override ``init_delta``/``init_state``/``step`` (and ``needs_grad``).

Example::

    threat = ThreatModel.make("blocks.12.hook_resid_post", budget=0.5, constraint="encoder")
    attack = GradientRecovery(model, defense, threat, LogitDifference(io, s), AttackConfig(steps=50))
    result = attack.run(batch)
    result.success, result.relative_norm, result.orthogonality
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from attacks import metrics
from attacks.batch import AttackBatch
from attacks.forward import DefendedForward, StepOutput, frozen_weights, full_forward
from attacks.objectives import Objective
from attacks.perturbation import Perturbation
from attacks.projection import nullspace_step, orthogonality_ratio, scale_to
from attacks.threat import BoundThreat, CrossLayer, CrossLayerMethod, Norm, Scope, ThreatModel
from guard.base import Defense
from guard.errors import ToolkitError
from guard.sae_ops import straight_through

MAX_JACOBIAN_BYTES = 2 * 2**30  # one batched vector-Jacobian product holds m x [batch, pos, d_model]


@dataclass(frozen=True)
class AttackConfig:
    """Optimiser settings of the gradient recovery attack.

    Arguments:
        steps: optimisation steps per restart.
        step_size: per-step move as a fraction of the budget radius.
        optimizer: ``adam`` (update scaled by radius / sqrt(d_model)) or ``sgd`` (normalised gradient, L2 PGD).
        restarts: extra restarts from random feasible points for examples not yet recovered.
        seed: seeds the random restarts.
        stop_margin: an example stops once it succeeds with this margin to spare (so the
            final independent check, which uses margin 0, is not flipped by float noise).
        reuse_prefix: cache keys/values before the first perturbed position.
        detector_weight: weight of the defense's own detector score in the loss (a defense with
            ``excess(valid=)`` and ``flags(valid=)``, e.g. the error monitor; ``valid`` masks padding):
            the attacker also minimises ``relu(score - tau)``.
            Whatever the weight, a flagged example never counts as recovered.
        straight_through: differentiate inactive SAE latents as if linear (``guard.sae_ops.straight_through``),
            for defenses whose path runs through latents below their JumpReLU threshold.
    """

    name: ClassVar[str] = "gradient"
    steps: int = 100
    step_size: float = 0.1
    optimizer: str = "adam"
    restarts: int = 0
    seed: int = 0
    stop_margin: float = 1e-2
    reuse_prefix: bool = True
    detector_weight: float = 0.0
    straight_through: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.restarts < 0:
            raise ToolkitError(f"attack {self.name!r}: steps and restarts must be >= 0")
        if not math.isfinite(self.detector_weight) or self.detector_weight < 0:
            raise ToolkitError(f"attack {self.name!r}: detector_weight must be finite and >= 0")
        if self.optimizer not in ("adam", "sgd"):
            raise ToolkitError(f"attack {self.name!r}: optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


def _listed(x: torch.Tensor) -> list:
    return x.detach().cpu().tolist()


@dataclass(frozen=True)
class AttackResult:
    """Per-example outcome of one attack run (tensors of length batch).

    success: recovered, confirmed by an independent full forward (and within the drift
    threshold for cross-layer threats). score / defended_score: objective with the found
    delta / with none. steps: optimisation steps used. delta_norm: max L2 norm of delta over
    perturbed positions and sites; relative_norm: the same divided by ||h_def||.
    orthogonality: max ``||W_enc[:,S]^T delta|| / (||W_enc[:,S]||_2 ||delta||)`` over
    defended perturbed sites (nan where none is defended). drift, floor_violation,
    reactivation: metrics over the monitored defended latents (docs/METHOD.md, section 3).
    grad_norm: norm of the projected gradient at the attack's first step (nan where no gradient step
    ran). claimed: the search's own success before the independent check (``claimed & ~success``
    is a disagreement). flagged: the defense's detector flagged the final input (False without one).
    """

    attack: str
    threat: dict[str, Any]
    config: dict[str, Any]
    success: torch.Tensor
    score: torch.Tensor
    defended_score: torch.Tensor
    steps: torch.Tensor
    delta_norm: torch.Tensor
    relative_norm: torch.Tensor
    orthogonality: torch.Tensor
    drift: torch.Tensor
    floor_violation: torch.Tensor
    reactivation: torch.Tensor
    perturbations: tuple[Perturbation, ...]
    wall_seconds: float
    grad_norm: torch.Tensor
    claimed: torch.Tensor
    flagged: torch.Tensor
    flags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n(self) -> int:
        return int(self.success.numel())

    @property
    def recovered(self) -> int:
        return int(self.success.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (deltas left out: they belong in tensor files, not JSON)."""
        return {
            "attack": self.attack,
            "threat": self.threat,
            "config": self.config,
            "n": self.n,
            "recovered": self.recovered,
            "wall_seconds": self.wall_seconds,
            "flags": list(self.flags),
            "examples": {
                k: _listed(getattr(self, k))
                for k in ("success", "score", "defended_score", "steps", "delta_norm", "relative_norm",
                          "orthogonality", "drift", "floor_violation", "reactivation", "grad_norm", "claimed",
                          "flagged")
            },
        }


class RowState(dict):
    """Per-row optimiser state; every tensor has the active rows as its first dim."""

    def select(self, keep: torch.Tensor) -> RowState:
        return RowState({k: (v[keep] if isinstance(v, torch.Tensor) else {s: t[keep] for s, t in v.items()})
                       for k, v in self.items()})


@dataclass
class RunContext:
    """What a step needs besides the rows: the cached forward, the bound threat, radii and masks."""

    forward: DefendedForward
    bound: BoundThreat
    radius: dict[str, torch.Tensor]  # [batch, pos] (scope position) or [batch]
    masks: dict[str, torch.Tensor]  # bool [batch, pos]
    generator: torch.Generator
    flags: set[str]
    grad_norm: torch.Tensor  # [batch], nan until a row's first gradient step

    @property
    def sites(self) -> tuple[str, ...]:
        return self.bound.sites


def work_dtype(resid: torch.Tensor) -> torch.dtype:
    """The attack's arithmetic (deltas, scores): at least float32 for a bfloat16 or float16 model, whose
    rounding would otherwise swallow small steps; a float64 model keeps float64."""
    return torch.promote_types(resid.dtype, torch.float32)


class RecoveryAttack:
    """Template of every recovery attack: ``run(batch) -> AttackResult``.

    Arguments:
        model: TransformerLens HookedTransformer.
        defense: the ``guard.base.Defense`` under attack.
        threat: ``ThreatModel``.
        objective: an ``attacks.objectives.Objective``.
        config: ``AttackConfig`` (or a subclass).
    """

    needs_grad: ClassVar[bool] = True

    def __init__(self, model, defense: Defense, threat: ThreatModel, objective: Objective,
                 config: AttackConfig | None = None) -> None:
        self.model = model
        self.defense = defense
        self.threat = threat
        self.objective = objective
        self.config = config or AttackConfig()
        self.bound = threat.bind(defense, model)  # projectors computed once per attack
        self.constraint = threat.constraint

    @property
    def name(self) -> str:
        return self.config.name

    # -- hooks for subclasses ----------------------------------------------------------------
    def init_delta(self, ctx: RunContext, rows: torch.Tensor, restart: int,
                   init: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Restart 0 starts at ``init`` (projected into the threat set) or delta = 0 (the defended
        state); later restarts at a random feasible point."""
        if restart > 0:
            return random_feasible(ctx, rows, full=False)
        if init is None:
            return {s: torch.zeros_like(ctx.forward.start_resid[rows], dtype=work_dtype(ctx.forward.start_resid))
                    for s in ctx.sites}
        return {s: ctx.bound.project(s, init[s][rows].to(work_dtype(ctx.forward.start_resid)), ctx.masks[s][rows],
                                     ctx.radius[s][rows]) for s in ctx.sites}

    def init_state(self, ctx: RunContext, rows: torch.Tensor, deltas: dict[str, torch.Tensor]) -> RowState:
        return RowState()

    def step(self, ctx: RunContext, rows: torch.Tensor, deltas: dict[str, torch.Tensor], out: StepOutput,
             score: torch.Tensor, drift: torch.Tensor, state: RowState) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- the template ------------------------------------------------------------------------
    def _drift_threshold(self) -> float:
        return self.constraint.drift_threshold if isinstance(self.constraint, CrossLayer) else math.inf

    def _detector(self) -> bool:
        return hasattr(self.defense, "excess")

    @staticmethod
    def _real(batch: AttackBatch, rows: torch.Tensor, out: StepOutput) -> torch.Tensor:
        """Bool [n, L]: the real (not padding) tokens among a search forward's columns."""
        return out.take(batch.valid()[rows]) & out.computed

    def _saes(self) -> list:
        return [d.sae for d in (*self.bound.monitored, *self.defense.defended_latents())]

    def _search_context(self):
        return straight_through() if self.config.straight_through else contextlib.nullcontext()

    def run(self, batch: AttackBatch, budget: torch.Tensor | None = None,
            rows: torch.Tensor | None = None, progress: bool = False,
            init: dict[str, torch.Tensor] | None = None) -> AttackResult:
        """Attack the examples of ``batch`` (only ``rows`` if given: the others are reported not
        recovered, with 0 steps); ``budget`` optionally overrides the threat's budget per example [batch];
        ``init`` {site: [batch, pos, d_model]} is where restart 0 starts (e.g. an earlier stage's best
        delta); ``progress`` shows a progress bar over steps with the number of examples still running."""
        with self._search_context(), frozen_weights(self.model, *self._saes()):
            return self._run(batch, budget, rows, progress, init)

    def _run(self, batch, budget, rows, progress, init) -> AttackResult:
        start = time.perf_counter()
        cfg, objective = self.config, self.objective
        fwd = DefendedForward(self.model, self.bound, batch, objective.readout(batch), cfg.reuse_prefix)
        masks = fwd.masks
        radius = {s: self.bound.radius(s, fwd.resid_def[s], masks[s], budget) for s in self.bound.sites}
        gen = torch.Generator(device=batch.tokens.device).manual_seed(cfg.seed)
        ctx = RunContext(fwd, self.bound, radius, masks, gen, set(),
                         torch.full((batch.size,), math.nan, device=batch.tokens.device))
        n = batch.size
        dtype = work_dtype(fwd.start_resid)
        best = {s: torch.zeros_like(fwd.start_resid, dtype=dtype) for s in self.bound.sites}
        best_score = torch.full((n,), -math.inf, device=batch.tokens.device, dtype=dtype)
        defended_score = torch.full((n,), math.nan, device=batch.tokens.device, dtype=dtype)
        success = torch.zeros(n, dtype=torch.bool, device=batch.tokens.device)
        steps_used = torch.zeros(n, dtype=torch.long, device=batch.tokens.device)
        tau = self._drift_threshold()
        monitor = isinstance(self.constraint, CrossLayer)  # only cross-layer reads drift while searching
        selected = torch.ones(n, dtype=torch.bool, device=batch.tokens.device)
        if rows is not None:
            selected = torch.zeros_like(selected).index_fill_(0, torch.as_tensor(rows, device=selected.device), True)

        draws = self.defense.draws
        self.defense.draw(-1 - cfg.seed)  # the attacker's own stream, never one the judge draws
        bar = tqdm(total=(cfg.restarts + 1) * cfg.steps, desc=self.name, disable=not progress, leave=False)
        for restart in range(cfg.restarts + 1):
            rows = (~success & selected).nonzero().flatten()
            if rows.numel() == 0:
                break
            deltas = self.init_delta(ctx, rows, restart, init)
            state = self.init_state(ctx, rows, deltas)
            for step in range(cfg.steps + 1):
                bar.set_postfix(running=len(rows), restart=restart)
                grad = self.needs_grad and step < cfg.steps
                with torch.set_grad_enabled(grad):
                    if grad:
                        deltas = {s: d.detach().requires_grad_() for s, d in deltas.items()}
                    # a randomized defense: the mean score over its draws (expectation over transformation)
                    outs = [fwd.run(rows, deltas, monitor) for _ in range(draws)]
                    out = outs[0]
                    score = torch.stack([objective.score(o.logits, rows) for o in outs]).to(dtype).mean(0)
                    drift = metrics.relative_drift(out.latents, fwd.baseline_latents(rows, out),
                                                   fwd.monitor_mask(rows, out))
                feasible = drift.detach() <= tau
                if self._detector():  # a flagged input is no recovery, whatever the objective says
                    feasible = feasible & (self.defense.excess(valid=self._real(batch, rows, out)).detach() <= 0)
                ok = objective.success(out.logits.detach(), rows, cfg.stop_margin) & feasible
                if draws > 1:  # randomized: no stop on the attacker's own draws; the judge checks the best
                    ok = torch.zeros_like(ok)
                if restart == 0 and step == 0:
                    defended_score[rows] = score.detach()
                better = ok | (feasible & (score.detach() > best_score[rows]))
                better &= ~success[rows]
                if better.any():
                    for s in best:
                        best[s][rows[better]] = deltas[s].detach()[better]
                    best_score[rows[better]] = score.detach()[better]
                success[rows[ok]] = True
                if step == cfg.steps or ok.all():
                    break
                steps_used[rows[~ok]] += 1
                bar.update()
                new = self.step(ctx, rows, deltas, out, score, drift, state)
                keep = ~ok
                rows, state = rows[keep], state.select(keep)
                deltas = {s: d.detach()[keep] for s, d in new.items()}

        bar.close()
        judged = success & selected if draws == 1 else selected  # randomized: every row's best (by mean score)
        return self._finish(batch, ctx, best, judged, defended_score, steps_used, start)

    @torch.no_grad()
    def _finish(self, batch, ctx, best, claimed, defended_score, steps_used, start) -> AttackResult:
        """Independent check: an ordinary full forward from token 0 with the best deltas (exact
        gradients: no straight-through), the detector's flags read from that forward; against a
        randomized defense one per judged draw, the success that of their majority, the scores (and
        the defended score) the mean over those draws."""
        fwd, objective = ctx.forward, self.objective
        perts = tuple(Perturbation(s, best[s], ctx.masks[s]) for s in ctx.sites)
        rows = torch.arange(batch.size, device=batch.tokens.device)
        flagged = torch.zeros(batch.size, dtype=torch.bool, device=batch.tokens.device)
        scores, defended_draws = [], []
        wins = torch.zeros(batch.size, dtype=torch.long, device=batch.tokens.device)
        for i in range(self.defense.draws):  # a randomized defense: the majority of the judge's draws
            self.defense.draw(i)
            self.defense.reset()
            picked, drawn = full_forward(self.model, self.defense, batch, list(perts), self.bound.monitored,
                                         readout=objective.readout(batch))
            if i == 0:
                latents = drawn  # drift is read on the first draw
            detected = self.defense.flags(valid=batch.valid()) if self._detector() else self.defense.flags()
            self.defense.reset()
            if detected is not None:
                flagged = flagged | detected.bool().to(flagged.device)
            scores.append(objective.score(picked, rows))
            wins += objective.success(picked, rows).long()
            if self.defense.draws > 1:  # the defended score on the same judged draw, not the attacker's
                self.defense.draw(i)
                undisturbed, _ = full_forward(self.model, self.defense, batch, [], readout=objective.readout(batch))
                defended_draws.append(objective.score(undisturbed, rows))
        score = torch.stack(scores).mean(0)
        if defended_draws:
            defended_score = torch.stack(defended_draws).mean(0).to(defended_score.dtype)
        valid = fwd.monitor_valid
        drift = metrics.relative_drift(latents, fwd.latents0, valid)
        verified = (2 * wins > self.defense.draws) & (drift <= self._drift_threshold()) & ~flagged
        if self.defense.draws > 1:  # randomized: the search claims nothing itself, the judge decides
            claimed = claimed & verified
        if (claimed & ~verified).any():
            ctx.flags.add("verification_disagrees")
        norms = torch.stack([p.norms().amax(dim=1) for p in perts]).amax(dim=0)
        rel = torch.stack([metrics.relative_norm(best[s], ctx.masks[s], fwd.resid_def[s]) for s in ctx.sites])
        return AttackResult(
            attack=self.name,
            threat=self.threat.to_dict(),
            config=self.config.to_dict(),
            success=claimed & verified,
            score=score,
            defended_score=defended_score,
            steps=steps_used,
            delta_norm=norms,
            relative_norm=rel.amax(dim=0),
            orthogonality=self._orthogonality(perts),
            drift=drift,
            floor_violation=metrics.floor_violation(latents, fwd.latents0, valid),
            reactivation=metrics.reactivation(latents, fwd.latents0, valid),
            perturbations=perts,
            wall_seconds=time.perf_counter() - start,
            grad_norm=ctx.grad_norm,
            claimed=claimed,
            flagged=flagged,
            flags=tuple(sorted(ctx.flags)),
        )

    def _orthogonality(self, perts: tuple[Perturbation, ...]) -> torch.Tensor:
        ratios = []
        for p in perts:
            here = [d for d in self.defense.defended_latents() if d.site == p.site]
            if not here:
                continue
            cols = torch.cat([d.sae.W_enc[:, d.features] for d in here], dim=1)
            r = orthogonality_ratio(cols, p.masked())
            ratios.append(torch.where(p.mask, r, torch.zeros_like(r)).amax(dim=1))
        if not ratios:
            return torch.full((perts[0].delta.shape[0],), math.nan)
        return torch.stack(ratios).amax(dim=0).float()


def random_feasible(ctx: RunContext, rows: torch.Tensor, full: bool = True) -> dict[str, torch.Tensor]:
    """A random feasible delta per site: a Gaussian direction in the constraint subspace, scaled to
    the whole radius (``full``) or to a uniform random fraction of it."""
    threat = ctx.bound.threat
    out = {}
    for s in ctx.sites:
        like = ctx.forward.start_resid[rows]
        g = torch.randn(like.shape, generator=ctx.generator, device=like.device, dtype=like.dtype)
        if threat.norm is Norm.LINF:
            g = g.sign()
        mask = ctx.masks[s][rows]
        g = g * mask[..., None].to(g.dtype)
        proj = ctx.bound.projectors[s]
        if proj is not None:  # scale the feasible part, so the sample really reaches the radius
            g = proj(g)
        r = ctx.radius[s][rows]
        if not full:
            frac = torch.rand(r.shape[:1], generator=ctx.generator, device=r.device, dtype=r.dtype)
            r = r * (frac[:, None] if r.ndim == 2 else frac)
        out[s] = ctx.bound.project(s, scale_to(g, r, threat.norm.value, threat.scope.value), mask, r)
    return out


class GradientRecovery(RecoveryAttack):
    """Projected-gradient recovery (Adam or normalised gradient) under any ``ThreatModel``.

    Each step: gradient of the objective loss (plus the augmented-Lagrangian drift term for
    ``CrossLayer(method="lagrangian")``), projected onto the linear constraint; optimiser
    update scaled to the budget radius; the update projected again (Adam's elementwise
    scaling leaves the subspace); for ``CrossLayer(method="jacobian")`` the update is taken
    off the row space of the downstream defended latents' Jacobian (batched
    vector-Jacobian products) plus a Gauss-Newton restoration step; finally delta itself is
    projected onto the feasible set (linear constraint, then budget).
    """

    def init_state(self, ctx: RunContext, rows: torch.Tensor, deltas: dict[str, torch.Tensor]) -> RowState:
        state = RowState(t=torch.zeros(len(rows), device=rows.device),
                       mu=torch.zeros(len(rows), device=rows.device))
        if self.config.optimizer == "adam":
            state["m"] = {s: torch.zeros_like(d) for s, d in deltas.items()}
            state["v"] = {s: torch.zeros_like(d) for s, d in deltas.items()}
        return state

    def _jacobian_method(self) -> bool:
        return isinstance(self.constraint, CrossLayer) and self.constraint.method is CrossLayerMethod.JACOBIAN

    def _lagrangian_method(self) -> bool:
        return isinstance(self.constraint, CrossLayer) and self.constraint.method is CrossLayerMethod.LAGRANGIAN

    def step(self, ctx, rows, deltas, out, score, drift, state):
        cfg, sites = self.config, ctx.sites
        loss = self.objective.loss(score, rows)
        if cfg.detector_weight > 0 and self._detector():
            loss = loss + cfg.detector_weight * self.defense.excess(valid=self._real(ctx.forward.batch, rows, out))
        if self._lagrangian_method():
            # inequality drift <= tau: (rho/2) max(0, g + mu/rho)^2, multipliers updated by dual ascent
            rho, g = self.constraint.penalty, drift - self.constraint.drift_threshold
            loss = loss + 0.5 * rho * torch.relu(g + state["mu"] / rho).square()
            state["mu"] = torch.relu(state["mu"] + rho * g.detach())
        constrained = self._constrained_rows(ctx, rows, out) if self._jacobian_method() else None
        jac = constrained is not None and constrained[0].shape[1] > 0
        grads = torch.autograd.grad(loss.sum(), [deltas[s] for s in sites], retain_graph=jac)
        state["t"] = state["t"] + 1
        updates = {}
        first = torch.isnan(ctx.grad_norm[rows])
        norms = torch.zeros(len(rows), device=rows.device)
        for s, g in zip(sites, grads, strict=True):
            mask = ctx.masks[s][rows]
            g = g * mask[..., None].to(g.dtype)
            proj = ctx.bound.projectors[s]
            if proj is not None:
                g = proj(g)
            norms = norms + g.flatten(1).norm(dim=1).square().float()
            if state["t"][0] == 1 and (g.flatten(1).norm(dim=1) == 0).any():
                ctx.flags.add("zero_gradient")
            u = self._direction(s, g, mask, state)
            r = ctx.radius[s][rows]
            scale = r[..., None] if r.ndim == 2 else (r / mask.sum(dim=1).clamp_min(1).sqrt())[:, None, None]
            u = -cfg.step_size * scale * u
            updates[s] = proj(u) if proj is not None else u
        ctx.grad_norm[rows[first]] = norms[first].sqrt()
        if jac:
            updates = self._jacobian_correction(ctx, rows, deltas, constrained, updates)
        return {s: ctx.bound.project(s, deltas[s].detach() + updates[s], ctx.masks[s][rows], ctx.radius[s][rows])
                for s in sites}

    def _direction(self, site: str, g: torch.Tensor, mask: torch.Tensor, state: RowState) -> torch.Tensor:
        """Unit-scale ascent direction per position (descent on the loss is ``-direction``)."""
        if self.config.optimizer == "sgd":
            if self.threat.norm is Norm.LINF:
                return g.sign()
            if self.threat.scope is Scope.POSITION:
                return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)
            n_pos = mask.sum(dim=1).clamp_min(1).sqrt()[:, None, None]
            return g / g.flatten(1).norm(dim=1).clamp_min(1e-30)[:, None, None] * n_pos
        b1, b2, eps = 0.9, 0.999, 1e-8
        m = state["m"][site] = b1 * state["m"][site] + (1 - b1) * g
        v = state["v"][site] = b2 * state["v"][site] + (1 - b2) * g.square()
        t = state["t"][:, None, None]
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        u = m_hat / (v_hat.sqrt() + eps)
        # Adam coordinates are ~±1, so ||u|| ~ sqrt(d): rescale so a step moves ~step_size * radius.
        return u / math.sqrt(g.shape[-1]) if self.threat.norm is Norm.L2 else u

    # -- cross-layer: exact linearised projection ---------------------------------------------
    def _constrained_rows(self, ctx: RunContext, rows: torch.Tensor, out: StepOutput):
        """Flattened downstream defended latents [n, m], their baseline and validity."""
        fwd = ctx.forward
        base = fwd.baseline_latents(rows, out)
        valid = fwd.monitor_mask(rows, out)
        phi, phi0, ok = [], [], []
        for d, z, z0 in zip(self.bound.monitored, out.latents, base, strict=True):
            if d.site in ctx.sites and ctx.bound.projectors[d.site] is not None:
                continue  # held exactly by the encoder projector
            phi.append(z.flatten(1))
            phi0.append(z0.flatten(1))
            ok.append(valid[..., None].expand_as(z).flatten(1))
        if not phi:
            empty = torch.zeros(len(rows), 0, device=rows.device)
            return empty, empty, empty.bool()
        return torch.cat(phi, 1), torch.cat(phi0, 1), torch.cat(ok, 1)

    def _jacobian_correction(self, ctx, rows, deltas, constrained, updates):
        phi, phi0, ok = constrained
        n, m = phi.shape
        sites = ctx.sites
        size = m * sum(deltas[s].numel() for s in sites) * deltas[sites[0]].element_size()
        if size > MAX_JACOBIAN_BYTES:
            raise ToolkitError(
                f"cross-layer constraint (jacobian) at {list(sites)}: the Jacobian of {m} monitored latent values "
                f"per example would take {size / 2**30:.1f} GiB; use CrossLayer(method='lagrangian'), fewer "
                "positions, or fewer examples per run"
            )
        eye = torch.eye(m, device=phi.device, dtype=phi.dtype)[:, None, :].expand(m, n, m)
        jac = torch.autograd.grad(phi, [deltas[s] for s in sites], grad_outputs=eye, is_grads_batched=True)
        okf = ok.to(phi.dtype)
        # [m, n, T, d] per site -> [n, m, sum T*d]; rows of invalid coordinates are dropped (zeroed)
        jac = torch.cat([(j * ctx.masks[s][rows][None, ..., None].to(j.dtype)).flatten(2) for s, j
                         in zip(sites, jac, strict=True)], dim=2).transpose(0, 1) * okf[..., None]
        flat = torch.cat([updates[s].flatten(1) for s in sites], dim=1)
        residual = (phi.detach() - phi0) * okf
        flat = nullspace_step(jac, flat, residual)
        out_updates, at = {}, 0
        for s in sites:
            size = updates[s][0].numel()
            out_updates[s] = flat[:, at : at + size].reshape(updates[s].shape)
            at += size
        return out_updates
