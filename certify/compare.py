"""Two finished runs side by side: ``python -m certify compare OUT_A OUT_B``.

For every (setting, defense, threat, budget > 0) cell in both runs: each run's recovered / valid
with its exact interval, and, over the samples valid in both (paired by sample id), the
discordant counts (recovered in A only, in B only) and McNemar's exact p-value. This is the test
for "did the change between the runs (longer attack, another seed, a new defense version)
move the bypass rate", on the same samples. The plan fields in which the runs differ are listed,
so a comparison of unlike runs is visible as such. Read-only.

Example::

    python -m certify compare certify-out/standard certify-out/standard-long
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from certify.merge import read_finished_run
from certify.stats import clopper_pearson, mcnemar
from guard.errors import ToolkitError

Cell = tuple[str, str, str, float]  # setting, defense, threat, budget


def _outcomes(folder: Path) -> tuple[dict[str, Any], dict[Cell, dict[str, bool]]]:
    meta, units = read_finished_run(folder, "compare")
    cells: dict[Cell, dict[str, bool]] = {}
    for records in units.values():
        for r in records:
            if not r.get("valid") or float(r["budget"]) <= 0 or r.get("recovered") is None:
                continue
            cell = (r["setting"], r["defense"], r.get("threat") or "residual", float(r["budget"]))
            here = cells.setdefault(cell, {})
            if r["sample_id"] in here:
                raise ToolkitError(f"certify compare: {folder} holds sample {r['sample_id']!r} twice in {cell}; "
                                   "compare runs of one seed each")
            here[r["sample_id"]] = bool(r["recovered"])
    return meta, cells


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The plan-fingerprint fields (and the reference defense) in which two runs differ."""
    fa, fb = a.get("fingerprint") or {}, b.get("fingerprint") or {}
    keys = [k for k in sorted(set(fa) | set(fb))
            if json.dumps(fa.get(k), sort_keys=True) != json.dumps(fb.get(k), sort_keys=True)]
    return keys + (["reference"] if a.get("reference") != b.get("reference") else [])


def compare_runs(first: str | Path, second: str | Path, alpha: float = 0.05) -> dict[str, Any]:
    """``rows`` (one per shared cell, see the module docstring) and ``differences`` of two runs."""
    first, second = Path(first), Path(second)
    meta_a, cells_a = _outcomes(first)
    meta_b, cells_b = _outcomes(second)
    shared = sorted(set(cells_a) & set(cells_b))
    if not shared:
        raise ToolkitError(f"certify compare: {first} and {second} share no (setting, defense, threat, budget) "
                           "cell with valid samples")
    rows = []
    for cell in shared:
        a, b = cells_a[cell], cells_b[cell]
        paired = sorted(set(a) & set(b))
        only_a = sum(a[s] and not b[s] for s in paired)
        only_b = sum(b[s] and not a[s] for s in paired)
        test = mcnemar(only_a, only_b, n_pairs=len(paired))
        row = {"setting": cell[0], "defense": cell[1], "threat": cell[2], "budget": cell[3],
               "n_paired": len(paired), "a_only": only_a, "b_only": only_b, "p_value": test.p_value}
        for name, outcomes in (("a", a), ("b", b)):
            k, n = sum(outcomes.values()), len(outcomes)
            row[name] = {"k_recovered": k, "n_valid": n, "ci": list(clopper_pearson(k, n, alpha))}
        rows.append(row)
    return {"runs": [str(first), str(second)], "differences": differences(meta_a, meta_b), "rows": rows}


def compare_table(result: Mapping[str, Any]) -> str:
    """Markdown of ``compare_runs``'s result."""
    a, b = result["runs"]
    lines = [f"A = {a}, B = {b}; the runs differ in: {', '.join(result['differences']) or 'nothing in their plans'}",
             "", "| setting | defense | threat | budget | A recovered | B recovered | paired | A only / B only | "
             "McNemar p |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"{x['k_recovered']}/{x['n_valid']} [{x['ci'][0]:.2f}, {x['ci'][1]:.2f}]" for x in (r["a"], r["b"])]
        lines.append(f"| {r['setting']} | {r['defense']} | {r['threat']} | {r['budget']:g} | {cells[0]} | {cells[1]} | "
                     f"{r['n_paired']} | {r['a_only']} / {r['b_only']} | {r['p_value']:.3g} |")
    return "\n".join(lines) + "\n"
