"""An append-only JSONL store of per-sample records that survives being killed at any moment.

Records are written one work unit at a time: all lines of a unit in a single write,
flushed and fsynced before the run moves on. Each line carries the unit's key and the
number of lines the unit wrote, so on reopening the store can tell a finished unit from
one cut short: a trailing partial line or a trailing incomplete unit is truncated away
and that unit is evaluated again. Units are deterministic given the seed, so a resumed
run ends with exactly the records of an uninterrupted one.

Wall-clock fields belong under the ``timing`` key; ``strip_timing`` removes them when
comparing runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from guard.errors import ToolkitError

KEY_FIELDS = ("defense", "setting", "budget", "sample_id", "attack", "seed")
UNIT_FIELD = "unit"
UNIT_SIZE_FIELD = "unit_size"
TIMING_FIELD = "timing"


def record_key(record: dict[str, Any]) -> str:
    """The deterministic identity of a record: (defense, setting, budget, sample_id, attack, seed, threat);
    a record without a threat is a residual one."""
    missing = [f for f in KEY_FIELDS if f not in record]
    if missing:
        raise ToolkitError(f"record store: record lacks key fields {missing} (has {sorted(record)[:12]})")
    return json.dumps([record[f] for f in KEY_FIELDS] + [record.get("threat") or "residual"], sort_keys=True)


def strip_timing(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its wall-clock fields (for comparing runs)."""
    return {k: v for k, v in record.items() if k != TIMING_FIELD}


def _encode(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


class RecordStore:
    """Per-sample records in ``path`` (JSONL), grouped by work unit; resumable.

    Opening the store takes an exclusive lock on the file (released when the process dies,
    even by SIGKILL), so two runs never append to the same store. ``readonly`` opens an
    existing file without repairing it (a torn tail is skipped, not cut) and refuses writes:
    for re-rendering a report, which must not change the run it reads.

    Example::

        with RecordStore(out / "records.jsonl") as store:
            for unit in store.pending(keys):
                store.write_unit(unit, evaluate(unit))
            records = store.records()
    """

    def __init__(self, path: str | os.PathLike[str], lock: bool = True, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._fd = -1
        if readonly:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise ToolkitError(f"record store: no file {self.path}") from None
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if lock:
            self._lock()
        self._records: list[dict[str, Any]] = []
        self._unit_order: list[str] = []
        self._keys: set[str] = set()
        self.truncated_bytes = self._recover()

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ToolkitError(
                f"record store {self.path}: another run holds this file; wait for it or use another --out"
            ) from None

    def _recover(self) -> int:
        """Load complete units; cut the file after the last one. Returns the bytes removed."""
        size = os.fstat(self._fd).st_size
        data = os.pread(self._fd, size, 0) if size else b""
        good_end = 0  # byte offset just after the last complete unit
        pos = 0
        group: list[dict[str, Any]] = []
        group_unit: str | None = None
        group_size = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # partial trailing line
            line = data[pos:nl]
            try:
                record = json.loads(line)
                unit, unit_size = record[UNIT_FIELD], int(record[UNIT_SIZE_FIELD])
            except (ValueError, KeyError, TypeError) as err:
                if nl + 1 >= len(data):
                    break  # a damaged last line: treat like a partial write
                raise ToolkitError(f"record store {self.path}: unreadable line at byte {pos}: {err}") from err
            if group and unit != group_unit:
                raise ToolkitError(
                    f"record store {self.path}: unit {group_unit!r} ends after {len(group)} of {group_size} "
                    f"records in the middle of the file (byte {pos}); the file was edited or corrupted"
                )
            group.append(record)
            group_unit, group_size = unit, unit_size
            pos = nl + 1
            if len(group) == group_size:
                self._accept(group_unit, group)
                group, good_end = [], pos
        removed = size - good_end
        if removed and not self.readonly:
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
        return removed

    def _accept(self, unit: str, records: list[dict[str, Any]]) -> None:
        if unit in self._unit_order:
            raise ToolkitError(f"record store {self.path}: unit {unit!r} written twice")
        keys = [record_key(r) for r in records]
        dup = [k for k in keys if k in self._keys] or ([k for k in keys if keys.count(k) > 1])
        if dup:
            raise ToolkitError(f"record store {self.path}: unit {unit!r} repeats record key {dup[0]}")
        self._keys.update(keys)
        self._unit_order.append(unit)
        self._records.extend(records)

    @property
    def done_units(self) -> frozenset[str]:
        return frozenset(self._unit_order)

    def is_done(self, unit: str) -> bool:
        return unit in self.done_units

    def pending(self, units: Iterable[str]) -> list[str]:
        """The unit keys of ``units`` that have no complete records yet, in the given order."""
        done = self.done_units
        return [u for u in units if u not in done]

    def write_unit(self, unit: str, records: Sequence[dict[str, Any]]) -> None:
        """Append all records of one unit in one write, then fsync. Empty units write nothing."""
        if self.readonly:
            raise ToolkitError(f"record store {self.path}: opened read-only")
        if self.is_done(unit):
            raise ToolkitError(f"record store {self.path}: unit {unit!r} already has records")
        if not records:
            return
        stamped = []
        for record in records:
            if not isinstance(record, dict):
                raise ToolkitError(f"record store: unit {unit!r} produced a {type(record).__name__}, not a dict")
            clash = {UNIT_FIELD, UNIT_SIZE_FIELD} & set(record)
            if clash:
                raise ToolkitError(f"record store: unit {unit!r} record uses reserved fields {sorted(clash)}")
            stamped.append({**record, UNIT_FIELD: unit, UNIT_SIZE_FIELD: len(records)})
        try:
            payload = "".join(_encode(r) for r in stamped).encode()
        except (TypeError, ValueError) as err:
            raise ToolkitError(f"record store: unit {unit!r} has a record that is not JSON-serialisable: {err}") from err
        self._accept(unit, stamped)  # validates keys before anything reaches the disk
        os.lseek(self._fd, 0, os.SEEK_END)
        view = memoryview(payload)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def records(self, units: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All complete records in write order, or those of ``units`` in the order of ``units`` (a unit's
        own records in write order), so units written in any order read back as the plan lists them."""
        if units is None:
            return list(self._records)
        by_unit: dict[str, list[dict[str, Any]]] = {u: [] for u in units}
        for r in self._records:
            if r[UNIT_FIELD] in by_unit:
                by_unit[r[UNIT_FIELD]].append(r)
        return [r for rs in by_unit.values() for r in rs]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The complete records of a store file, read without locking or repairing it."""
    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"record store: no file {path}")
    out = []
    for line in path.read_bytes().split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a partial line
    # drop a trailing incomplete unit, as the store does
    if out and sum(1 for r in out if r.get(UNIT_FIELD) == out[-1].get(UNIT_FIELD)) < out[-1].get(UNIT_SIZE_FIELD, 0):
        unit = out[-1][UNIT_FIELD]
        out = [r for r in out if r.get(UNIT_FIELD) != unit]
    return out
