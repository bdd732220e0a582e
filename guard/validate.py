"""Checks of user input (numbers, files, folders) that fail with one ``ToolkitError`` line naming it.

The lowest layer (nothing of ours but ``guard.errors``), so every command line can check its
arguments before it loads a model, instead of failing minutes later with a traceback.

Example::

    n = integer(args.n, "--n", minimum=1)
    rows = jsonl_rows(args.prompts, ("prompt", "answer"), "--prompts file")
    with cli_errors(args.debug):
        run(args)
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from guard.errors import ToolkitError


def _label(path: str | os.PathLike[str], what: str) -> str:
    return f"{what} {path}" if what else str(path)


def finite_number(value: Any, name: str, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a finite float in [low, high]: inf, nan and bools are user errors too."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number):
        raise ToolkitError(f"{name} must be a finite number, got {value!r}")
    if low is not None and number < low:
        raise ToolkitError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and number > high:
        raise ToolkitError(f"{name} must be <= {high}, got {value!r}")
    return number


def integer(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int (integral values only, so 2.5 and True are rejected), at least ``minimum``."""
    try:
        integral = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError, OverflowError):
        integral = False
    if not integral:
        raise ToolkitError(f"{name} must be an integer, got {value!r}")
    number = value if isinstance(value, int) else int(float(value))
    if minimum is not None and number < minimum:
        raise ToolkitError(f"{name} must be >= {minimum}, got {value!r}")
    return number


def device(value: str, name: str = "--device") -> str:
    """``cpu``, ``cuda`` or ``cuda:<index>``; CUDA only where torch sees that device."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(value)):
        raise ToolkitError(f"{name} must be 'cpu', 'cuda' or 'cuda:<index>', got {value!r}")
    if value != "cpu":
        import torch

        index = int(value.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ToolkitError(f"{name} {value!r} requested but that CUDA device is not available")
    return value


def text_file(path: str | os.PathLike[str], what: str, *, empty_ok: bool = False) -> str:
    """The text of a UTF-8 file; missing, not a file, not UTF-8 or (unless ``empty_ok``) blank raise."""
    path = Path(path)
    if not path.exists():
        raise ToolkitError(f"{_label(path, what)} does not exist")
    if not path.is_file():
        raise ToolkitError(f"{_label(path, what)} is not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ToolkitError(f"{_label(path, what)} cannot be read ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ToolkitError(f"{_label(path, what)} is not UTF-8 text (byte {err.start})") from None
    if not empty_ok and not text.strip():
        raise ToolkitError(f"{_label(path, what)} is empty")
    return text.removeprefix("\ufeff")


def require_keys(row: Mapping[str, Any], keys: Iterable[str], where: str,
                 kinds: Mapping[str, type] | None = None) -> None:
    """Every key present (and of the given type): else an error listing what is missing."""
    missing = [k for k in keys if k not in row]
    if missing:
        raise ToolkitError(f"{where}: missing key(s) {missing}; the row has {sorted(row)}")
    for key, kind in (kinds or {}).items():
        if key in row and not isinstance(row[key], kind):
            raise ToolkitError(f"{where}: {key!r} must be a {kind.__name__}, got {row[key]!r}")


def numbered_jsonl_rows(path: str | os.PathLike[str], required_keys: Sequence[str], what: str,
                        kinds: Mapping[str, type] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of every non-blank line of a JSONL file; a bad line raises naming it."""
    label = _label(path, what)
    rows = []
    for lineno, line in enumerate(text_file(path, what, empty_ok=True).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ToolkitError(f"{label} line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ToolkitError(f"{label} line {lineno}: expected a JSON object, got {type(row).__name__}")
        require_keys(row, required_keys, f"{label} line {lineno}", kinds)
        rows.append((lineno, row))
    if not rows:
        raise ToolkitError(f"{label} has no rows")
    return rows


def jsonl_rows(path: str | os.PathLike[str], required_keys: Sequence[str], what: str,
               kinds: Mapping[str, type] | None = None) -> list[dict[str, Any]]:
    """The rows of a non-empty JSONL file, each an object with ``required_keys`` (of ``kinds``)."""
    return [row for _, row in numbered_jsonl_rows(path, required_keys, what, kinds)]


def existing_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder that exists (an input folder: SAEs, an earlier run)."""
    path = Path(path)
    if not path.is_dir():
        raise ToolkitError(f"{_label(path, what)} is not a folder" if path.exists() else
                           f"{_label(path, what)} does not exist")
    return path


def writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a folder we can write into, or create: checked before hours of work, not after."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ToolkitError(f"{_label(path, what)} exists and is not a folder")
    base = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not base.is_dir():
        raise ToolkitError(f"{_label(path, what)} cannot be created: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ToolkitError(f"{_label(path, what)} is not writable ({base} does not allow writing)")
    return path


def writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a file we can (over)write: an existing file or a new one in a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ToolkitError(f"{_label(path, what)} exists and is not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise ToolkitError(f"{_label(path, what)} is not writable")
    writable_dir(path.parent, f"{_label(path, what)}: folder")
    return path


def one_line(err: BaseException) -> str:
    """The error's message on one line (a terminal user sees one ``error:`` line, not a traceback)."""
    return " ".join(part.strip() for part in str(err).splitlines() if part.strip())


@contextmanager
def cli_errors(debug: bool = False) -> Iterator[None]:
    """A ``ToolkitError`` inside becomes ``error: <message>`` on stderr and exit code 2 (``debug``: re-raised)."""
    try:
        yield
    except ToolkitError as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None
