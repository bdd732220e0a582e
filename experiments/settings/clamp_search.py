"""How many latents a plain clamp takes: the strongest suppression within a utility budget.

Given latents ranked by attribution (``selection.py``), the clamp of the top ``c`` is
measured for each ``c`` of a grid: suppression (selection samples where the behaviour is
present undefended and absent defended, out of those present) and utility cost (next-token
CE increase on benign calibration text). The choice is the count with the most suppressed
samples among those costing at most ``max_delta_ce`` nats, the cheaper one on a tie. When no
count meets the budget the choice is the cheapest, marked ``meets_budget=False``: the budget
is never loosened, the caller reports the setting as not deployable at it. Without a budget
(``max_delta_ce=None``) the largest count is the choice, still measured.

Every point tried is kept in the result, so a run's provenance shows the whole trade-off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from experiments.settings.sample import Sample, behaviour_score, present
from experiments.settings.selection import ScoreFn, SelectionResult
from experiments.settings.validity import score_samples
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.utility import measure_utility_many

DEFAULT_COUNTS = (4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ClampPoint:
    """One clamp tried: its top ``n_latents``, samples suppressed of those present, and its cost."""

    n_latents: int
    suppressed: int
    n_present: int
    delta_ce: float

    def to_dict(self) -> dict[str, Any]:
        return {"n_latents": self.n_latents, "suppressed": self.suppressed, "n_present": self.n_present,
                "delta_ce": self.delta_ce}


@dataclass(frozen=True)
class ClampChoice:
    """The chosen clamp (``selection`` cut to its count) and every point measured on the way."""

    selection: SelectionResult
    chosen: ClampPoint
    points: tuple[ClampPoint, ...]
    max_delta_ce: float | None
    meets_budget: bool

    def to_dict(self) -> dict[str, Any]:
        return {"selection": self.selection.to_dict(), "chosen": self.chosen.to_dict(),
                "points": [p.to_dict() for p in self.points], "max_delta_ce": self.max_delta_ce,
                "meets_budget": self.meets_budget}


def search_clamp(model, saes: Mapping[str, object], ranked: SelectionResult, samples: Sequence[Sample],
                 benign: torch.Tensor, *, max_delta_ce: float | None, counts: Sequence[int] = DEFAULT_COUNTS,
                 score_fn: ScoreFn = behaviour_score, batch_size: int = 16) -> ClampChoice:
    """Search the number of ``ranked`` latents to clamp (to 0) on ``samples`` within ``max_delta_ce``
    nats on ``benign`` [batch, pos] (see module docstring). Counts beyond the ranked list are cut."""
    if max_delta_ce is not None and max_delta_ce < 0:
        raise ToolkitError(f"clamp search: max_delta_ce must be >= 0, got {max_delta_ce}")
    if not counts or any(c < 1 for c in counts):
        raise ToolkitError(f"clamp search: counts must be positive integers, got {tuple(counts)}")
    sizes = sorted({min(int(c), len(ranked.features)) for c in counts})
    clamps = {c: FeatureClamp(ClampConfig(features={ranked.site: ranked.features[:c]}), saes) for c in sizes}
    cost = measure_utility_many(model, clamps, benign)
    shown = present(score_samples(model, samples, batch_size=batch_size, score_fn=score_fn))  # once, undefended
    points = []
    for c, clamp in clamps.items():
        gone = ~present(score_samples(model, samples, defense=clamp, batch_size=batch_size, score_fn=score_fn))
        points.append(ClampPoint(c, int((shown & gone).sum()), int(shown.sum()), cost[c].delta_ce))
    if max_delta_ce is None:
        return ClampChoice(ranked.top(points[-1].n_latents), points[-1], tuple(points), None, True)
    within = [p for p in points if p.delta_ce <= max_delta_ce]
    if within:
        chosen = max(within, key=lambda p: (p.suppressed, -p.delta_ce))
    else:
        chosen = min(points, key=lambda p: p.delta_ce)
    return ClampChoice(ranked.top(chosen.n_latents), chosen, tuple(points), max_delta_ce, bool(within))
