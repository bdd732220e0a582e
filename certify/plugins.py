"""User code loaded before a run is planned: ``--plugin FILE.py`` or ``--plugin package.module``.

A plugin registers what it brings (``guard.register_defense``, ``certify.register_suite``,
``attacks.register_attack``) when it is imported; the run then sees it like a built-in one.
Each plugin is imported once per process (a second load of the same file is a no-op, so its
registrations are not repeated), and its source's SHA-256 goes into the run's fingerprint:
resuming a run after the plugin changed is refused instead of mixing records of two versions.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from guard.errors import ToolkitError

_LOADED: dict[str, str] = {}  # resolved file -> module name


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def _source(spec: str) -> Path:
    """The file a plugin spec names (a path ending in .py, or an importable module)."""
    if _is_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ToolkitError(f"plugin {spec!r}: no such file")
        return path.resolve()
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError) as err:
        raise ToolkitError(f"plugin {spec!r}: {err}") from None
    if found is None or found.origin is None or not Path(found.origin).is_file():
        raise ToolkitError(f"plugin {spec!r}: not a .py file and no importable module of that name")
    return Path(found.origin).resolve()


def _import(spec: str, path: Path) -> None:
    key = str(path)
    if key in _LOADED:
        return
    try:
        if _is_path(spec):
            name = f"latentguard_plugin_{path.stem}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            name = spec
            importlib.import_module(spec)
    except ToolkitError as err:
        raise ToolkitError(f"plugin {spec!r}: {err}") from err
    except Exception as err:  # the user's code: name the plugin and the error, not our traceback
        raise ToolkitError(f"plugin {spec!r} failed to import: {type(err).__name__}: {err}") from err
    _LOADED[key] = name


def load_plugins(specs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Import each plugin (once per process); {spec: SHA-256 of its source file}."""
    hashes = {}
    for spec in specs:
        path = _source(spec)
        hashes[spec] = hashlib.sha256(path.read_bytes()).hexdigest()
        _import(spec, path)
    return hashes


def load_object(spec: str, what: str = "object") -> Any:
    """``NAME`` from ``FILE.py:NAME`` or ``package.module:NAME`` (the file or module loaded as a plugin)."""
    source, sep, name = spec.rpartition(":")
    if not sep or not source or not name.isidentifier():
        raise ToolkitError(f"{what} {spec!r}: expected FILE.py:NAME or package.module:NAME")
    load_plugins([source])
    module = sys.modules[_LOADED[str(_source(source))]]
    if not hasattr(module, name):
        raise ToolkitError(f"{what} {spec!r}: {source!r} defines no {name!r}")
    return getattr(module, name)
