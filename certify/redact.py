"""Redaction of model completions in anything shown to people (reports, tables, logs).

A recovered completion may be harmful text; reports show ``[redacted]`` unless asked
otherwise. The raw records file keeps the text for audit.
"""

from __future__ import annotations

from typing import Any

REDACTED = "[redacted]"
# fields whose text is model output; any field whose name contains one of the words counts
_COMPLETION_WORDS = ("completion", "generation", "generated", "response", "answer_text", "output_text")


def is_completion_field(name: str) -> bool:
    name = name.lower()
    return any(word in name for word in _COMPLETION_WORDS)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return REDACTED
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


def redact_record(record: dict[str, Any], show_completions: bool = False) -> dict[str, Any]:
    """A copy of ``record`` with every completion text replaced by ``[redacted]`` (nested too)."""
    if show_completions:
        return dict(record)
    out = {}
    for key, value in record.items():
        if is_completion_field(str(key)):
            out[key] = _redact_value(value)
        elif isinstance(value, dict):
            out[key] = redact_record(value, show_completions)
        else:
            out[key] = value
    return out
