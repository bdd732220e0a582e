"""The generic driver: run work units into a record store (resumable).

``run_suite`` knows nothing about models or attacks: a unit is a small frozen dataclass
(or any object with a string ``key``), ``evaluate_unit(unit) -> list[dict]`` does the work.
The attack cascade every suite runs lives in ``attacks.runner`` (one runner, not two).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from certify.records import TIMING_FIELD, RecordStore
from certify.redact import redact_record
from guard.errors import ToolkitError


def unit_key(unit: Any) -> str:
    """A unit's stable identity: its ``key`` attribute, else the JSON of its dataclass fields."""
    key = getattr(unit, "key", None)
    if isinstance(key, str):
        return key
    if dataclasses.is_dataclass(unit) and not isinstance(unit, type):
        fields = dataclasses.asdict(unit)
        return json.dumps({"type": type(unit).__name__, **fields}, sort_keys=True, default=str)
    raise ToolkitError(f"run_suite: a unit must be a dataclass or have a str 'key', got {type(unit).__name__}")


def unit_seed(seed: int, unit: Any) -> int:
    """A per-unit seed that depends only on the run seed and the unit (not on run order)."""
    digest = hashlib.sha256(f"{int(seed)}|{unit_key(unit)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


Todo = Sequence[tuple[str, Any]]  # the units still to do, with their keys
Finished = Iterator[tuple[str, list[dict[str, Any]], float]]  # (key, records, seconds) as each unit finishes
Executor = Callable[[Todo, Callable[[Any], list[dict[str, Any]]]], Finished]


def serial(todo: Todo, evaluate_unit: Callable[[Any], list[dict[str, Any]]]) -> Finished:
    """The default executor: every unit in this process, in plan order (``certify.executors`` has Ray)."""
    for key, unit in todo:
        start = time.perf_counter()
        records = evaluate_unit(unit)
        yield key, records, time.perf_counter() - start


@dataclass(frozen=True)
class RunStats:
    """What one call of ``run_suite`` did: units in the plan, skipped as done, evaluated now.

    ``empty_units``: keys of the units evaluated now that produced no records. The store
    cannot hold them (it has no line to write), so they are evaluated again on a resume and
    a finished run lists them to tell them from missing ones.
    """

    n_units: int
    n_skipped: int
    n_evaluated: int
    n_records_written: int
    seconds: float
    empty_units: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_suite(
    units: Sequence[Any],
    evaluate_unit: Callable[[Any], list[dict[str, Any]]],
    store: RecordStore,
    progress: bool = True,
    desc: str = "units",
    *,
    redact: bool = True,
    executor: Executor = serial,
) -> RunStats:
    """Evaluate every unit not yet in ``store`` and append its records, one unit at a time.

    ``executor`` runs the units (``serial``: here, in order; ``certify.executors.RayExecutor``: on
    workers, in any order); this process alone writes. Each unit's records are fsynced as soon as
    it finishes, so killing the process loses at most the units in flight. The unit's wall time is
    added to each of its records under ``timing.unit_seconds``. With ``redact`` (the default) completion texts
    are replaced by their hash and length before they are stored (``certify.redact``):
    the records file then holds no model output in plain text.
    """
    start = time.perf_counter()
    keys = [unit_key(u) for u in units]
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ToolkitError(f"run_suite: two units share the key {key}")
        seen.add(key)
    todo_keys = set(store.pending(keys))
    todo = [(k, u) for k, u in zip(keys, units, strict=True) if k in todo_keys]
    written = 0
    empty: list[str] = []
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, unit="unit")
    try:
        for key, records, seconds in executor(todo, evaluate_unit):
            if not isinstance(records, list):
                raise ToolkitError(f"run_suite: evaluate_unit returned {type(records).__name__} for unit {key}")
            stamped = [{**r, TIMING_FIELD: {**r.get(TIMING_FIELD, {}), "unit_seconds": seconds}} for r in records]
            if redact:
                stamped = [redact_record(r) for r in stamped]
            store.write_unit(key, stamped)
            written += len(stamped)
            if not stamped:
                empty.append(key)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return RunStats(len(keys), len(keys) - len(todo), len(todo), written, time.perf_counter() - start, tuple(empty))
