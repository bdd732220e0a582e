"""How a plain clamp is sized: the strongest suppression within a utility budget.

Given latents ranked by attribution (``selection.py``), the clamp of the top ``c`` latents at
value ``v`` (``mode`` "set" or "multiply") is measured for each (c, v) of a grid: suppression
(selection samples where the behaviour is present undefended and absent defended, out of
those present), utility cost (next-token CE increase on benign calibration text) and, with
``retain`` samples (what must survive, e.g. the retain facts of an unlearning setting), the
retain accuracy drop (fraction of retain samples whose behaviour is present undefended minus
defended). The choice is the point with the most suppressed samples among those within
``max_delta_ce`` nats and ``max_retain_drop``, the cheaper one on a tie. When no point meets
the budget the choice is the one that exceeds it least (the largest excess over a budget,
relative to that budget, is smallest), marked ``meets_budget=False``: the budget is never
loosened, the caller reports the setting as not deployable at it. Without any budget the
last point of the grid (most latents, last value) is the choice, still measured.

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
from guard.clamp import MODES, ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.utility import measure_utility_many

DEFAULT_COUNTS = (4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ClampPoint:
    """One clamp tried: its top ``n_latents`` at ``value``, samples suppressed of those present, its
    cost, and the retain accuracy drop (None without retain samples)."""

    n_latents: int
    suppressed: int
    n_present: int
    delta_ce: float
    value: float = 0.0
    retain_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"n_latents": self.n_latents, "value": self.value, "suppressed": self.suppressed,
                "n_present": self.n_present, "delta_ce": self.delta_ce, "retain_drop": self.retain_drop}


@dataclass(frozen=True)
class ClampChoice:
    """The chosen clamp (``selection`` cut to its count, ``mode`` at ``chosen.value``) and every point
    measured on the way."""

    selection: SelectionResult
    chosen: ClampPoint
    points: tuple[ClampPoint, ...]
    max_delta_ce: float | None
    meets_budget: bool
    mode: str = "set"
    max_retain_drop: float | None = None

    def clamp_options(self) -> dict[str, Any]:
        """How the chosen latents are edited: the ``mode`` and ``value`` of a ``ClampConfig``."""
        return {"mode": self.mode, "value": self.chosen.value}

    def clamp_config(self) -> ClampConfig:
        return self.selection.clamp_config(**self.clamp_options())

    def to_dict(self) -> dict[str, Any]:
        return {"selection": self.selection.to_dict(), "mode": self.mode, "chosen": self.chosen.to_dict(),
                "points": [p.to_dict() for p in self.points], "max_delta_ce": self.max_delta_ce,
                "max_retain_drop": self.max_retain_drop, "meets_budget": self.meets_budget}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClampChoice:
        """The choice ``to_dict`` wrote (a cached set-up reads it back)."""
        sel = dict(data["selection"])
        selection = SelectionResult(**{**sel, **{k: tuple(sel[k]) for k in ("features", "attribution", "density")}})
        return cls(selection, ClampPoint(**data["chosen"]), tuple(ClampPoint(**p) for p in data["points"]),
                   data["max_delta_ce"], data["meets_budget"], data["mode"], data["max_retain_drop"])


def accuracy(model, samples: Sequence[Sample], *, defense=None, score_fn: ScoreFn = behaviour_score,
             batch_size: int = 16) -> float:
    """Fraction of ``samples`` whose behaviour is present (under ``defense`` when given)."""
    if not samples:
        raise ToolkitError("accuracy: no samples")
    shown = present(score_samples(model, samples, defense=defense, batch_size=batch_size, score_fn=score_fn))
    return float(shown.float().mean())


def search_clamp(model, saes: Mapping[str, object], ranked: SelectionResult, samples: Sequence[Sample],
                 benign: torch.Tensor, *, max_delta_ce: float | None, counts: Sequence[int] = DEFAULT_COUNTS,
                 values: Sequence[float] = (0.0,), mode: str = "set", retain: Sequence[Sample] = (),
                 max_retain_drop: float | None = None, score_fn: ScoreFn = behaviour_score,
                 batch_size: int = 16) -> ClampChoice:
    """Search the number of ``ranked`` latents and the clamp value on ``samples`` within ``max_delta_ce``
    nats on ``benign`` [batch, pos] and ``max_retain_drop`` on ``retain`` (see module docstring).
    Counts beyond the ranked list are cut."""
    if max_delta_ce is not None and max_delta_ce < 0:
        raise ToolkitError(f"clamp search: max_delta_ce must be >= 0, got {max_delta_ce}")
    if max_retain_drop is not None and not retain:
        raise ToolkitError("clamp search: max_retain_drop needs retain samples")
    if not counts or any(c < 1 for c in counts):
        raise ToolkitError(f"clamp search: counts must be positive integers, got {tuple(counts)}")
    if not values:
        raise ToolkitError("clamp search: values is empty")
    if mode not in MODES:
        raise ToolkitError(f"clamp search: mode must be one of {MODES}, got {mode!r}")
    sizes = sorted({min(int(c), len(ranked.features)) for c in counts})
    grid = [(c, float(v)) for c in sizes for v in values]
    clamps = {(c, v): FeatureClamp(ClampConfig(features={ranked.site: ranked.features[:c]}, mode=mode, value=v),
                                   saes) for c, v in grid}
    cost = measure_utility_many(model, clamps, benign)
    shown = present(score_samples(model, samples, batch_size=batch_size, score_fn=score_fn))  # once, undefended
    kept = accuracy(model, retain, score_fn=score_fn, batch_size=batch_size) if retain else None
    points = []
    for (c, v), clamp in clamps.items():
        gone = ~present(score_samples(model, samples, defense=clamp, batch_size=batch_size, score_fn=score_fn))
        drop = None if kept is None else \
            kept - accuracy(model, retain, defense=clamp, score_fn=score_fn, batch_size=batch_size)
        points.append(ClampPoint(c, int((shown & gone).sum()), int(shown.sum()), cost[(c, v)].delta_ce, v, drop))
    common = {"mode": mode, "max_retain_drop": max_retain_drop, "max_delta_ce": max_delta_ce}
    if max_delta_ce is None and max_retain_drop is None:
        return ClampChoice(ranked.top(points[-1].n_latents), points[-1], tuple(points), meets_budget=True, **common)
    within = [p for p in points if (max_delta_ce is None or p.delta_ce <= max_delta_ce)
              and (max_retain_drop is None or p.retain_drop <= max_retain_drop)]
    if within:
        chosen = max(within, key=lambda p: (p.suppressed, -p.delta_ce))
    else:  # the point that exceeds its budgets least, each excess relative to its budget
        budgets = [(b, f) for b, f in ((max_delta_ce, lambda p: p.delta_ce), (max_retain_drop, lambda p: p.retain_drop))
                   if b is not None]
        chosen = min(points, key=lambda p: max((f(p) - b) / max(b, 1e-3) for b, f in budgets))
    return ClampChoice(ranked.top(chosen.n_latents), chosen, tuple(points), meets_budget=bool(within), **common)
