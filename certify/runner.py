"""Generic drivers: run work units into a record store (resumable), and an attack cascade.

``run_suite`` knows nothing about models or attacks: a unit is a small frozen dataclass
(or any object with a string ``key``), ``evaluate_unit(unit) -> list[dict]`` does the work.
``cascade`` runs attacks in order, each one only on the samples no earlier attack
recovered (AutoAttack's scheme: the cheap attack first, stronger ones on what is left).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from certify.records import TIMING_FIELD, RecordStore
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


@dataclass(frozen=True)
class RunStats:
    """What one call of ``run_suite`` did: units in the plan, skipped as done, evaluated now."""

    n_units: int
    n_skipped: int
    n_evaluated: int
    n_records_written: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_suite(
    units: Sequence[Any],
    evaluate_unit: Callable[[Any], list[dict[str, Any]]],
    store: RecordStore,
    progress: bool = True,
    desc: str = "units",
) -> RunStats:
    """Evaluate every unit not yet in ``store`` and append its records, one unit at a time.

    Each unit's records are fsynced before the next unit starts, so killing the process
    loses at most the unit in flight. The unit's wall time is added to each of its
    records under ``timing.unit_seconds``.
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
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, unit="unit")
    try:
        for key, unit in todo:
            t0 = time.perf_counter()
            records = evaluate_unit(unit)
            if not isinstance(records, list):
                raise ToolkitError(f"run_suite: evaluate_unit returned {type(records).__name__} for unit {key}")
            seconds = time.perf_counter() - t0
            stamped = [{**r, TIMING_FIELD: {**r.get(TIMING_FIELD, {}), "unit_seconds": seconds}} for r in records]
            store.write_unit(key, stamped)
            written += len(stamped)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return RunStats(len(keys), len(keys) - len(todo), len(todo), written, time.perf_counter() - start)


def attack_name(attack: Callable[..., Any], index: int = 0) -> str:
    """The display name of an attack callable: ``.name``, else ``__name__``, else ``attack<i>``."""
    name = getattr(attack, "name", None) or getattr(attack, "__name__", None)
    return str(name) if name and name != "<lambda>" else f"attack{index}"


def default_recovered(result: Any) -> bool:
    """Success of one attack result: ``result['recovered']``, ``result.recovered`` or ``bool(result)``."""
    if isinstance(result, dict):
        return bool(result.get("recovered"))
    if hasattr(result, "recovered"):
        return bool(result.recovered)
    return bool(result)


@dataclass(frozen=True)
class CascadeResult:
    """Per-sample outcome of a cascade.

    ``attempts[i]`` lists ``(attack name, result)`` for every attack run on sample i, in
    order; ``stage[i]`` is the index of the attack that recovered it (None: none did).
    """

    attack_names: tuple[str, ...]
    attempts: tuple[tuple[tuple[str, Any], ...], ...]
    stage: tuple[int | None, ...]

    @property
    def recovered(self) -> tuple[bool, ...]:
        return tuple(s is not None for s in self.stage)

    @property
    def n_recovered(self) -> int:
        return sum(self.recovered)

    def final(self, i: int) -> tuple[str, Any]:
        """The last attempt on sample i: the recovering one, or the last attack's failure."""
        return self.attempts[i][-1]


def cascade(
    samples: Sequence[Any],
    attacks: Sequence[Callable[[list[Any]], Sequence[Any]]],
    is_recovered: Callable[[Any], bool] = default_recovered,
) -> CascadeResult:
    """Run ``attacks`` in order, each only on the samples that no earlier attack recovered.

    An attack is ``fn(samples: list) -> results`` with one result per sample, same order.
    Every attack that runs is recorded, so a later report can see which stage succeeded
    (and whether a weak attack, such as random search, beat a strong one).

    Example::

        result = cascade(samples, [pgd_attack, random_search])
        result.recovered  # (True, False, ...)
    """
    if not attacks:
        raise ToolkitError("cascade: no attacks given")
    names = tuple(attack_name(a, i) for i, a in enumerate(attacks))
    if len(set(names)) != len(names):
        raise ToolkitError(f"cascade: attack names must differ, got {names}")
    attempts: list[list[tuple[str, Any]]] = [[] for _ in samples]
    stage: list[int | None] = [None] * len(samples)
    for index, (name, attack) in enumerate(zip(names, attacks, strict=True)):
        left = [i for i, s in enumerate(stage) if s is None]
        if not left:
            break
        results = list(attack([samples[i] for i in left]))
        if len(results) != len(left):
            raise ToolkitError(f"cascade: attack {name!r} returned {len(results)} results for {len(left)} samples")
        for i, result in zip(left, results, strict=True):
            attempts[i].append((name, result))
            if is_recovered(result):
                stage[i] = index
    return CascadeResult(names, tuple(tuple(a) for a in attempts), tuple(stage))
