"""Sanity flags computed from per-sample records, recorded in every report.

In the spirit of AutoAttack's checks: signs that an evaluation is weaker or less coherent
than it looks. Each flag names the defense, setting (and budget where it applies), how many
samples are affected and a few examples.

- ``zero_gradient``: the score's gradient with respect to the perturbation vanished at the
  start of the attack (record ``grad_norm`` or ``grad_norms`` {site: norm}): the attacker
  had no signal, as under gradient masking or a broken graph.
- ``not_monotone_in_budget``: a sample recovered at some budget but not at a larger one
  (the threat sets are nested, so a working attack should not lose it).
- ``recovered_at_zero_budget``: a valid sample "recovered" with budget 0: validity and
  recovery disagree.
- ``random_beats_optimiser``: random search recovered a sample, or reached a higher score,
  where the optimiser did not (same defense, budget, sample, seed).
- ``exceeds_bound``: an attack's score gain (``score_gain``) above the convex bound
  (``bound``); an error where the record says the bound is exact (``bound_exact``), else a
  warning that the first-order linearisation is loose there.
- ``no_valid_samples`` / ``abstains`` (info): rows with n_valid == 0, or samples that could
  not be evaluated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from certify.summary import SummaryRow, as_number, sample_outcomes

RANDOM_ATTACKS = ("random", "random_search")
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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "examples": list(self.examples)}


def _cell(record: dict[str, Any]) -> tuple[str, str]:
    return str(record.get("defense")), str(record.get("setting"))


def check_zero_gradient(records: Iterable[dict[str, Any]], tol: float = 1e-12) -> list[Flag]:
    hits: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in records:
        norms = []
        if as_number(r.get("grad_norm")) is not None:
            norms.append(("", as_number(r["grad_norm"])))
        if isinstance(r.get("grad_norms"), dict):
            norms.extend((site, as_number(v)) for site, v in r["grad_norms"].items())
        for site, norm in norms:
            if norm is not None and norm <= tol:
                where = f" at {site}" if site else ""
                hits[_cell(r)].append(f"{r.get('sample_id')} ({r.get('attack')}, budget {r.get('budget')}){where}")
    return [
        Flag("zero_gradient", "warning",
             f"gradient of the score w.r.t. the perturbation is zero (<= {tol:g}) in {len(ex)} attack runs",
             d, s, None, len(ex), tuple(ex[:_MAX_EXAMPLES]))
        for (d, s), ex in sorted(hits.items())
    ]


def check_monotone(records: Iterable[dict[str, Any]]) -> list[Flag]:
    by_sample: dict[tuple[str, str, str], list[tuple[float, bool]]] = defaultdict(list)
    zero: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (defense, setting, budget, sample_id), o in sample_outcomes(records).items():
        if not o.counted:
            continue
        by_sample[(defense, setting, sample_id)].append((budget, bool(o.recovered)))
        if budget == 0 and o.recovered:
            zero[(defense, setting)].append(sample_id)
    broken: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (defense, setting, sample_id), seq in by_sample.items():
        seq.sort()
        for i, (b_low, rec_low) in enumerate(seq):
            lost = [b for b, rec in seq[i + 1:] if rec_low and not rec]
            if lost:
                broken[(defense, setting)].append(f"{sample_id}: recovered at {b_low:g}, not at {lost[0]:g}")
                break
    flags = [
        Flag("not_monotone_in_budget", "warning",
             f"{len(ex)} samples recovered at a budget but not at a larger one", d, s, None, len(ex),
             tuple(sorted(ex)[:_MAX_EXAMPLES]))
        for (d, s), ex in sorted(broken.items())
    ]
    flags += [
        Flag("recovered_at_zero_budget", "error",
             f"{len(ex)} valid samples count as recovered with budget 0", d, s, 0.0, len(ex),
             tuple(sorted(ex)[:_MAX_EXAMPLES]))
        for (d, s), ex in sorted(zero.items())
    ]
    return flags


def _is_random(record: dict[str, Any], random_attacks: Sequence[str]) -> bool:
    return record.get("attack") in random_attacks or record.get("attack_kind") == "random"


def check_random_beats_optimiser(records: Iterable[dict[str, Any]], random_attacks: Sequence[str] = RANDOM_ATTACKS,
                                 score_tol: float = 1e-6) -> list[Flag]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("recovered") is None:
            continue
        groups[(str(r.get("defense")), str(r.get("setting")), float(r.get("budget")), str(r.get("sample_id")),
                str(r.get("seed")))].append(r)
    hits: dict[tuple[str, str, float], list[str]] = defaultdict(list)
    for (defense, setting, budget, sample_id, _), group in groups.items():
        rand = [r for r in group if _is_random(r, random_attacks)]
        opt = [r for r in group if not _is_random(r, random_attacks)]
        if not rand or not opt:
            continue
        opt_recovered = any(r["recovered"] for r in opt)
        if any(r["recovered"] for r in rand) and not opt_recovered:
            hits[(defense, setting, budget)].append(f"{sample_id}: random recovered, optimiser did not")
            continue
        rand_scores = [as_number(r.get("score_attacked")) for r in rand]
        opt_scores = [as_number(r.get("score_attacked")) for r in opt]
        rand_best = max((s for s in rand_scores if s is not None), default=None)
        opt_best = max((s for s in opt_scores if s is not None), default=None)
        if rand_best is not None and opt_best is not None and not opt_recovered:
            if rand_best > opt_best + score_tol * max(1.0, abs(opt_best)):
                hits[(defense, setting, budget)].append(
                    f"{sample_id}: random score {rand_best:.4g} > optimiser {opt_best:.4g}")
    return [
        Flag("random_beats_optimiser", "warning",
             f"random search did better than the optimiser on {len(ex)} samples", d, s, b, len(ex),
             tuple(sorted(ex)[:_MAX_EXAMPLES]))
        for (d, s, b), ex in sorted(hits.items())
    ]


def check_exceeds_bound(records: Iterable[dict[str, Any]], atol: float = 1e-6, rtol: float = 1e-4) -> list[Flag]:
    hits: dict[tuple[str, str, float], list[tuple[str, bool]]] = defaultdict(list)
    for r in records:
        bound, gain = as_number(r.get("bound")), as_number(r.get("score_gain"))
        if bound is None or gain is None:
            continue
        if gain > bound + atol + rtol * abs(bound):
            hits[(*_cell(r), float(r.get("budget")))].append(
                (f"{r.get('sample_id')} ({r.get('attack')}): gain {gain:.6g} > bound {bound:.6g}", bool(r.get("bound_exact"))))
    flags = []
    for (d, s, b), ex in sorted(hits.items()):
        exact = any(e for _, e in ex)
        note = ("the bound is exact here: a bug in the attack, the bound or the threat set" if exact
                else "the first-order bound is loose here (score not linear in the perturbation)")
        flags.append(Flag("exceeds_bound", "error" if exact else "warning",
                          f"{len(ex)} attack results exceed the convex bound; {note}", d, s, b, len(ex),
                          tuple(sorted(t for t, _ in ex)[:_MAX_EXAMPLES])))
    return flags


def check_rows(rows: Iterable[SummaryRow]) -> list[Flag]:
    empty: dict[tuple[str, str], list[str]] = defaultdict(list)
    abstain: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in rows:
        if row.n_valid == 0:
            empty[(row.defense, row.setting)].append(f"budget {row.budget:g}: {row.n_samples} seen, {row.n_invalid} invalid")
        if row.n_abstain:
            abstain[(row.defense, row.setting)].append(f"budget {row.budget:g}: {row.n_abstain} samples")
    flags = [Flag("no_valid_samples", "info", f"no valid samples at {len(ex)} budgets: the rate abstains there",
                  d, s, None, len(ex), tuple(ex[:_MAX_EXAMPLES])) for (d, s), ex in sorted(empty.items())]
    flags += [Flag("abstains", "info", f"samples that could not be evaluated at {len(ex)} budgets",
                   d, s, None, len(ex), tuple(ex[:_MAX_EXAMPLES])) for (d, s), ex in sorted(abstain.items())]
    return flags


def run_checks(records: Iterable[dict[str, Any]], rows: Iterable[SummaryRow] | None = None,
               random_attacks: Sequence[str] = RANDOM_ATTACKS) -> list[Flag]:
    """All flags for a run: errors first, then warnings, then info."""
    records = list(records)
    flags = (check_zero_gradient(records) + check_monotone(records)
             + check_random_beats_optimiser(records, random_attacks) + check_exceeds_bound(records))
    if rows is not None:
        flags += check_rows(rows)
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(flags, key=lambda f: order.get(f.severity, 3))
