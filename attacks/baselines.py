"""Baselines every recovery result is read against.

- Unconstrained: the same gradient engine with constraint ``none`` (what the constraint costs).
- Random-direction search: random feasible directions at the full budget, no gradient;
  a sanity baseline (if it beats the optimiser, the optimiser is broken).
The soft-suffix baseline lives in ``attacks/suffix.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacks.engine import AttackConfig, GradientRecovery, RecoveryAttack, random_feasible
from attacks.threat import ThreatModel


def unconstrained(threat: ThreatModel) -> ThreatModel:
    """The same threat without a constraint (sites, positions, norm and budget unchanged)."""
    return threat.with_constraint("none")


class UnconstrainedRecovery(GradientRecovery):
    """``GradientRecovery`` with the constraint dropped: any delta inside the budget.

    Example::

        base = UnconstrainedRecovery(model, defense, threat, objective, AttackConfig(steps=50))
    """

    def __init__(self, model, defense, threat, objective, config=None) -> None:
        super().__init__(model, defense, unconstrained(threat), objective, config)


@dataclass(frozen=True)
class RandomSearchConfig(AttackConfig):
    """Random-direction search: ``steps`` random feasible directions per example at the full budget."""

    name: ClassVar[str] = "random"


class RandomSearch(RecoveryAttack):
    """Sanity baseline: each step tries a fresh random direction in the feasible set, scaled to
    the whole budget; an example stops at its first success. No gradients.

    Threat model: any; the direction is drawn in the constraint subspace (encoder-orthogonal
    at the perturbed site), and cross-layer drift is checked like for every attack.
    """

    needs_grad: ClassVar[bool] = False

    def __init__(self, model, defense, threat, objective, config=None) -> None:
        super().__init__(model, defense, threat, objective, config or RandomSearchConfig())

    def step(self, ctx, rows, deltas, out, score, drift, state):
        return random_feasible(ctx, rows, full=True)
