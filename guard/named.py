"""``Registry[T]``: the one registry type (defenses, attacks, settings, suites, calibration kinds).

A name is registered once: a second ``add`` under the same name is an error unless it says
``replace=True``, so two plugins can never silently shadow each other. An unknown name is a
one-line error listing the closest registered names. ``scoped()`` restores the registry
afterwards (a test or a script that registers something temporary).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from guard.errors import ToolkitError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one ``kind`` by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        if not isinstance(name, str) or not name:
            raise ToolkitError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")
        if name in self._entries and not replace:
            raise ToolkitError(f"{self.kind} {name!r} is already registered; pass replace=True to replace it")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self[name]  # noqa: B018  (the unknown-name error)
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._entries.get(name, default)

    def check(self, name: str, where: str = "") -> str:
        """``name`` if registered, else the unknown-name error (with ``where`` as its context)."""
        if name not in self._entries:
            raise unknown_name(self.kind, name, self._entries, where)
        return name

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Whatever is registered inside the block is gone after it (and what was removed is back)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries.clear()
            self._entries.update(saved)


@dataclass(frozen=True)
class Variant:
    """A registered config class and the class it configures (attacks, settings)."""

    config: type
    impl: type


def config_from_dict(registry: Registry[Any], data: Mapping[str, Any]) -> Any:
    """Inverse of a config's ``to_dict`` for any registry whose entries name their ``config`` class
    (lists come back as tuples)."""
    data = dict(data)
    if "name" not in data:
        raise ToolkitError(f"{registry.kind} config {data}: missing 'name'")
    name = data.pop("name")
    config_cls = registry[name].config
    try:
        return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    except TypeError as exc:
        raise ToolkitError(f"{registry.kind} {name!r}: bad config fields: {exc}") from None
