"""The bypass-versus-utility frontier of a run whose defenses are points ``FAMILY@STRENGTH`` (suite ``frontier``).

From the records and summary rows of one run, per (point, setting): its utility (delta CE and the
setting's own fields), its bypass at each budget with the exact interval, and the distribution of
its valid samples' minimal recovering budgets (record field ``min_budget``; None: not recovered at
the largest budget, censored): the median with an exact order-statistic interval
(``certify.stats.median_interval``, censored values counted as above every budget) and the
fraction recovered at a budget <= b. A point is non-dominated in its setting when no other point
costs at most as much delta CE and has at least as large a median minimal budget, one of them
strictly. ``holding`` follows the frontier's rule: attack unit tests verified, no error flag on
the point, and a 10x longer cascade changing its bypass by at most 0.1; a run without that longer
cascade leaves every point ``unverified``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from certify.checks import Flag
from certify.stats import median_interval, recovered_curve
from certify.summary import SummaryRow

FRONTIER_VERSION = 1
LONG_CHECK_TOLERANCE = 0.1


def split_point(name: str) -> tuple[str, float | None]:
    """``splice@0.25`` -> (``splice``, 0.25); a defense without a sweep -> (name, None)."""
    family, sep, strength = name.partition("@")
    return family, (float(strength) if sep else None)


@dataclass(frozen=True)
class FrontierPoint:
    """One defense at one strength in one setting; see the module docstring."""

    defense: str
    strength: float | None
    setting: str
    name: str
    delta_ce: float | None
    utility: dict[str, Any]
    bypass: dict[str, dict[str, Any]]  # str(budget) -> k, n, rate, ci_low, ci_high
    n_valid: int
    n_censored: int
    median_min_budget: float | None  # None: no valid sample; inf: censored majority
    min_budget_ci: tuple[float | None, float | None]
    recovered_at: dict[str, float] = field(default_factory=dict)  # str(budget) -> fraction recovered at <= budget
    ratio_to_clamp: float | None = None  # inf: this median is censored
    clamp_median: float | None = None  # the reference's median minimal budget in this setting
    verified: bool | None = None
    errors: int = 0
    holding: str = "unverified"
    non_dominated: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["median_min_budget"] = _finite(self.median_min_budget)
        data["min_budget_ci"] = [_finite(v) for v in self.min_budget_ci]
        data["ratio_to_clamp"] = _finite(self.ratio_to_clamp)
        data["clamp_median"] = _finite(self.clamp_median)
        data["median_censored"] = self.median_min_budget is not None and math.isinf(self.median_min_budget)
        data.update(self.utility)
        return data


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isinf(value) else value


def sample_min_budgets(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """Per (defense, setting): each attacked residual sample's minimal budget (inf: censored)."""
    seen: dict[tuple[str, str, str], float] = {}
    for r in records:
        if r.get("attack") in (None, "-") or r.get("threat", "residual") != "residual" or "min_budget_lower" not in r:
            continue
        value = r.get("min_budget")
        seen[(r["defense"], r["setting"], r["sample_id"])] = math.inf if value is None else float(value)
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (defense, setting, _), value in sorted(seen.items()):
        out[(defense, setting)].append(value)
    return out


def frontier_points(records: Sequence[Mapping[str, Any]], rows: Sequence[SummaryRow], flags: Sequence[Flag] = (),
                    reference: str = "clamp@1", alpha: float = 0.05,
                    long_bypass: Mapping[tuple[str, str], Mapping[float, float]] | None = None) -> list[FrontierPoint]:
    """Every (point, setting) of the run; ``long_bypass`` (point, setting) -> {budget: rate} of a 10x longer
    cascade on the same samples, when one was run (else every point stays ``unverified``)."""
    minimal = sample_min_budgets(records)
    by_cell: dict[tuple[str, str], list[SummaryRow]] = defaultdict(list)
    for row in rows:
        if row.threat == "residual":
            by_cell[(row.defense, row.setting)].append(row)
    errors: dict[tuple[str, str], int] = defaultdict(int)
    for f in flags:
        if f.severity == "error":
            errors[(str(f.defense), str(f.setting))] += 1
    points = []
    for (name, setting), cell in sorted(by_cell.items()):
        family, strength = split_point(name)
        cell.sort(key=lambda r: r.budget)
        positive = [r for r in cell if r.budget > 0]
        values = minimal.get((name, setting), [])
        med = median_interval(values, alpha) if values else None
        first = cell[0]
        bypass = {f"{r.budget:g}": {"k": r.k_recovered, "n": r.n_valid, "rate": r.rate, "ci_low": r.ci_low,
                                    "ci_high": r.ci_high} for r in positive}
        holding = _holding(first.verified, errors[(name, setting)], positive,
                           None if long_bypass is None else long_bypass.get((name, setting)))
        points.append(FrontierPoint(
            defense=family, strength=strength, setting=setting, name=name, delta_ce=first.delta_ce,
            utility=dict(first.utility), bypass=bypass, n_valid=max((r.n_valid for r in cell), default=0),
            n_censored=0 if med is None else med.n_censored,
            median_min_budget=None if med is None else med.median,
            min_budget_ci=(None, None) if med is None else (med.low, med.high),
            recovered_at={f"{r.budget:g}": recovered_curve(values, [r.budget])[0] for r in positive} if values else {},
            verified=first.verified, errors=errors[(name, setting)], holding=holding))
    return _mark(points, reference)


