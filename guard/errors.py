"""The toolkit's one error type, raised with the context a user needs to fix the input."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ToolkitError(ValueError):
    """Bad input to a defense, attack or evaluation; the message names what and where."""


def unknown_name(kind: str, name: str, valid: Iterable[str], where: str = "") -> ToolkitError:
    """An error for an unknown name that lists the valid names closest to it."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    prefix = f"{where}: " if where else ""
    return ToolkitError(f"{prefix}unknown {kind} {name!r}.{hint} ({len(valid)} valid names in all.)")
