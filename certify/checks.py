"""Sanity checks computed from per-sample records: every check reports ``ok``, ``raised`` or ``not_applicable``.

In the spirit of AutoAttack's checks: signs that an evaluation is weaker or less coherent
than it looks. A check that finds something raises flags naming the defense, setting (and
budget where it applies), how many samples are affected and a few examples. A check that
cannot be evaluated on a run's records says why (``not_applicable``); when the suite
declared it required (``SuitePlan.required_checks``), that is itself an error flag
(``check_not_evaluated``): silence is never "no problem found".

- ``zero_gradient``: the score's gradient with respect to the perturbation vanished (norm <= 1e-6: float rounding) at the
  start of an attack (record ``grad_norm``): no signal, as
  under gradient masking or a broken graph.
- ``not_monotone_in_budget``: a sample recovered at some budget but not at a larger one
  (the threat sets are nested, so a working attack should not lose it).
- ``recovered_at_zero_budget``: a valid sample "recovered" with budget 0: validity and
  recovery disagree.
- ``random_beats_optimiser``: the cascade's random-search stage recovered a sample every
  gradient stage missed, or reached a higher score on an unrecovered one.
- ``verification_disagrees``: a stage claimed a recovery that the independent forward refused
  (record ``claim_refused``).
- ``inactive_defense``: a defense whose output and verdict at the attacked inputs never differ
  from the reference defense's (record ``binds``): its parameters never bind, so its row
  only repeats the reference's.
- ``exceeds_bound``: an attack's score gain (``score_gain``) above the convex bound
  (``bound``); an error where the record says the bound is exact (``bound_exact``), else a
  warning that the first-order linearisation is loose there.
- ``few_valid_samples``: rows with 0 < n_valid < 30 (``check_few_valid``): the exact
  95% interval around a rate near 1/2 is then wider than +-0.18, too wide to rank defenses by.
- ``no_valid_samples`` / ``abstains`` (info): rows with n_valid == 0, or samples that could
  not be evaluated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from certify.summary import DEFAULT_THREAT, SummaryRow, as_number, record_threat, sample_outcomes
from guard.errors import ToolkitError

_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Flag:
    """One sanity finding. ``severity``: ``error``, ``warning`` or ``info``."""

    kind: str
    severity: str
    message: str
    defense: str | None
    setting: str | None
    budget: float | None
    count: int
    examples: tuple[str, ...] = ()
    threat: str = DEFAULT_THREAT

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples": list(self.examples)}


def _cell(record: dict[str, Any]) -> tuple[str, str, str]:
    return str(record.get("defense")), str(record.get("setting")), record_threat(record)


def check_zero_gradient(records: Iterable[dict[str, Any]], tol: float = 1e-6) -> list[Flag]:
    hits: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for r in records:
        norm = as_number(r.get("grad_norm"))
        if norm is not None and norm <= tol:
            hits[_cell(r)].append(f"{r.get('sample_id')} ({r.get('attack')}, budget {r.get('budget')})")
    return [
        Flag("zero_gradient", "warning",
             f"gradient of the score w.r.t. the perturbation is zero (<= {tol:g}) in {len(ex)} attack runs",
             d, s, None, len(ex), tuple(ex[:_MAX_EXAMPLES]), t)
        for (d, s, t), ex in sorted(hits.items())
    ]


def check_zero_budget(records: Iterable[dict[str, Any]]) -> list[Flag]:
    zero: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for (defense, setting, threat, budget, sample_id), o in sample_outcomes(records).items():
        if o.counted and budget == 0 and o.recovered:
            zero[(defense, setting, threat)].append(sample_id)
    return [
        Flag("recovered_at_zero_budget", "error",
             f"{len(ex)} valid samples count as recovered with budget 0", d, s, 0.0, len(ex),
             tuple(sorted(ex)[:_MAX_EXAMPLES]), t)
        for (d, s, t), ex in sorted(zero.items())
    ]


def check_monotone(records: Iterable[dict[str, Any]]) -> list[Flag]:
    by_sample: dict[tuple[str, str, str, str], list[tuple[float, bool]]] = defaultdict(list)
    for (defense, setting, threat, budget, sample_id), o in sample_outcomes(records).items():
        if o.counted:
            by_sample[(defense, setting, threat, sample_id)].append((budget, bool(o.recovered)))
    broken: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for (defense, setting, threat, sample_id), seq in by_sample.items():
        seq.sort()
        for i, (b_low, rec_low) in enumerate(seq):
            lost = [b for b, rec in seq[i + 1:] if rec_low and not rec]
            if lost:
                broken[(defense, setting, threat)].append(f"{sample_id}: recovered at {b_low:g}, not at {lost[0]:g}")
                break
    return [
        Flag("not_monotone_in_budget", "warning",
             f"{len(ex)} samples recovered at a budget but not at a larger one", d, s, None, len(ex),
             tuple(sorted(ex)[:_MAX_EXAMPLES]), t)
        for (d, s, t), ex in sorted(broken.items())
    ]


def check_random_beats_optimiser(records: Iterable[dict[str, Any]], score_tol: float = 1e-6) -> list[Flag]:
    hits: dict[tuple[str, str, str, float], list[str]] = defaultdict(list)
    for r in records:
        scores = r.get("stage_scores") or {}
        if "random" not in scores:
            continue
        key = (*_cell(r), float(r.get("budget")))
        if r.get("stage") == "random":
            hits[key].append(f"{r.get('sample_id')}: random search recovered it, every gradient stage missed")
            continue
        others = [as_number(v) for k, v in scores.items() if k != "random"]
        best = max((v for v in others if v is not None), default=None)
        rand = as_number(scores["random"])
        if not r.get("recovered") and best is not None and rand is not None \
                and rand > best + score_tol * max(1.0, abs(best)):
            hits[key].append(f"{r.get('sample_id')}: random score {rand:.4g} > best gradient stage {best:.4g}")
    return [
        Flag("random_beats_optimiser", "warning",
             f"random search did better than the gradient stages on {len(ex)} samples", d, s, b, len(ex),
             tuple(sorted(ex)[:_MAX_EXAMPLES]), t)
        for (d, s, t, b), ex in sorted(hits.items())
    ]


def check_verification(records: Iterable[dict[str, Any]]) -> list[Flag]:
    hits: dict[tuple[str, str, str, float], list[str]] = defaultdict(list)
    for r in records:
        if r.get("claim_refused"):
            hits[(*_cell(r), float(r.get("budget")))].append(str(r.get("sample_id")))
    return [
        Flag("verification_disagrees", "error",
             f"{len(ex)} recoveries claimed by the search were refused by the independent forward "
             "(the attack's cached forward and an ordinary one disagree)", d, s, b, len(ex),
             tuple(sorted(ex)[:_MAX_EXAMPLES]), t)
        for (d, s, t, b), ex in sorted(hits.items())
    ]


def check_inactive(records: Iterable[dict[str, Any]]) -> list[Flag]:
    seen: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for r in records:
        if r.get("binds") is not None:
            seen[_cell(r)].append(bool(r["binds"]))
    return [
        Flag("inactive_defense", "warning",
             f"on all {len(binds)} attacked samples the defense's output and verdict equal the reference "
             "defense's: its parameters never bind here, so its bypass rates only repeat the reference's",
             d, s, None, len(binds), (), t)
        for (d, s, t), binds in sorted(seen.items()) if not any(binds)
    ]


def check_exceeds_bound(records: Iterable[dict[str, Any]], atol: float = 1e-6, rtol: float = 1e-4) -> list[Flag]:
    hits: dict[tuple[str, str, str, float], list[tuple[str, bool]]] = defaultdict(list)
    for r in records:
        bound, gain = as_number(r.get("bound")), as_number(r.get("score_gain"))
        if bound is None or gain is None:
            continue
        if gain > bound + atol + rtol * abs(bound):
            hits[(*_cell(r), float(r.get("budget")))].append(
                (f"{r.get('sample_id')} ({r.get('attack')}): gain {gain:.6g} > bound {bound:.6g}", bool(r.get("bound_exact"))))
    flags = []
    for (d, s, t, b), ex in sorted(hits.items()):
        exact = any(e for _, e in ex)
        note = ("the bound is exact here: a bug in the attack, the bound or the threat set" if exact
                else "the first-order bound is loose here (score not linear in the perturbation)")
        flags.append(Flag("exceeds_bound", "error" if exact else "warning",
                          f"{len(ex)} attack results exceed the convex bound; {note}", d, s, b, len(ex),
                          tuple(sorted(text for text, _ in ex)[:_MAX_EXAMPLES]), t))
    return flags


def check_rows(rows: Iterable[SummaryRow]) -> list[Flag]:
    empty: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    abstain: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for row in rows:
        cell = (row.defense, row.setting, row.threat)
        if row.n_valid == 0:
            empty[cell].append(f"budget {row.budget:g}: {row.n_samples} seen, {row.n_invalid} invalid")
        if row.n_abstain:
            abstain[cell].append(f"budget {row.budget:g}: {row.n_abstain} samples")
    flags = [Flag("no_valid_samples", "info", f"no valid samples at {len(ex)} budgets: the rate abstains there",
                  d, s, None, len(ex), tuple(ex[:_MAX_EXAMPLES]), t) for (d, s, t), ex in sorted(empty.items())]
    flags += [Flag("abstains", "info", f"samples that could not be evaluated at {len(ex)} budgets",
                   d, s, None, len(ex), tuple(ex[:_MAX_EXAMPLES]), t) for (d, s, t), ex in sorted(abstain.items())]
    return flags


FEW_VALID = 30


def check_few_valid(rows: Iterable[SummaryRow], minimum: int = FEW_VALID) -> list[Flag]:
    """A warning per (defense, setting) whose cells have fewer than ``minimum`` valid samples
    (but some: no valid sample at all is ``no_valid_samples``), listing each budget's n."""
    hits: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for row in rows:
        if 0 < row.n_valid < minimum:
            hits[(row.defense, row.setting, row.threat)].append(f"budget {row.budget:g}: n={row.n_valid}")
    return [Flag("few_valid_samples", "warning",
                 f"fewer than {minimum} valid samples at {len(ex)} budgets ({'; '.join(ex)}): the intervals are wide "
                 "and a difference between defenses is hard to detect; evaluate more samples",
                 d, s, None, len(ex), tuple(ex[:_MAX_EXAMPLES]), t) for (d, s, t), ex in sorted(hits.items())]


