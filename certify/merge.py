"""Merge finished runs into one: ``python -m certify merge OUT1 OUT2 ... --out MERGED``.

Runs can be merged only when their numbers are comparable: the same reference defense and
alpha, and the same plan fingerprint (subject weights, SAEs, attack stages, plugins), except
that a field keyed by setting (evaluated samples, selected latents, clamp) must agree only on
the settings the runs share. A work unit in several runs must hold
the same records there (timing aside) and is kept once; the same for a defense's utility
and self-test status. Anything else is refused with the reason, and nothing is written.
MERGED then holds records.jsonl, a run.json listing every unit (``merged_from`` names the
inputs) and every output ``certify report`` renders; it is re-rendered from those files.

Example::

    python -m certify merge certify-out/ioi certify-out/recall --out certify-out/both
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from certify.files import write_json_atomic
from certify.records import UNIT_FIELD, UNIT_SIZE_FIELD, RecordStore, strip_timing
from certify.schema import RECORDS_FILE, RUN_FILE, SCHEMA_VERSION, read_run_file
from guard.errors import ToolkitError


def read_finished_run(folder: Path, command: str = "merge") -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """(run.json's contents, {unit: its records}) of a finished run; refuses an unfinished one."""
    meta = read_run_file(folder / RUN_FILE)
    if meta is None:
        raise ToolkitError(f"certify {command}: {folder / RUN_FILE} not found; give --out directories of finished runs")
    if meta.get("status") != "complete":
        raise ToolkitError(f"certify {command}: the run in {folder} is not finished (status {meta.get('status')!r}); "
                           "finish it first (the same 'certify run' command resumes it)")
    with RecordStore(folder / RECORDS_FILE, readonly=True) as store:
        records = store.records(units=meta["units"])
    units: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        units.setdefault(r[UNIT_FIELD], []).append({k: v for k, v in r.items() if k not in (UNIT_FIELD, UNIT_SIZE_FIELD)})
    return meta, units


def _same(what: str, a: Any, b: Any, first: Path, other: Path) -> None:
    if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
        raise ToolkitError(f"certify merge: {first} and {other} differ in {what}, so their numbers are not "
                           "comparable; merge only runs of the same subject, attack and samples")


def _by_setting(value: Any, settings: set[str]) -> bool:
    """A fingerprint field keyed by setting (samples, selected latents, ...): compared where runs share one."""
    return isinstance(value, dict) and bool(value) and set(value) <= settings


def _union(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def merge_runs(folders: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Check that ``folders`` are comparable finished runs and write their union into ``out``;
    returns the merged run file's contents (see the module docstring)."""
    folders, out = [Path(f) for f in folders], Path(out)
    if len(folders) < 2:
        raise ToolkitError("certify merge: give at least two run directories")
    if any((out / name).exists() for name in (RUN_FILE, RECORDS_FILE)):
        raise ToolkitError(f"certify merge: {out} already holds a run; choose an empty --out")
    runs = [(f, *read_finished_run(f)) for f in folders]
    first, base, _ = runs[0]
    fingerprint = dict(base.get("fingerprint") or {})
    units: dict[str, list[dict[str, Any]]] = {}
    owner: dict[str, Path] = {}
    utility: dict[tuple[str, Any], dict[str, Any]] = {}
    verified: dict[str, str] = {}
    settings: set[str] = set()
    for folder, meta, recorded in runs:
        _same("reference", base.get("reference"), meta.get("reference"), first, folder)
        _same("alpha", base["config"].get("alpha"), meta["config"].get("alpha"), first, folder)
        fp = meta.get("fingerprint") or {}
        settings |= set(meta["config"].get("settings") or ())
        for key in sorted(set(fingerprint) | set(fp)):
            mine, theirs = fingerprint.get(key), fp.get(key)
            if _by_setting(mine, settings) and _by_setting(theirs, settings):
                for setting in set(mine) & set(theirs):
                    _same(f"{key} of setting {setting!r}", mine[setting], theirs[setting], first, folder)
                fingerprint[key] = {**mine, **theirs}
            else:
                _same(f"the plan's {key!r}", mine, theirs, first, folder)
        for unit, records in recorded.items():
            if unit in units:
                _same(f"the records of work unit {unit}", [strip_timing(r) for r in units[unit]],
                      [strip_timing(r) for r in records], owner[unit], folder)
            else:
                units[unit], owner[unit] = records, folder
        for item in meta.get("utility") or []:
            key = (item["defense"], item.get("setting"))
            if key in utility:
                _same(f"the utility of {key[0]} on {key[1]}", utility[key], item, first, folder)
            utility[key] = item
        for defense, status in (meta.get("verified") or {}).items():
            if defense in verified:
                _same(f"the self-test status of {defense}", verified[defense], status, first, folder)
            verified[defense] = status
    listed = _union([u for _, m, _ in runs for u in m["units"]])  # units without records included
    empty = [u for u in _union([u for _, m, _ in runs for u in m.get("empty_units") or ()]) if u not in units]
    config = {**base["config"], "out": str(out),
              "settings": _union([s for _, m, _ in runs for s in m["config"].get("settings") or ()]),
              "defenses": _union([d for _, m, _ in runs for d in m["config"].get("defenses") or ()])}
    sources = [{"out": str(f), "config_sha256": m.get("config_sha256"), "fingerprint_sha256": m.get("fingerprint_sha256"),
                "started": m.get("started"), "finished": m.get("finished")} for f, m, _ in runs]
    provenance = {**(base.get("provenance") or {}), "merged_from": sources}
    meta = {"schema_version": SCHEMA_VERSION, "status": "complete", "config": config, "fingerprint": fingerprint,
            "units": listed, "utility": list(utility.values()), "reference": base.get("reference"),
            "notes": _union([n for _, m, _ in runs for n in m.get("notes") or ()]),
            "required_checks": _union([c for _, m, _ in runs for c in m.get("required_checks") or ()]),
            "verified": verified, "started": min(s["started"] or "" for s in sources),
            "finished": max(s["finished"] or "" for s in sources), "empty_units": empty,
            "provenance": provenance, "merged_from": [str(f) for f in folders]}
    out.mkdir(parents=True, exist_ok=True)
    with RecordStore(out / RECORDS_FILE) as store:
        for unit, records in units.items():
            store.write_unit(unit, records)
    write_json_atomic(out / RUN_FILE, meta)
    return meta
