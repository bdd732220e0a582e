"""Redaction of model completions in every output a run writes (records, summaries, reports).

A recovered completion may be harmful text, so nothing a run writes holds it in plain text
unless asked (``show_completions``). A redacted text becomes ``{"sha256": ..., "length": ...}``:
the hash lets two runs be compared for identical outputs, the length shows degenerate ones,
and neither gives the text away.

A field counts as a completion when its name is one of ``COMPLETION_FIELDS`` or ends in
``_<one of them>`` (``base_completion``, ``attacked_response``); only strings inside such
fields are replaced (nested lists and dicts included), everything else is kept as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

COMPLETION_FIELDS: tuple[str, ...] = (
    "completion", "completions", "generation", "generations", "generated", "generated_text", "text_attacked",
    "response", "responses", "response_text", "output_text", "answer_text",
)
REDACTED_KEYS = frozenset({"sha256", "length"})


def redact_text(text: str) -> dict[str, Any]:
    """``{"sha256": hex digest of the UTF-8 text, "length": characters}``."""
    return {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "length": len(text)}


def is_redacted(value: Any) -> bool:
    """True for what ``redact_text`` returns (redacting twice changes nothing)."""
    return isinstance(value, dict) and set(value) == REDACTED_KEYS and isinstance(value.get("sha256"), str)


def is_completion_field(name: str, fields: Sequence[str] = COMPLETION_FIELDS, exact: Sequence[str] = ()) -> bool:
    """``name`` is one of ``fields`` or ends in ``_<one of them>``, or is one of ``exact``."""
    name = str(name).lower()
    return name in exact or any(name == f or name.endswith("_" + f) for f in fields)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if is_redacted(value):
        return value
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def _walk(value: Any, fields: Sequence[str], exact: Sequence[str]) -> Any:
    if isinstance(value, dict):
        return {k: _redact_value(v) if is_completion_field(k, fields, exact) else _walk(v, fields, exact)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, fields, exact) for v in value]
    return value


def redact_record(record: dict[str, Any], show_completions: bool = False,
                  fields: Sequence[str] = COMPLETION_FIELDS, exact: Sequence[str] = ()) -> dict[str, Any]:
    """A copy of ``record`` with every completion text replaced by ``redact_text`` of it, at any depth.

    ``show_completions=True`` returns an unchanged copy. ``fields`` sets what counts as a
    completion (also with a prefix: ``base_completion``); ``exact`` adds names that count
    only as they are (the refusal results' ``text`` and ``defended``, too generic to match
    as suffixes).
    """
    if show_completions:
        return dict(record)
    return _walk(record, fields, tuple(e.lower() for e in exact))


def redact_records(records: Iterable[dict[str, Any]], show_completions: bool = False,
                   fields: Sequence[str] = COMPLETION_FIELDS, exact: Sequence[str] = ()) -> list[dict[str, Any]]:
    return [redact_record(r, show_completions, fields, exact) for r in records]
