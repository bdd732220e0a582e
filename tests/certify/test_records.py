"""The resumable record store: torn writes, incomplete units, duplicates, locking."""

from __future__ import annotations

import json

import pytest

from certify.records import RecordStore, read_records, record_key, strip_timing
from guard.errors import ToolkitError


def _rec(sample: int, attack: str = "pgd", **extra) -> dict:
    return {"defense": "clamp", "setting": "s", "budget": 1.0, "sample_id": f"x{sample}", "attack": attack,
            "seed": 0, "recovered": sample % 2 == 0, **extra}


def test_write_and_reopen(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path) as store:
        store.write_unit("u1", [_rec(0), _rec(1)])
        store.write_unit("u2", [_rec(2)])
        assert store.pending(["u1", "u2", "u3"]) == ["u3"]
    with RecordStore(path) as store:
        assert store.truncated_bytes == 0
        assert store.done_units == {"u1", "u2"}
        assert [r["sample_id"] for r in store.records()] == ["x0", "x1", "x2"]
        assert [r["sample_id"] for r in store.records(units=["u2"])] == ["x2"]
        assert store.records()[0]["unit_size"] == 2
    assert len(read_records(path)) == 3


def test_torn_last_line_is_truncated(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path) as store:
        store.write_unit("u1", [_rec(0)])
    size = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(json.dumps({**_rec(1), "unit": "u2", "unit_size": 1}).encode()[:25])  # killed mid-write
    with RecordStore(path) as store:
        assert store.truncated_bytes > 0 and store.pending(["u1", "u2"]) == ["u2"]
        store.write_unit("u2", [_rec(1)])
    assert path.stat().st_size > size
    assert [r["sample_id"] for r in read_records(path)] == ["x0", "x1"]


def test_incomplete_last_unit_is_dropped_and_rerun(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path) as store:
        store.write_unit("u1", [_rec(0)])
    with open(path, "a") as fh:  # two of three lines of unit u2 reached the disk
        for i in (1, 2):
            fh.write(json.dumps({**_rec(i), "unit": "u2", "unit_size": 3}) + "\n")
    assert [r["sample_id"] for r in read_records(path)] == ["x0"]
    with RecordStore(path) as store:
        assert store.pending(["u1", "u2"]) == ["u2"]
        assert [r["sample_id"] for r in store.records()] == ["x0"]
        store.write_unit("u2", [_rec(1), _rec(2), _rec(3)])
    with RecordStore(path) as store:
        assert [r["sample_id"] for r in store.records()] == ["x0", "x1", "x2", "x3"]


def test_damage_in_the_middle_is_an_error_not_silently_dropped(tmp_path):
    path = tmp_path / "records.jsonl"
    with RecordStore(path) as store:
        store.write_unit("u1", [_rec(0)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("{broken\n" + "".join(lines))
    with pytest.raises(ToolkitError, match="unreadable line"):
        RecordStore(path)


def test_duplicate_and_reserved_and_rewritten_units_are_rejected(tmp_path):
    with RecordStore(tmp_path / "r.jsonl") as store:
        store.write_unit("u1", [_rec(0)])
        with pytest.raises(ToolkitError, match="repeats record key"):
            store.write_unit("u2", [_rec(0)])
        with pytest.raises(ToolkitError, match="repeats record key"):
            store.write_unit("u3", [_rec(5), _rec(5)])
        with pytest.raises(ToolkitError, match="already has records"):
            store.write_unit("u1", [_rec(1)])
        with pytest.raises(ToolkitError, match="reserved"):
            store.write_unit("u4", [{**_rec(1), "unit": "x"}])
        with pytest.raises(ToolkitError, match="key fields"):
            store.write_unit("u5", [{"defense": "clamp"}])
        with pytest.raises(ToolkitError, match="JSON"):
            store.write_unit("u6", [_rec(7, blob=object())])
        assert store.pending(["u2", "u3", "u5"]) == ["u2", "u3", "u5"]
    # nothing of the rejected units reached the file
    assert [r["sample_id"] for r in read_records(tmp_path / "r.jsonl")] == ["x0"]


def test_second_writer_is_refused(tmp_path):
    path = tmp_path / "r.jsonl"
    with RecordStore(path):
        with pytest.raises(ToolkitError, match="another run"):
            RecordStore(path)
    RecordStore(path).close()  # free again once the first is closed


def test_record_key_and_timing():
    a, b = _rec(0, timing={"s": 1.0}), _rec(0, timing={"s": 2.0})
    assert record_key(a) == record_key(b)
    assert record_key(a) != record_key(_rec(0, attack="random"))
    assert record_key(a) == record_key({**a, "threat": "residual"}) != record_key({**a, "threat": "tokens"})
    assert strip_timing(a) == strip_timing(b) and "timing" not in strip_timing(a)


def test_readonly_store_reads_without_repairing_or_writing(tmp_path):
    path = tmp_path / "r.jsonl"
    with pytest.raises(ToolkitError, match="no file"):
        RecordStore(path, readonly=True)
    assert not path.exists()  # not created either
    with RecordStore(path) as store:
        store.write_unit("u1", [_rec(0)])
    with open(path, "ab") as fh:
        fh.write(b'{"torn": ')
    data = path.read_bytes()
    with RecordStore(path, readonly=True) as store:
        assert store.done_units == {"u1"} and store.truncated_bytes == len(b'{"torn": ')
        with pytest.raises(ToolkitError, match="read-only"):
            store.write_unit("u2", [_rec(1)])
        with pytest.raises(ToolkitError, match="another run"):  # still locked against writers
            RecordStore(path)
    assert path.read_bytes() == data  # the torn tail is skipped, not cut