def _holding(verified: bool | None, errors: int, rows: Sequence[SummaryRow],
             long_rates: Mapping[float, float] | None) -> str:
    if verified is not True:
        return "no: attack unit tests not verified"
    if errors:
        return f"no: {errors} error flag(s)"
    if long_rates is None:
        return "unverified: no 10x longer cascade run"
    moved = max((abs(long_rates[r.budget] - r.rate) for r in rows if r.rate is not None and r.budget in long_rates),
                default=None)
    if moved is None:
        return "unverified: the longer cascade has no shared budget"
    return "yes" if moved <= LONG_CHECK_TOLERANCE else f"no: a 10x longer cascade moves bypass by {moved:.2f}"


def _mark(points: list[FrontierPoint], reference: str) -> list[FrontierPoint]:
    """Add each point's ratio of median minimal budgets to the reference's and whether it is non-dominated."""
    ref = {p.setting: p.median_min_budget for p in points if p.name == reference}
    out = []
    for p in points:
        base, mine = ref.get(p.setting), p.median_min_budget
        ratio = None
        if base is not None and mine is not None and base > 0 and not math.isinf(base):
            ratio = mine / base
        out.append(replace(p, ratio_to_clamp=ratio, clamp_median=base))
    scored = [p for p in out if p.median_min_budget is not None and p.delta_ce is not None]

    def dominated(p: FrontierPoint) -> bool:
        return any(q is not p and q.setting == p.setting and q.delta_ce <= p.delta_ce
                   and q.median_min_budget >= p.median_min_budget
                   and (q.delta_ce < p.delta_ce or q.median_min_budget > p.median_min_budget) for q in scored)

    return [replace(p, non_dominated=p in scored and not dominated(p)) for p in out]


def frontier_data(points: Sequence[FrontierPoint], provenance: Mapping[str, Any], reference: str) -> dict[str, Any]:
    return {"frontier_version": FRONTIER_VERSION, "reference": reference, "provenance": dict(provenance),
            "points": [p.to_dict() for p in points]}


def _fmt_budget(value: float | None) -> str:
    if value is None:
        return "-"
    return "> max" if math.isinf(value) else f"{value:.3g}"


def leaderboard(points: Sequence[FrontierPoint]) -> str:
    """A markdown table per setting of the non-dominated points (then the rest), most robust first."""
    lines = ["| setting | defense | strength | delta CE | other utility | n valid | median min budget (95% CI) | "
             "x clamp | bypass by budget | frontier | holding |", "|" + "---|" * 11]
    for p in sorted(points, key=lambda p: (p.setting, not p.non_dominated,
                                           -(p.median_min_budget if p.median_min_budget is not None else -1))):
        utility = ", ".join(f"{k} {v:.3g}" for k, v in p.utility.items() if k != "delta_ce" and isinstance(v, float))
        bypass = ", ".join(f"{b}: {c['k']}/{c['n']}" for b, c in p.bypass.items())
        ci = f"[{_fmt_budget(p.min_budget_ci[0])}, {_fmt_budget(p.min_budget_ci[1])}]" if p.n_valid else ""
        ratio = "-" if p.ratio_to_clamp is None else f"{p.ratio_to_clamp:.2g}"
        if p.ratio_to_clamp is not None and math.isinf(p.ratio_to_clamp):  # censored: at least largest / clamp's
            ratio = f"> {max(float(b) for b in p.bypass) / p.clamp_median:.2g}" if p.bypass and p.clamp_median else ">"
        lines.append(f"| {p.setting} | {p.defense} | {'-' if p.strength is None else f'{p.strength:g}'} | "
                     f"{'-' if p.delta_ce is None else f'{p.delta_ce:.3f}'} | {utility or '-'} | {p.n_valid} | "
                     f"{_fmt_budget(p.median_min_budget) if p.n_valid else 'no valid sample'} {ci} | "
                     f"{ratio} | {bypass or '-'} | "
                     f"{'non-dominated' if p.non_dominated else ''} | {p.holding} |")
    return "\n".join(lines)