Records = list[dict[str, Any]]


def _attacked(records: Records) -> list[dict[str, Any]]:
    return [r for r in records if r.get("valid") and r.get("recovered") is not None]


def _needs_field(name: str, why: str) -> Callable[[Records, list[SummaryRow]], str | None]:
    def applies(records: Records, rows: list[SummaryRow]) -> str | None:
        return None if any(r.get(name) is not None for r in _attacked(records)) else why
    return applies


def _budgets_applicable(records: Records, rows: list[SummaryRow]) -> str | None:
    budgets = defaultdict(set)
    for (d, s, t, b, _), o in sample_outcomes(records).items():
        if o.counted:
            budgets[(d, s, t)].add(b)
    return None if any(len(b) > 1 for b in budgets.values()) else "no sample was attacked at two budgets"


def _zero_applicable(records: Records, rows: list[SummaryRow]) -> str | None:
    counted = any(o.counted and b == 0 for (_, _, _, b, _), o in sample_outcomes(records).items())
    return None if counted else "budget 0 is not on the grid (or no sample was valid there)"


def _random_applicable(records: Records, rows: list[SummaryRow]) -> str | None:
    ran = any("random" in (r.get("stage_scores") or {}) for r in records)
    return None if ran else "the random-search stage ran on no sample (every sample recovered before it)"


