"""Minimal recovering budget per example, by bisection.

The reference reported recovery at one large budget with an unbounded objective; the
honest number is the smallest budget (relative to the residual norm when the threat model
is relative) at which the attack recovers the behaviour. Attacks are not guaranteed to be
monotone in the budget; bisection assumes it (a budget curve, as certify draws, shows
where it fails).

``minimal_budget`` bisects one attack; ``grid_bracket`` and ``refine_brackets`` do the same for any
attack a caller runs (the cascade of a suite), starting from the bracket a budget grid gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attacks.batch import AttackBatch
from attacks.engine import RecoveryAttack
from attacks.perturbation import Perturbation
from guard.errors import ToolkitError


@dataclass(frozen=True)
class MinimalBudgetResult:
    """Per example: ``budget`` the smallest budget found to recover (inf: not even at ``high``),
    ``lower`` the largest budget tested that failed (the true minimum lies in (lower, budget]
    if the attack is monotone), ``relative_norm`` of the delta found at ``budget``, and that
    delta (``perturbations``)."""

    budget: torch.Tensor
    lower: torch.Tensor
    relative_norm: torch.Tensor
    perturbations: tuple[Perturbation, ...]
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.tolist(),
            "lower": self.lower.tolist(),
            "relative_norm": self.relative_norm.tolist(),
            "runs": self.runs,
        }


def minimal_budget(attack: RecoveryAttack, batch: AttackBatch, high: float | None = None, low: float = 0.0,
                   iterations: int = 6) -> MinimalBudgetResult:
    """Bisect each example's budget in [low, high] (the threat's budget by default).

    Each bisection round is one batched attack run with a per-example budget, on the rows
    still being bisected.
    """
    high = attack.threat.budget if high is None else float(high)
    if not 0 <= low < high:
        raise ToolkitError(f"minimal budget: need 0 <= low < high, got low={low}, high={high}")
    n, device = batch.size, batch.tokens.device
    hi = torch.full((n,), high, device=device)
    lo = torch.full((n,), low, device=device)
    first = attack.run(batch, budget=hi)
    found = first.success.clone()
    best = {p.site: p.delta.clone() for p in first.perturbations}
    rel = torch.where(found, first.relative_norm, torch.full_like(first.relative_norm, math.nan))
    runs = 1
    for _ in range(iterations):
        rows = found.nonzero().flatten()
        if rows.numel() == 0:
            break
        mid = (lo + hi) / 2
        res = attack.run(batch, budget=mid, rows=rows)
        runs += 1
        ok = res.success & found
        hi = torch.where(ok, mid, hi)
        lo = torch.where(found & ~ok, mid, lo)
        rel = torch.where(ok, res.relative_norm, rel)
        for p in res.perturbations:
            best[p.site][ok] = p.delta[ok]
    budget = torch.where(found, hi, torch.full_like(hi, math.inf))
    masks = {p.site: p.mask for p in first.perturbations}
    perts = tuple(Perturbation(s, best[s], masks[s]) for s in best)
    return MinimalBudgetResult(budget, torch.where(found, lo, hi), rel, perts, runs)


@dataclass(frozen=True)
class BudgetBracket:
    """A sample's minimal recovering budget lies in (``lower``, ``upper``]; ``upper`` inf: censored (not
    recovered at the largest budget tried, so all that is known is that it exceeds ``lower``)."""

    lower: float
    upper: float

    @property
    def censored(self) -> bool:
        return math.isinf(self.upper)

    def midpoint(self) -> float:
        """Where to test next: the geometric mean (budgets span decades), half of ``upper`` above 0."""
        return math.sqrt(self.lower * self.upper) if self.lower > 0 else self.upper / 2

    def to_dict(self) -> dict[str, float | None]:
        return {"min_budget": None if self.censored else self.upper, "min_budget_lower": self.lower}


def grid_bracket(budgets: Sequence[float], recovered: Sequence[bool]) -> BudgetBracket:
    """The bracket a budget grid gives: up to the smallest budget recovered, from the largest one below it
    that was not (a sample recovered at a budget but not at a larger one is not monotone; the smallest
    recovered budget still bounds the minimum from above)."""
    pairs = sorted(zip((float(b) for b in budgets), (bool(r) for r in recovered), strict=True))
    upper = next((b for b, r in pairs if r), math.inf)
    lower = max((b for b, r in pairs if not r and b < upper), default=0.0)
    return BudgetBracket(lower, upper)


def refine_brackets(brackets: Sequence[BudgetBracket], recovers: Callable[[list[tuple[int, float]]], list[bool]],
                    rounds: int) -> list[BudgetBracket]:
    """Bisect each uncensored bracket ``rounds`` times; ``recovers([(sample index, budget), ...])`` runs the
    attack on all of a round's pairs at once (one batched cascade) and says which recovered."""
    out = list(brackets)
    for _ in range(rounds):
        todo = [(i, b.midpoint()) for i, b in enumerate(out) if not b.censored and b.upper > 0]
        if not todo:
            break
        for (i, mid), ok in zip(todo, recovers(todo), strict=True):
            out[i] = BudgetBracket(out[i].lower, mid) if ok else BudgetBracket(mid, out[i].upper)
    return out
