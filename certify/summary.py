"""Aggregate per-sample records into one summary row per (defense, setting, budget).

Record fields read here (all but the key fields optional):

- key: ``defense``, ``setting``, ``budget``, ``sample_id``, ``attack``, ``seed``
- ``valid``: behaviour present undefended and absent defended (True / False); None when
  it could not be evaluated (an abstain, counted apart, never as a failure)
- ``recovered``: the attack brought the behaviour back (None: the attack gave no result)
- ``stage``: position of the attack in the cascade; ``drift``, ``rel_delta_norm``,
  ``min_budget`` (smallest budget that recovered, if the attack searched for it),
  ``certified`` (a first-order convex bound shows no recovery is possible at this budget)

A sample counts as recovered at a budget when any attack or seed recovered it (the
attacker gets the best of its attacks and restarts); its drift and norms are taken from
the first recovering attack of the cascade (lowest stage, then lowest seed).
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from certify.files import write_json_atomic, write_text_atomic
from certify.stats import Rate, mcnemar
from guard.errors import ToolkitError

SampleKey = tuple[str, str, float, str]  # (defense, setting, budget, sample_id)


@dataclass(frozen=True)
class SampleOutcome:
    """One sample under one defense and budget, combined over attacks and seeds."""

    defense: str
    setting: str
    budget: float
    sample_id: str
    valid: bool | None
    recovered: bool | None
    attack: str | None
    drift: float | None
    rel_delta_norm: float | None
    min_budget: float | None
    certified: bool | None

    @property
    def counted(self) -> bool:
        """Valid and evaluated: part of the rate's denominator."""
        return self.valid is True and self.recovered is not None


