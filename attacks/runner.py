"""The one attack runner every pipeline calls: a cascade of diverse attacks over batches of samples.

AutoAttack's lesson (Croce & Hein 2020): one attack is a loose lower bound on what an
attacker can do. A cascade runs a fixed sequence of diverse attacks, each only on the
samples no earlier attack recovered, and keeps the per-sample worst case. The default
stages (``default_stages``):

1. ``adam``: projected Adam from the defended state (the engine's default attack);
2. ``pgd_restarts``: normalised-gradient PGD from the defended state, then from a random
   feasible point (a different optimiser and starting point);
3. ``straight_through``: Adam from the best point so far, differentiating inactive SAE
   latents as if linear (defenses whose path runs through latents below a JumpReLU
   threshold, e.g. a splice, have no gradient there);
4. ``detector`` (only for a defense that flags inputs, ``excess()``): Adam from the best point
   with the detector's own score ``relu(score - tau)`` in the loss;
5. ``long``: Adam for three times the steps, from the best point so far;
6. ``random``: random feasible directions at the full budget, no gradient: the sanity
   baseline (a recovery here that every gradient stage missed is a warning sign).

Every stage is an ``attacks.engine.RecoveryAttack`` with the defense inside the loop, and
every claimed success is re-checked by the engine's independent full forward (a detector's
flag cancels it). Budget 0 runs no stage: one checked forward at delta = 0.

Example::

    outcome = run_cascade(model, defense, threat, objective, batch, default_stages(steps=20))
    outcome.stage        # ('adam', None, 'long', ...)
    outcome.result.success, outcome.result.drift
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import torch

from attacks.baselines import RandomSearch, RandomSearchConfig
from attacks.batch import AttackBatch
from attacks.engine import AttackConfig, AttackResult, GradientRecovery, RecoveryAttack
from attacks.forward import fast_weight_layout
from attacks.objectives import Objective
from attacks.perturbation import Perturbation
from attacks.threat import ThreatModel
from guard.base import Defense
from guard.errors import ToolkitError

S = TypeVar("S")


@dataclass(frozen=True)
class Stage:
    """One attack of a cascade.

    ``name``: shown in records (field ``stage``); ``attack``: a ``RecoveryAttack`` class;
    ``config``: its config; ``from_best``: restart 0 starts at the best delta found so far
    (not at the defended state); ``detector_only``: run only against a defense that flags
    inputs (has ``excess()``).
    """

    name: str
    attack: type[RecoveryAttack]
    config: AttackConfig
    from_best: bool = False
    detector_only: bool = False

    def applies(self, defense: Defense) -> bool:
        return not self.detector_only or hasattr(defense, "excess")


STAGE_NAMES = ("adam", "pgd_restarts", "straight_through", "detector", "long", "random")


def default_stages(steps: int = 20, seed: int = 0, step_size: float = 0.1) -> tuple[Stage, ...]:
    """The default cascade; ``steps`` scales every stage (``long`` runs 3 x steps).

    7 x ``steps`` gradient steps in all on a sample no stage recovers (8 x against a detector):
    the multiples were cut from 2 / 5 (straight-through / long) so that the standard suite fits
    30 minutes on 2 CPU cores."""
    if steps < 0:
        raise ToolkitError(f"attack cascade: steps must be >= 0, got {steps}")
    adam = AttackConfig(steps=steps, step_size=step_size, seed=seed)
    return (
        Stage("adam", GradientRecovery, adam),
        Stage("pgd_restarts", GradientRecovery,
              replace(adam, optimizer="sgd", restarts=1, seed=seed + 1)),
        Stage("straight_through", GradientRecovery,
              replace(adam, straight_through=True, seed=seed + 2), from_best=True),
        Stage("detector", GradientRecovery, replace(adam, detector_weight=1.0, seed=seed + 3),
              from_best=True, detector_only=True),
        Stage("long", GradientRecovery, replace(adam, steps=3 * steps, seed=seed + 4), from_best=True),
        Stage("random", RandomSearch, RandomSearchConfig(steps=steps, seed=seed + 5)),
    )


def single_stage(config: AttackConfig, name: str = "adam") -> tuple[Stage, ...]:
    """A cascade of one gradient attack (the reproduction runs' protocol)."""
    return (Stage(name, GradientRecovery, config),)


@dataclass(frozen=True)
class CascadeOutcome:
    """Per-sample worst case over the stages of one batch.

    ``result``: an ``AttackResult`` whose row i comes from the stage that recovered sample i,
    else from the stage whose final score was highest (its ``steps`` is the total over
    stages, ``grad_norm`` the first gradient stage's, ``claimed`` true where any stage
    claimed a success its independent check refused). ``stage[i]``: the recovering stage's
    name, None if none did. ``stage_scores[i]`` / ``stage_steps[i]``: {stage: final score /
    steps} for every stage that ran on sample i. ``stages_run``: names of the stages run.
    """

    result: AttackResult
    stage: tuple[str | None, ...]
    stage_scores: tuple[dict[str, float], ...]
    stage_steps: tuple[dict[str, int], ...]
    stages_run: tuple[str, ...]
    ever_flagged: tuple[bool, ...]


_ROW_FIELDS = ("success", "score", "delta_norm", "relative_norm", "orthogonality", "drift", "floor_violation",
               "reactivation", "flagged")


def run_cascade(model, defense: Defense, threat: ThreatModel, objective: Objective, batch: AttackBatch,
                stages: Sequence[Stage], budget: torch.Tensor | None = None) -> CascadeOutcome:
    """Run ``stages`` in order on ``batch``, each only on the rows still defended (see module docstring).

    ``budget`` [batch] overrides the threat's budget per row (several budgets in one batch share
    every attack step).
    """
    if not stages:
        raise ToolkitError("attack cascade: no stages given")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ToolkitError(f"attack cascade: stage names must differ, got {names}")
    zero = threat.budget == 0 if budget is None else bool((budget == 0).all())
    if zero:  # the only feasible delta is 0: one checked forward, no steps
        stages = [replace(stages[0], config=replace(stages[0].config, steps=0, restarts=0))]
    n = batch.size
    merged: AttackResult | None = None
    stage: list[str | None] = [None] * n
    scores: list[dict[str, float]] = [{} for _ in range(n)]
    steps: list[dict[str, int]] = [{} for _ in range(n)]
    run_names = []
    ever_flagged = [False] * n
    with fast_weight_layout(model):  # weights in the order the kernels read: no per-call copies
        for st in stages:
            if not st.applies(defense):
                continue
            left = torch.tensor([i for i in range(n) if stage[i] is None], dtype=torch.long)
            if left.numel() == 0:
                break
            init = None
            if st.from_best and merged is not None:
                init = {p.site: p.delta for p in merged.perturbations}
            attack = st.attack(model, defense, threat, objective, st.config)
            res = attack.run(batch, budget=budget, rows=left.to(batch.tokens.device), init=init)
            run_names.append(st.name)
            for i in left.tolist():
                scores[i][st.name] = float(res.score[i])
                steps[i][st.name] = int(res.steps[i])
                ever_flagged[i] = ever_flagged[i] or bool(res.flagged[i])
                if bool(res.success[i]):
                    stage[i] = st.name
            merged = res if merged is None else _merge(merged, res, left, stage, st.name, scores)
    assert merged is not None
    total = torch.tensor([sum(s.values()) for s in steps], dtype=torch.long)
    merged = replace(merged, steps=total.to(merged.steps.device), attack="cascade",
                     config={"stages": [{"stage": s.name, **s.config.to_dict()} for s in stages
                                        if s.name in run_names]})
    return CascadeOutcome(merged, tuple(stage), tuple(scores), tuple(steps), tuple(run_names), tuple(ever_flagged))


def _merge(old: AttackResult, new: AttackResult, left: torch.Tensor, stage: list[str | None], name: str,
           scores: list[dict[str, float]]) -> AttackResult:
    """Row i from ``new`` where stage ``name`` recovered it or beat the best earlier score."""
    take = torch.zeros(old.n, dtype=torch.bool)
    for i in left.tolist():
        best_before = max((v for k, v in scores[i].items() if k != name), default=-math.inf)
        take[i] = stage[i] == name or scores[i][name] > best_before
    fields: dict[str, Any] = {}
    for f in _ROW_FIELDS:
        a, b = getattr(old, f), getattr(new, f)
        fields[f] = torch.where(take.to(a.device), b.to(a.dtype), a)
    grad = torch.where(torch.isnan(old.grad_norm), new.grad_norm, old.grad_norm)
    claimed_bad = (old.claimed & ~old.success) | (new.claimed & ~new.success)
    perts = tuple(Perturbation(p.site, torch.where(take.to(p.delta.device)[:, None, None], q.delta, p.delta), p.mask)
                  for p, q in zip(old.perturbations, new.perturbations, strict=True))
    return replace(old, **fields, grad_norm=grad, claimed=claimed_bad | fields["success"], perturbations=perts,
                   wall_seconds=old.wall_seconds + new.wall_seconds, flags=tuple(sorted({*old.flags, *new.flags})))


@dataclass(frozen=True)
class AttackedChunk(Generic[S]):
    """One attacked batch: its samples, the batch, its objective and the cascade's outcome."""

    samples: list[S]
    batch: AttackBatch
    objective: Objective
    outcome: CascadeOutcome


def attack_samples(model, defense: Defense, threat: ThreatModel, samples: Sequence[S],
                   objective_for: Callable[[list[S]], Objective], tokens_of: Callable[[S], Sequence[int]],
                   stages: Sequence[Stage], *, batch_size: int = 32, budget_of: Callable[[S], float] | None = None,
                   progress: Callable[[int], None] | None = None) -> list[AttackedChunk[S]]:
    """Run the cascade over ``samples`` in batches of ``batch_size``; one ``AttackedChunk`` per batch.

    ``objective_for(chunk)`` builds the objective of a batch in the chunk's order;
    ``tokens_of(sample)`` gives its token ids; ``budget_of(sample)`` its own budget (default: the
    threat's); ``progress(k)`` is called after each batch.
    """
    if batch_size < 1:
        raise ToolkitError(f"attack runner: batch_size must be >= 1, got {batch_size}")
    chunks = []
    for start in range(0, len(samples), batch_size):
        chunk = list(samples[start : start + batch_size])
        batch = AttackBatch.from_lists([list(tokens_of(s)) for s in chunk], device=model.cfg.device)
        budget = None
        if budget_of is not None:
            budget = torch.tensor([float(budget_of(s)) for s in chunk], device=batch.tokens.device)
        objective = objective_for(chunk)
        outcome = run_cascade(model, defense, threat, objective, batch, stages, budget)
        chunks.append(AttackedChunk(chunk, batch, objective, outcome))
        if progress is not None:
            progress(len(chunk))
    return chunks
