"""Aggregate per-sample records into one summary row per (defense, setting, threat, budget).

Record fields read here (all but the key fields optional):

- key: ``defense``, ``setting``, ``budget``, ``sample_id``, ``attack``, ``seed``; ``threat``
  (the threat model's name; records without it count as ``"residual"``)
- ``valid``: behaviour present undefended and absent defended (True / False); None when
  it could not be evaluated (an abstain, counted apart, never as a failure)
- ``present``: behaviour present undefended (True / False), the first half of validity
- ``recovered``: the attack brought the behaviour back (None: the attack gave no result)
- ``stage``: the cascade stage of the attack, a name (``adam``, ``pgd_restarts``, ``long``,
  ``random``, ``detector``, ``straight_through``, ``none``) or, in old records, its index;
  ``drift``, ``rel_delta_norm``, ``min_budget`` (smallest budget that recovered, if the
  attack searched for it), ``certified`` (a first-order convex bound shows no recovery is
  possible at this budget)

A sample counts as recovered at a budget when any attack or seed recovered it (the
attacker gets the best of its attacks and restarts); its drift, norms and stage are taken
from the first recovering attack of the cascade (earliest stage, then lowest seed).

McNemar p-values against the reference are reported raw (``p_vs_reference``) and
Holm-Bonferroni adjusted over every test of the run (``p_holm``): a run compares many
defense x budget pairs, and only the adjusted value may be read as significant at alpha.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from certify.stats import Rate, confidence_label, holm, mcnemar
from guard.errors import ToolkitError

ThreatSampleKey = tuple[str, str, str, float, str]  # (defense, setting, threat, budget, sample_id)
DEFAULT_THREAT = "residual"
# cascade order of the named stages (earliest first); other names sort after these
STAGE_ORDER = ("none", "adam", "pgd_restarts", "long", "random", "detector", "straight_through")


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
    threat: str = DEFAULT_THREAT
    present: bool | None = None
    stage: str | None = None

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


def record_threat(record: dict[str, Any]) -> str:
    """The record's threat name; ``"residual"`` when it has none."""
    threat = record.get("threat")
    if threat is None or threat == "":
        return DEFAULT_THREAT
    if isinstance(threat, dict) and threat.get("name"):
        return str(threat["name"])
    return str(threat)


def _stage_rank(stage: Any) -> int:
    if isinstance(stage, bool) or stage is None:
        return len(STAGE_ORDER)
    if isinstance(stage, int):
        return stage
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def _order(record: dict[str, Any]) -> tuple[int, str, str]:
    return (_stage_rank(record.get("stage")), str(record.get("seed")), str(record.get("attack")))


def _stage_name(stage: Any) -> str | None:
    return None if stage is None else str(stage)


def sample_outcomes(records: Iterable[dict[str, Any]]) -> dict[ThreatSampleKey, SampleOutcome]:
    """Combine records into one outcome per (defense, setting, threat, budget, sample_id): records of
    one sample under different threat models stay apart."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        try:
            key = (str(r["defense"]), str(r["setting"]), record_threat(r), float(r["budget"]), str(r["sample_id"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ToolkitError(f"summary: record without a usable defense/setting/budget/sample_id: {err}") from err
        groups[key].append(r)
    out: dict[Any, SampleOutcome] = {}
    for key, group in groups.items():
        defense, setting, threat, budget, sample_id = key
        verdicts = {r.get("valid") for r in group} - {None}
        if len(verdicts) > 1:
            raise ToolkitError(
                f"summary: records disagree on validity of sample {sample_id!r} "
                f"(defense {defense!r}, setting {setting!r}, budget {budget})"
            )
        valid = bool(verdicts.pop()) if verdicts else None
        presence = {bool(r["present"]) for r in group if r.get("present") is not None}
        present = (True in presence) if presence else None
        attempts = sorted((r for r in group if r.get("recovered") is not None), key=_order)
        recovered = any(bool(r["recovered"]) for r in attempts) if valid and attempts else None
        chosen = next((r for r in attempts if r["recovered"]), None)
        certificates = [r["certified"] for r in group if r.get("certified") is not None]
        out[key] = SampleOutcome(
            defense, setting, budget, sample_id,
            valid=valid,
            recovered=recovered,
            attack=None if chosen is None else str(chosen.get("attack")),
            drift=None if chosen is None else as_number(chosen.get("drift")),
            rel_delta_norm=None if chosen is None else as_number(chosen.get("rel_delta_norm")),
            min_budget=None if chosen is None else as_number(chosen.get("min_budget")),
            certified=any(bool(c) for c in certificates) if certificates else None,
            threat=threat,
            present=present,
            stage=None if chosen is None else _stage_name(chosen.get("stage")),
        )
    return out


@dataclass(frozen=True)
class SummaryRow:
    """Bypass statistics of one defense in one setting under one threat at one budget.

    ``rate`` = k_recovered / n_valid with an exact Clopper-Pearson interval (None when
    n_valid == 0: abstain). ``n_present``: samples whose behaviour is present undefended
    (None when no record says). ``mcnemar_*``: exact McNemar test against the ``reference``
    defense on the samples valid under both (b: this defense recovered and the reference
    not; c: the reverse); ``p_vs_reference`` is its p-value again and ``p_holm`` the same
    p Holm-Bonferroni adjusted over every row of the run that has a test.
    ``n_first_recovered``: valid samples whose smallest recovering budget on the grid is
    this one (the minimal-budget distribution across rows). ``stage_counts``: recovered
    samples per cascade stage that first recovered them (samples whose records name no
    stage are left out). ``delta_ce``: utility cost of the defense (next-token loss
    increase on benign text); ``utility``: all utility numbers given for this defense and
    setting (over-refusal, retain drop, ...). ``verified``: what the suite found when it
    checked the defense's implementation (None: not checked).
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
    threat: str = DEFAULT_THREAT
    n_present: int | None = None
    p_vs_reference: float | None = None
    p_holm: float | None = None
    stage_counts: dict[str, int] = field(default_factory=dict)
    verified: bool | None = None
    utility: dict[str, Any] = field(default_factory=dict)

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