def as_number(value: Any) -> float | None:
    """A finite float from a record field, else None (bools, missing, NaN and inf are not numbers)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _order(record: dict[str, Any]) -> tuple[int, str, str]:
    stage = record.get("stage")
    return (stage if isinstance(stage, int) else 0, str(record.get("seed")), str(record.get("attack")))


def sample_outcomes(records: Iterable[dict[str, Any]]) -> dict[SampleKey, SampleOutcome]:
    """Combine records into one outcome per (defense, setting, budget, sample_id)."""
    groups: dict[SampleKey, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        try:
            key = (str(r["defense"]), str(r["setting"]), float(r["budget"]), str(r["sample_id"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ToolkitError(f"summary: record without a usable defense/setting/budget/sample_id: {err}") from err
        groups[key].append(r)
    out = {}
    for key, group in groups.items():
        verdicts = {r.get("valid") for r in group} - {None}
        if len(verdicts) > 1:
            raise ToolkitError(
                f"summary: records disagree on validity of sample {key[3]!r} "
                f"(defense {key[0]!r}, setting {key[1]!r}, budget {key[2]})"
            )
        valid = bool(verdicts.pop()) if verdicts else None
        attempts = sorted((r for r in group if r.get("recovered") is not None), key=_order)
        recovered = any(bool(r["recovered"]) for r in attempts) if valid and attempts else None
        chosen = next((r for r in attempts if r["recovered"]), None)
        certificates = [r["certified"] for r in group if r.get("certified") is not None]
        out[key] = SampleOutcome(
            *key,
            valid=valid,
            recovered=recovered,
            attack=None if chosen is None else str(chosen.get("attack")),
            drift=None if chosen is None else as_number(chosen.get("drift")),
            rel_delta_norm=None if chosen is None else as_number(chosen.get("rel_delta_norm")),
            min_budget=None if chosen is None else as_number(chosen.get("min_budget")),
            certified=any(bool(c) for c in certificates) if certificates else None,
        )
    return out


@dataclass(frozen=True)
class SummaryRow:
    """Bypass statistics of one defense in one setting at one budget.

    ``rate`` = k_recovered / n_valid with an exact Clopper-Pearson interval (None when
    n_valid == 0: abstain). ``mcnemar_*``: exact McNemar test against the ``reference``
    defense on the samples valid under both (b: this defense recovered and the reference
    not; c: the reverse). ``n_first_recovered``: valid samples whose smallest recovering
    budget on the grid is this one (the minimal-budget distribution across rows).
    ``delta_ce``: utility cost of the defense (next-token loss increase on benign text).
    """

    defense: str
    setting: str
    budget: float
    n_samples: int
    n_invalid: int
    n_abstain: int
    n_valid: int
    k_recovered: int
    rate: float | None
    ci_low: float | None
    ci_high: float | None
    alpha: float
    k_certified: int | None
    n_first_recovered: int
    drift_median: float | None
    drift_max: float | None
    rel_delta_norm_median: float | None
    min_budget_median: float | None
    delta_ce: float | None
    reference: str | None
    mcnemar_n: int | None
    mcnemar_b: int | None
    mcnemar_c: int | None
    mcnemar_p: float | None

    @property
    def rate_obj(self) -> Rate:
        return Rate(self.k_recovered, self.n_valid, self.alpha, self.rate, self.ci_low, self.ci_high)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _max(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(max(values)) if values else None


def _utility(utility: Mapping[Any, float | None] | None, defense: str, setting: str) -> float | None:
    if not utility:
        return None
    value = utility.get((defense, setting), utility.get(defense))
    return as_number(value)


def summarize(
    records: Iterable[dict[str, Any]],
    utility: Mapping[Any, float | None] | None = None,
    reference: str | None = "clamp",
    alpha: float = 0.05,
) -> list[SummaryRow]:
    """Summary rows sorted by setting, defense, budget.

    ``utility`` maps a defense name (or a (defense, setting) pair) to its delta_ce.
    ``reference`` names the defense every other is paired against (McNemar); None: no test.
    """
    outcomes = sample_outcomes(records)
    cells: dict[tuple[str, str, float], dict[str, SampleOutcome]] = defaultdict(dict)
    for (defense, setting, budget, sample_id), outcome in outcomes.items():
        cells[(defense, setting, budget)][sample_id] = outcome

    # smallest recovering budget per (defense, setting, sample) on the budget grid
    first_budget: dict[tuple[str, str, str], float] = {}
    for (defense, setting, budget, sample_id), outcome in sorted(outcomes.items(), key=lambda kv: kv[0][2]):
        if outcome.recovered and (defense, setting, sample_id) not in first_budget:
            first_budget[(defense, setting, sample_id)] = budget

    rows = []
    for (defense, setting, budget), by_sample in cells.items():
        samples = list(by_sample.values())
        counted = [o for o in samples if o.counted]
        recovered = [o for o in counted if o.recovered]
        rate = Rate.of(len(recovered), len(counted), alpha)
        certs = [o.certified for o in counted if o.certified is not None]
        test = None
        ref_cell = cells.get((reference, setting, budget)) if reference and reference != defense else None
        if ref_cell is not None:
            pairs = [(o.recovered, ref_cell[o.sample_id].recovered) for o in counted
                     if o.sample_id in ref_cell and ref_cell[o.sample_id].counted]
            b = sum(1 for x, y in pairs if x and not y)
            c = sum(1 for x, y in pairs if y and not x)
            test = mcnemar(b, c, "exact", n_pairs=len(pairs)) if pairs else None
        rows.append(SummaryRow(
            defense=defense,
            setting=setting,
            budget=budget,
            n_samples=len(samples),
            n_invalid=sum(1 for o in samples if o.valid is False),
            n_abstain=sum(1 for o in samples if o.valid is None or (o.valid and o.recovered is None)),
            n_valid=rate.n,
            k_recovered=rate.k,
            rate=rate.rate,
            ci_low=rate.ci_low,
            ci_high=rate.ci_high,
            alpha=alpha,
            k_certified=sum(certs) if certs else None,
            n_first_recovered=sum(1 for o in recovered if first_budget.get((defense, setting, o.sample_id)) == budget),
            drift_median=_median([o.drift for o in recovered]),
            drift_max=_max([o.drift for o in recovered]),
            rel_delta_norm_median=_median([o.rel_delta_norm for o in recovered]),
            min_budget_median=_median([o.min_budget for o in recovered]),
            delta_ce=_utility(utility, defense, setting),
            reference=reference if test is not None else None,
            mcnemar_n=None if test is None else test.n_pairs,
            mcnemar_b=None if test is None else test.b,
            mcnemar_c=None if test is None else test.c,
            mcnemar_p=None if test is None else test.p_value,
        ))
    rows.sort(key=lambda r: (r.setting, r.defense, r.budget))
    return rows


def min_budget_distribution(rows: Iterable[SummaryRow]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (defense, setting): how many valid samples first recover at each budget, and never."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    by_cell: dict[tuple[str, str], list[SummaryRow]] = defaultdict(list)
    for row in rows:
        by_cell[(row.defense, row.setting)].append(row)
    for cell, cell_rows in by_cell.items():
        counts = {r.budget: r.n_first_recovered for r in sorted(cell_rows, key=lambda r: r.budget)}
        n_valid = max((r.n_valid for r in cell_rows), default=0)
        out[cell] = {"first_recovered": counts, "never": max(n_valid - sum(counts.values()), 0)}
    return out


def rows_to_csv(rows: Iterable[SummaryRow]) -> str:
    buffer = io.StringIO()
    names = [f.name for f in fields(SummaryRow)]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.to_dict().items()})
    return buffer.getvalue()


def write_summary(rows: list[SummaryRow], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``summary.json`` (a list of row objects) and ``summary.csv``; returns both paths."""
    out_dir = Path(out_dir)
    json_path = write_json_atomic(out_dir / "summary.json", [r.to_dict() for r in rows])
    csv_path = write_text_atomic(out_dir / "summary.csv", rows_to_csv(rows))
    return json_path, csv_path


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def markdown_table(rows: Iterable[SummaryRow]) -> str:
    """A GitHub-markdown table of the rows (rates with exact intervals, McNemar p, drift, utility)."""
    header = ("| setting | defense | budget | valid | recovered | rate [95% CI] | McNemar p vs ref "
              "| drift med / max | delta CE |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        level = round(100 * (1 - r.alpha))
        rate = "abstain (n=0)" if r.rate is None else f"{r.rate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        if r.rate is not None and level != 95:
            rate += f" ({level}%)"
        p = "-" if r.mcnemar_p is None else f"{r.mcnemar_p:.3g} ({r.reference}, b={r.mcnemar_b}, c={r.mcnemar_c})"
        lines.append(
            f"| {r.setting} | {r.defense} | {r.budget:g} | {r.n_valid} | {r.k_recovered} | {rate} | {p} "
            f"| {_fmt(r.drift_median)} / {_fmt(r.drift_max)} | {_fmt(r.delta_ce)} |"
        )
    return "\n".join(lines)