def _rows_applicable(records: Records, rows: list[SummaryRow]) -> str | None:
    return None if rows else "no summary rows"


@dataclass(frozen=True)
class Check:
    """A named check: ``applies(records, rows)`` gives None or why it cannot be evaluated; ``run`` its flags.

    ``reads``: the record fields it reads beyond the cell keys (defense, setting, budget,
    sample_id, valid, recovered), so a renamed record field fails a test instead of silencing
    the check."""

    name: str
    reads: tuple[str, ...]
    applies: Callable[[Records, list[SummaryRow]], str | None]
    run: Callable[[Records, list[SummaryRow]], list[Flag]]


CHECKS: tuple[Check, ...] = (
    Check("zero_gradient", ("grad_norm", "attack"), _needs_field("grad_norm", "no record carries a gradient norm"),
          lambda rec, rows: check_zero_gradient(rec)),
    Check("not_monotone_in_budget", (), _budgets_applicable, lambda rec, rows: check_monotone(rec)),
    Check("recovered_at_zero_budget", (), _zero_applicable, lambda rec, rows: check_zero_budget(rec)),
    Check("random_beats_optimiser", ("stage", "stage_scores"), _random_applicable,
          lambda rec, rows: check_random_beats_optimiser(rec)),
    Check("verification_disagrees", ("claim_refused",),
          _needs_field("claim_refused", "no record says whether a claim was refused"),
          lambda rec, rows: check_verification(rec)),
    Check("inactive_defense", ("binds",), _needs_field("binds", "no record compares the defense with a reference"),
          lambda rec, rows: check_inactive(rec)),
    Check("exceeds_bound", ("bound", "bound_exact", "score_gain"),
          _needs_field("bound", "no record carries a convex bound"), lambda rec, rows: check_exceeds_bound(rec)),
    Check("few_valid_samples", (), _rows_applicable, lambda rec, rows: check_few_valid(rows)),
    Check("no_valid_samples", (), _rows_applicable, lambda rec, rows: check_rows(rows)),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)


