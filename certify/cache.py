"""A content-addressed store of a run's set-up products, so an unchanged rerun skips its set-up.

Each entry lives under the SHA-256 of its key's canonical JSON: a JSON value (``value``) or a
folder of files (``folder``). A key names everything its product depends on (weights and SAE
hashes, data, parameters, the toolkit's own source through ``source_sha256``); a changed input
gives another key, so what depends on it is recomputed and nothing else. Entries are written
atomically (a killed run leaves no half entry), and each JSON entry keeps its key beside the
value, so the cache can be read by eye. ``SetupCache(None)`` stores nothing (``--no-cache``).

Example::

    cache = SetupCache(Path("~/.cache/latentguard/setup").expanduser())
    choice = cache.value({"kind": "clamp", "setting": "ioi", "weights": digest}, lambda: search().to_dict())
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from certify.files import write_json_atomic
from certify.provenance import canonical_json, config_sha256, json_data, package_versions

# the files of a package whose content can change a product (weights are hashed by value, not here)
SOURCE_SUFFIXES = (".py", ".txt", ".json", ".toml", ".yaml")


class SetupCache:
    """Products stored by key under ``root`` (None: a cache that stores nothing); ``hits`` / ``misses``
    count this object's lookups."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = None if root is None else Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def digest(key: Any) -> str:
        return config_sha256(key)

    def _path(self, key: Any) -> Path:
        assert self.root is not None
        digest = self.digest(key)
        return self.root / digest[:2] / digest

    def lookup(self, key: Any) -> tuple[bool, Any]:
        """(True, the JSON value stored under ``key``), or (False, None) when there is none."""
        if self.root is not None:
            try:
                entry = json.loads(self._path(key).with_suffix(".json").read_text())
                if entry.get("key") == json_data(key):
                    self.hits += 1
                    return True, entry["value"]
            except (OSError, ValueError, AttributeError, KeyError):
                pass  # absent or unreadable: a miss, overwritten by the next store
        self.misses += 1
        return False, None

    def store(self, key: Any, value: Any) -> Any:
        """Keep ``value`` (JSON data) under ``key``; returns it as read back (tuples become lists)."""
        value = json_data(value, "a set-up product")
        if self.root is not None:
            write_json_atomic(self._path(key).with_suffix(".json"), {"key": json_data(key), "value": value})
        return value

    def value(self, key: Any, compute: Callable[[], Any]) -> Any:
        """The JSON value stored under ``key``, else ``compute()`` (JSON data), stored and returned."""
        hit, value = self.lookup(key)
        return value if hit else self.store(key, compute())

    def folder(self, key: Any, fill: Callable[[Path], None]) -> Path:
        """The folder stored under ``key``, else one ``fill(folder)`` writes into, moved into place whole."""
        if self.root is None:
            raise ValueError("SetupCache(None) keeps no folders; use a temporary directory")
        path = self._path(key)
        if path.is_dir():
            self.hits += 1
            return path
        self.misses += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            fill(tmp)
            write_json_atomic(tmp / "key.json", json_data(key))
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():  # another process put it there first: theirs is as good
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path


def _package_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES
                  and "__pycache__" not in p.parts)


@functools.lru_cache(maxsize=8)
def source_sha256(roots: tuple[str, ...]) -> str:
    """SHA-256 over the source files (relative names and bytes) under ``roots`` and the versions of the
    numeric packages: the code a cached product was computed with."""
    digest = hashlib.sha256(canonical_json(package_versions()).encode())
    for root in map(Path, roots):
        for path in _package_files(root):
            digest.update(f"{root.name}/{path.relative_to(root)}".encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def objects_source_sha256(objects: Iterable[Any]) -> str:
    """SHA-256 over the source files that define ``objects`` (classes, functions), for code that lives
    outside the hashed packages (a plugin's defense or setting)."""
    files = set()
    for obj in objects:
        try:
            files.add(inspect.getsourcefile(obj) or "")
        except TypeError:  # a builtin: nothing of ours to hash
            continue
    digest = hashlib.sha256()
    for name in sorted(f for f in files if f):  # by file name, not path: a clone elsewhere hits the same entries
        digest.update(Path(name).name.encode() + b"\0" + Path(name).read_bytes() + b"\0")
    return digest.hexdigest()
