"""The format of ``summary.json``: a versioned object, rows plus the provenance of the run.

Version 2 (this one)::

    {"schema_version": 2,
     "provenance": {...certify.provenance.build_provenance...},
     "rows": [{...one certify.summary.SummaryRow as a dict...}, ...]}

Version 1 was a bare list of rows, with nothing to say which code, data or config made it;
``read_summary_file`` refuses it by name rather than guessing. ``summary.csv`` holds the
same rows (``certify.summary.rows_to_csv``) for spreadsheets.

``run.json`` (``read_run_file``) is what a run says about itself: ``status`` ("running" from
planning on, "complete" once every output is written), ``config``, ``record_config`` and its
``config_sha256``, the plan's ``fingerprint`` and ``fingerprint_sha256``, the work-unit keys
(``units``; ``empty_units``: those that produced no records), ``utility``, ``reference``,
``notes``, ``started`` / ``finished``, ``provenance`` and ``run_info``. A run file written
before version 2 has only ``config``, ``utility``, ``reference``, ``notes`` and ``units``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from certify.files import write_json_atomic, write_text_atomic
from certify.redact import redact_record
from certify.summary import SummaryRow, rows_to_csv
from guard.errors import ToolkitError

SCHEMA_VERSION = 2
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
RUN_FILE = "run.json"
RECORDS_FILE = "records.jsonl"
FRONTIER_FILE = "frontier.json"
_KEYS = ("schema_version", "provenance", "rows")


def write_summary_file(out_dir: str | os.PathLike[str], rows: Sequence[SummaryRow],
                       provenance: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``summary.json`` (schema version 2) and ``summary.csv`` atomically; returns both paths."""
    out_dir = Path(out_dir)
    # rows hold counts, not texts; redacting them anyway means a field added later cannot leak a completion
    data = {"schema_version": SCHEMA_VERSION, "provenance": dict(provenance),
            "rows": [redact_record(r.to_dict()) for r in rows]}
    csv_path = write_text_atomic(out_dir / SUMMARY_CSV, rows_to_csv(rows))
    json_path = write_json_atomic(out_dir / SUMMARY_JSON, data)
    return json_path, csv_path


def read_summary_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The object in a ``summary.json`` of schema version 2; a ToolkitError naming any other version."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ToolkitError(f"summary file {path}: not found") from None
    except (OSError, ValueError) as err:
        raise ToolkitError(f"summary file {path}: cannot read it: {err}") from err
    if isinstance(data, list):
        raise ToolkitError(f"{path.name} has schema version 1 (a list of rows); this toolkit reads version "
                           f"{SCHEMA_VERSION}; rebuild it from the records with 'python -m certify report --out "
                           f"{path.parent}'")
    if not isinstance(data, dict):
        raise ToolkitError(f"{path.name}: expected an object with {list(_KEYS)}, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ToolkitError(f"{path.name} has schema version {version!r}; this toolkit reads version "
                           f"{SCHEMA_VERSION}")
    missing = [k for k in _KEYS if k not in data]
    if missing or not isinstance(data["rows"], list) or not isinstance(data["provenance"], dict):
        raise ToolkitError(f"{path.name}: schema version {SCHEMA_VERSION} needs {list(_KEYS)} (rows a list, "
                           f"provenance an object); missing or wrong: {missing or ['rows/provenance']}")
    return data


def read_run_file(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``run.json`` at ``path``, or None if there is none; a ToolkitError if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ToolkitError(f"{path} is not a readable run file: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("units"), list):
        raise ToolkitError(f"{path} is not a run file of this toolkit (an object with 'config' and 'units')")
    return data