@dataclass(frozen=True)
class CheckResult:
    """One check on one run: ``status`` ``ok``, ``raised`` or ``not_applicable`` (``reason`` says why)."""

    check: str
    status: str
    reason: str
    flags: tuple[Flag, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "reason": self.reason,
                "flags": [f.to_dict() for f in self.flags]}


def evaluate_checks(records: Iterable[dict[str, Any]], rows: Iterable[SummaryRow] = (),
                    required: Sequence[str] = ()) -> list[CheckResult]:
    """Every check on the run; a ``required`` check that cannot be evaluated raises ``check_not_evaluated``."""
    unknown = set(required) - set(CHECK_NAMES)
    if unknown:
        raise ToolkitError(f"checks: unknown required checks {sorted(unknown)}; known: {list(CHECK_NAMES)}")
    records, rows = list(records), list(rows)
    out = []
    for check in CHECKS:
        why = check.applies(records, rows)
        if why is not None:
            flags = ()
            if check.name in required:
                flags = (Flag("check_not_evaluated", "error", f"required check {check.name!r} could not be "
                              f"evaluated: {why}", None, None, None, 0),)
            out.append(CheckResult(check.name, "not_applicable", why, flags))
            continue
        flags = tuple(check.run(records, rows))
        out.append(CheckResult(check.name, "raised" if flags else "ok", "", flags))
    return out


def run_checks(records: Iterable[dict[str, Any]], rows: Iterable[SummaryRow] | None = None,
               required: Sequence[str] = ()) -> list[Flag]:
    """All flags for a run: errors first, then warnings, then info."""
    results = evaluate_checks(records, rows or (), required)
    return sorted_flags(results)


def sorted_flags(results: Sequence[CheckResult]) -> list[Flag]:
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted((f for r in results for f in r.flags), key=lambda f: order.get(f.severity, 3))
