"""One table across finished runs (RobustBench-style): ``python -m certify leaderboard DIR...``.

Per run, setting and defense (residual threat): the run's subject, ΔCE and the setting's own
utility, n valid, the bypass at each budget > 0 with its exact interval, the median minimal
recovering budget where the run is a frontier (``frontier.json``: censored samples counted,
with its order-statistic interval) and whether the defense passed its attack unit tests.
Rows of a setting are sorted by the bypass at the largest budget they share, most robust
first. Read-only: it reads ``summary.json`` (and ``frontier.json``) and changes nothing.

Example::

    python -m certify leaderboard certify-out/standard /tmp/fq --out leaderboard.md
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from certify.schema import FRONTIER_FILE, SUMMARY_JSON, read_summary_file
from guard.errors import ToolkitError


def _frontier_medians(folder: Path) -> dict[tuple[str, str], dict[str, Any]]:
    path = folder / FRONTIER_FILE
    if not path.is_file():
        return {}
    try:
        points = json.loads(path.read_text())["points"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ToolkitError(f"certify leaderboard: {path} is not a frontier file of this toolkit: {err}") from err
    return {(p["setting"], p["name"]): p for p in points}


def leaderboard_rows(folders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One dict per (run, setting, defense) of the residual threat; see the module docstring."""
    if not folders:
        raise ToolkitError("certify leaderboard: give at least one output directory")
    out = []
    for folder in map(Path, folders):
        if not (folder / SUMMARY_JSON).is_file():
            raise ToolkitError(f"certify leaderboard: {folder / SUMMARY_JSON} not found; give the --out directory "
                               "of a finished 'certify run' or 'certify frontier'")
        data = read_summary_file(folder / SUMMARY_JSON)
        frontier = _frontier_medians(folder)
        subject = (data.get("provenance") or {}).get("subject") or "?"
        grouped: dict[tuple[str, str], dict[str, Any]] = {}
        for row in data["rows"]:
            if (row.get("threat") or "residual") != "residual":
                continue
            key = (row["setting"], row["defense"])
            entry = grouped.setdefault(key, {"run": str(folder), "subject": subject, "setting": key[0],
                                             "defense": key[1], "utility": row.get("utility") or {},
                                             "delta_ce": row.get("delta_ce"), "verified": row.get("verified"),
                                             "n_valid": row.get("n_valid"), "bypass": {}})
            if row["budget"] > 0:
                entry["bypass"][float(row["budget"])] = {k: row[k] for k in ("k_recovered", "n_valid", "rate",
                                                                             "ci_low", "ci_high")}
        for (setting, defense), entry in grouped.items():
            point = frontier.get((setting, defense))
            entry["median_min_budget"] = None if point is None else point.get("median_min_budget")
            entry["min_budget_ci"] = None if point is None else point.get("min_budget_ci")
            out.append(entry)
    return out


def _robustness(entry: dict[str, Any], budget: float | None) -> float:
    cell = entry["bypass"].get(budget) if budget is not None else None
    return math.inf if cell is None or cell["rate"] is None else cell["rate"]


def _budget(value: float | None) -> str:
    if value is None:
        return "-"
    return "> max" if math.isinf(value) else f"{value:.3g}"


def leaderboard_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: per setting, rows sorted by bypass at the largest budget every row of it has."""
    lines = []
    for setting in sorted({r["setting"] for r in rows}):
        here = [r for r in rows if r["setting"] == setting]
        budgets = sorted(set.intersection(*(set(r["bypass"]) for r in here)))
        top = budgets[-1] if budgets else None
        shown = sorted({b for r in here for b in r["bypass"]})
        lines += [f"### {setting}", "",
                  "| defense | run | subject | delta CE | other utility | n valid | "
                  + " | ".join(f"bypass at {b:g}" for b in shown) + " | median min budget | verified |",
                  "|" + "---|" * (8 + len(shown))]
        for r in sorted(here, key=lambda r: (_robustness(r, top), r["delta_ce"] if r["delta_ce"] is not None
                                             else math.inf)):
            utility = ", ".join(f"{k} {v:.3g}" for k, v in r["utility"].items()
                                if k != "delta_ce" and isinstance(v, (int, float)))
            cells = []
            for b in shown:
                c = r["bypass"].get(b)
                cells.append("-" if c is None or c["rate"] is None else
                             f"{c['k_recovered']}/{c['n_valid']} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]")
            ci = r["min_budget_ci"]
            median = _budget(r["median_min_budget"]) + (f" [{_budget(ci[0])}, {_budget(ci[1])}]" if ci else "")
            verified = {True: "verified", False: "failed", None: "unverified"}[r["verified"]]
            delta = "-" if r["delta_ce"] is None else f"{r['delta_ce']:.3f}"
            lines.append(f"| {r['defense']} | {r['run']} | {r['subject']} | {delta} | {utility or '-'} | "
                         f"{r['n_valid']} | " + " | ".join(cells) + f" | {median} | {verified} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