def _lookup(table: Mapping[Any, Any] | None, defense: str, setting: str) -> Any:
    if not table:
        return None
    return table.get((defense, setting), table.get(defense))


def _utility_fields(value: Any) -> dict[str, Any]:
    """A setting's utility numbers as a dict: a bare number is its delta_ce."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        number = as_number(value)
        return {} if number is None else {"delta_ce": number}
    out: dict[str, Any] = {}
    for key, v in value.items():
        if isinstance(v, bool | str) or v is None:
            out[str(key)] = v
        elif as_number(v) is not None or isinstance(v, int | float):
            out[str(key)] = as_number(v)
    return out


def summarize(
    records: Iterable[dict[str, Any]],
    utility: Mapping[Any, float | Mapping[str, Any] | None] | None = None,
    reference: str | None = "clamp",
    alpha: float = 0.05,
    verified: Mapping[Any, bool | None] | None = None,
) -> list[SummaryRow]:
    """Summary rows sorted by setting, defense, threat, budget.

    ``utility`` maps a defense name (or a (defense, setting) pair) to its delta_ce, or to a
    dict of utility numbers ({"delta_ce": ..., "over_refusal": ..., "retain_drop": ...}).
    ``reference`` names the defense every other is paired against (McNemar); None: no test.
    ``verified`` maps a defense (or a (defense, setting) pair) to whether its
    implementation passed the suite's checks; rows of defenses not in it get None.
    """
    outcomes = sample_outcomes(records)
    cells: dict[tuple[str, str, str, float], dict[str, SampleOutcome]] = defaultdict(dict)
    for (defense, setting, threat, budget, sample_id), outcome in outcomes.items():
        cells[(defense, setting, threat, budget)][sample_id] = outcome

    # smallest recovering budget per (defense, setting, threat, sample) on the budget grid
    first_budget: dict[tuple[str, str, str, str], float] = {}
    for (defense, setting, threat, budget, sample_id), outcome in sorted(outcomes.items(), key=lambda kv: kv[0][3]):
        if outcome.recovered and (defense, setting, threat, sample_id) not in first_budget:
            first_budget[(defense, setting, threat, sample_id)] = budget

    rows = []
    for (defense, setting, threat, budget), by_sample in cells.items():
        samples = list(by_sample.values())
        counted = [o for o in samples if o.counted]
        recovered = [o for o in counted if o.recovered]
        rate = Rate.of(len(recovered), len(counted), alpha)
        certs = [o.certified for o in counted if o.certified is not None]
        test = None
        ref_cell = cells.get((reference, setting, threat, budget)) if reference and reference != defense else None
        if ref_cell is not None:
            pairs = [(o.recovered, ref_cell[o.sample_id].recovered) for o in counted
                     if o.sample_id in ref_cell and ref_cell[o.sample_id].counted]
            b = sum(1 for x, y in pairs if x and not y)
            c = sum(1 for x, y in pairs if y and not x)
            test = mcnemar(b, c, "exact", n_pairs=len(pairs)) if pairs else None
        presence = [o.present for o in samples if o.present is not None]
        stages: dict[str, int] = defaultdict(int)
        for o in recovered:
            if o.stage is not None:  # records without a stage (no cascade) are not counted here
                stages[o.stage] += 1
        utility_fields = _utility_fields(_lookup(utility, defense, setting))
        checked = _lookup(verified, defense, setting)
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
            n_first_recovered=sum(1 for o in recovered
                                  if first_budget.get((defense, setting, threat, o.sample_id)) == budget),
            drift_median=_median([o.drift for o in recovered]),
            drift_max=_max([o.drift for o in recovered]),
            rel_delta_norm_median=_median([o.rel_delta_norm for o in recovered]),
            min_budget_median=_median([o.min_budget for o in recovered]),
            delta_ce=as_number(utility_fields.get("delta_ce")),
            reference=reference if test is not None else None,
            mcnemar_n=None if test is None else test.n_pairs,
            mcnemar_b=None if test is None else test.b,
            mcnemar_c=None if test is None else test.c,
            mcnemar_p=None if test is None else test.p_value,
            threat=threat,
            n_present=sum(presence) if presence else None,
            p_vs_reference=None if test is None else test.p_value,
            stage_counts=dict(sorted(stages.items(), key=lambda kv: (_stage_rank(kv[0]), kv[0]))),
            verified=None if checked is None else bool(checked),
            utility=utility_fields,
        ))
    rows.sort(key=lambda r: (r.setting, r.defense, r.threat, r.budget))
    adjusted = iter(holm([r.p_vs_reference for r in rows if r.p_vs_reference is not None]))
    return [replace(r, p_holm=next(adjusted)) if r.p_vs_reference is not None else r for r in rows]


def min_budget_distribution(rows: Iterable[SummaryRow]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (defense, setting, threat): how many valid samples first recover at each budget, and never."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    by_cell: dict[tuple[str, str, str], list[SummaryRow]] = defaultdict(list)
    for row in rows:
        by_cell[(row.defense, row.setting, row.threat)].append(row)
    for cell, cell_rows in by_cell.items():
        counts = {r.budget: r.n_first_recovered for r in sorted(cell_rows, key=lambda r: r.budget)}
        n_valid = max((r.n_valid for r in cell_rows), default=0)
        out[cell] = {"first_recovered": counts, "never": max(n_valid - sum(counts.values()), 0)}
    return out


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def rows_to_csv(rows: Iterable[SummaryRow]) -> str:
    buffer = io.StringIO()
    names = [f.name for f in fields(SummaryRow)]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.to_dict().items()})
    return buffer.getvalue()


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def rows_alpha(rows: Iterable[SummaryRow], alpha: float | None = None) -> float:
    """The alpha to label ``rows`` with: ``alpha`` if given, else the rows' own (0.05 when there are none)."""
    if alpha is not None:
        return float(alpha)
    return next((r.alpha for r in rows), 0.05)


def show_threats(rows: Iterable[SummaryRow]) -> bool:
    """Whether tables need a threat column (some row is under a threat other than the default)."""
    return any(r.threat != DEFAULT_THREAT for r in rows)


def other_utility(row: SummaryRow) -> str:
    """The row's utility numbers besides delta_ce, as ``name value`` pairs ("-" when none)."""
    other = {k: v for k, v in row.utility.items() if k != "delta_ce"}
    return ", ".join(f"{k} {_fmt(v)}" for k, v in other.items()) or "-"


def markdown_table(rows: Iterable[SummaryRow], alpha: float | None = None) -> str:
    """A GitHub-markdown table of the rows (rates with exact intervals, McNemar p raw and
    Holm-adjusted, drift, utility). The interval's level is the rows' alpha (or ``alpha``)."""
    rows = list(rows)
    level = confidence_label(rows_alpha(rows, alpha))
    threats = show_threats(rows)
    others = any(set(r.utility) - {"delta_ce"} for r in rows)
    header = ("| setting | defense | " + ("threat | " if threats else "")
              + f"budget | valid | recovered | rate [{level} CI] | McNemar p vs ref | Holm p "
              "| drift med / max | delta CE |" + (" other utility |" if others else ""))
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        rate = "abstain (n=0)" if r.rate is None else f"{r.rate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        if r.rate is not None and confidence_label(r.alpha) != level:
            rate += f" ({confidence_label(r.alpha)})"
        p = "-" if r.mcnemar_p is None else f"{r.mcnemar_p:.3g} ({r.reference}, b={r.mcnemar_b}, c={r.mcnemar_c})"
        lines.append(
            f"| {r.setting} | {r.defense} | " + (f"{r.threat} | " if threats else "")
            + f"{r.budget:g} | {r.n_valid} | {r.k_recovered} | {rate} | {p} | {_fmt(r.p_holm)} "
            f"| {_fmt(r.drift_median)} / {_fmt(r.drift_max)} | {_fmt(r.delta_ce)} |"
            + (f" {other_utility(r)} |" if others else "")
        )
    return "\n".join(lines)
