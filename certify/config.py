"""The configuration of one evaluation run, from a YAML/TOML file and command-line overrides.

Fields left as None take the suite's defaults. A config file holds the same keys as the
command line (``settings``, ``defenses``, ``budgets``, ``n``, ``device``, ``seed``, ...)
plus an ``options`` table of suite-specific options; command-line values override it.

Example (``run.toml``)::

    suite = "standard"
    defenses = ["clamp", "error_shrink"]
    budgets = [2, 5, 10, 20, 40]
    n = 24
    [options]
    steps = 200
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from guard import validate
from guard.errors import ToolkitError, unknown_name

DTYPES = ("float32", "bfloat16", "float16")
EXECUTORS = ("serial", "ray")


@dataclass(frozen=True)
class SuiteConfig:
    """What to evaluate and where to write it.

    ``suite``: registered suite name (``certify.suites``). ``out``: output directory.
    ``subject``: which model + SAEs. ``settings`` / ``defenses`` / ``budgets`` / ``n``
    (samples per setting): None for the suite's defaults. ``device``: ``cpu`` or ``cuda``
    (``cuda:<i>``). ``dtype``: the model's and SAEs' dtype (``float32``, ``bfloat16``, ``float16``;
    the attack's own arithmetic stays float32). ``seed``: base seed; every work unit derives its own from it.
    ``alpha``: 1 - confidence of the intervals. ``show_completions``: put completion texts
    in the report. ``options``: suite-specific options as sorted (key, value) pairs.
    ``plugins``: files or modules imported before planning (``certify.plugins``).
    ``threats``: rungs of the threat ladder to attack with (``attacks.ladder``; None: the suite's default).
    ``cache``: read and keep set-up products (selected latents, calibrations, utility, validity) in the
    content-addressed set-up cache (``certify.cache``; False: ``--no-cache``, recompute them).
    ``executor``: ``serial`` (one process) or ``ray`` (``workers`` processes on a local Ray cluster, or
    the one at ``ray_address``; ``certify.executors``). None of these four changes a record.
    """

    suite: str = "standard"
    out: str = "certify-out"
    subject: str = "default"
    settings: tuple[str, ...] | None = None
    defenses: tuple[str, ...] | None = None
    budgets: tuple[float, ...] | None = None
    n: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    alpha: float = 0.05
    show_completions: bool = False
    progress: bool = True
    options: tuple[tuple[str, Any], ...] = ()
    plugins: tuple[str, ...] = ()
    threats: tuple[str, ...] | None = None
    cache: bool = True
    executor: str = "serial"
    workers: int = 1
    ray_address: str = ""

    def __post_init__(self) -> None:
        where = "certify config"
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ToolkitError(f"{where}: device must be 'cpu' or 'cuda' (or 'cuda:<index>'), got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ToolkitError(f"{where}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.executor not in EXECUTORS:
            raise ToolkitError(f"{where}: executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ToolkitError(f"{where}: workers must be an integer >= 1, got {self.workers!r}")
        if self.ray_address and self.executor != "ray":
            raise ToolkitError(f"{where}: ray_address is for the ray executor; add --executor ray")
        if self.n is not None and self.n < 1:
            raise ToolkitError(f"{where}: n (samples per setting) must be >= 1, got {self.n}")
        if self.budgets is not None:
            if not self.budgets or any(not math.isfinite(b) or b < 0 for b in self.budgets):
                raise ToolkitError(f"{where}: budgets must be a non-empty list of finite numbers >= 0, "
                                   f"got {self.budgets}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ToolkitError(f"{where}: seed must be an integer >= 0, got {self.seed!r}")
        if not 0 < self.alpha < 1:
            raise ToolkitError(f"{where}: alpha must lie in (0, 1), got {self.alpha}")
        for name in ("settings", "defenses", "threats"):
            value = getattr(self, name)
            if value is not None and (not value or len(set(value)) != len(value)):
                raise ToolkitError(f"{where}: {name} must be a non-empty list of distinct names, got {value}")

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def option(self, key: str, default: Any = None) -> Any:
        return self.option_dict.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = self.option_dict
        for key in ("settings", "defenses", "budgets", "plugins", "threats"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    def with_defaults(self, defaults: Mapping[str, Any]) -> SuiteConfig:
        """This config with its None fields filled from ``defaults``."""
        filled = {k: v for k, v in defaults.items() if k in _FIELD_NAMES and getattr(self, k) is None}
        return replace(self, **_normalise(filled, "suite defaults"))


_FIELD_NAMES = tuple(f.name for f in fields(SuiteConfig))


def _names(value: Any, key: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ToolkitError(f"{where}: {key} must be a list of names, got {value!r}")
    out = []
    for item in value:
        out.extend(part.strip() for part in str(item).split(",") if part.strip())
    return tuple(out)


def _budgets(value: Any, where: str) -> tuple[float, ...]:
    if isinstance(value, str | int | float):
        value = [value]
    out = []
    for item in value:
        for part in str(item).split(","):
            if part.strip():
                try:
                    out.append(float(part))
                except ValueError as err:
                    raise ToolkitError(f"{where}: budget {part!r} is not a number") from err
    return tuple(out)


def _normalise(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate keys and coerce values of a partial config (from a file, the CLI or defaults)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key not in _FIELD_NAMES:
            raise unknown_name("config key", key, _FIELD_NAMES, where)
        if value is None:
            out[key] = None
        elif key in ("settings", "defenses", "plugins", "threats"):
            out[key] = _names(value, key, where)
        elif key == "budgets":
            out[key] = _budgets(value, where)
        elif key in ("n", "seed", "workers"):
            try:
                integral = not isinstance(value, bool) and int(value) == float(value)
            except (TypeError, ValueError):
                integral = False
            if not integral:
                raise ToolkitError(f"{where}: {key} must be an integer, got {value!r}")
            out[key] = int(value)
        elif key == "alpha":
            try:
                out[key] = float(value)
            except (TypeError, ValueError) as err:
                raise ToolkitError(f"{where}: alpha must be a number, got {value!r}") from err
        elif key in ("show_completions", "progress", "cache"):
            if not isinstance(value, bool):
                raise ToolkitError(f"{where}: {key} must be true or false, got {value!r}")
            out[key] = value
        elif key == "options":
            if isinstance(value, Mapping):
                value = value.items()
            try:
                pairs = [(str(k), _freeze(v)) for k, v in value]
            except (TypeError, ValueError) as err:
                raise ToolkitError(f"{where}: options must be a table of key = value, got {value!r}") from err
            out[key] = tuple(sorted(pairs))
        else:
            out[key] = str(value)
    return out


def _freeze(value: Any) -> Any:
    """Lists in option values become tuples (the config is frozen and hashable)."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    return value


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping in a ``.toml``, ``.yaml``/``.yml`` or ``.json`` config file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ToolkitError(f"certify config {path}: use a .toml, .yaml, .yml or .json file")
    text = validate.text_file(path, "config file")
    try:
        if suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:  # parse errors of three libraries: one message naming the file
        raise ToolkitError(f"certify config {path}: cannot parse: {err}") from err
    if not isinstance(data, dict):
        raise ToolkitError(f"certify config {path}: top level must be a table of key = value")
    if not data:  # comments only: running the full default suite is never what was meant
        raise ToolkitError(f"config file {path} is empty (no keys)")
    return data


def check_options(options: Mapping[str, Any], defaults: Mapping[str, Any], where: str,
                  positive: Collection[str] = ()) -> dict[str, Any]:
    """``defaults`` updated by ``options``, each value coerced to the type of its default.

    Unknown keys raise with the closest names; numbers must be finite and >= 0 (keys in
    ``positive``: >= 1), so ``steps=abc`` or ``steps=-5`` fails before any work instead of
    deep inside it or, worse, reporting rates from 0 steps.
    """
    merged = dict(defaults)
    for key, value in options.items():
        if key not in defaults:
            raise unknown_name("option", str(key), defaults, where)
        merged[key] = _coerce(value, defaults[key], f"{where}: option {key!r}", 1 if key in positive else 0)
    return merged


def _coerce(value: Any, default: Any, name: str, minimum: int) -> Any:
    """``value`` as the type of ``default`` (bool, int, float, str, or a list/tuple of them; a None
    default is an optional number, off unless given; null turns it off)."""
    if default is None:
        return None if value is None else validate.finite_number(value, name, low=minimum)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ToolkitError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        return validate.integer(value, name, minimum=minimum)
    if isinstance(default, float):
        return validate.finite_number(value, name, low=minimum)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ToolkitError(f"{name} must be a string, got {value!r}")
        return value
    if isinstance(default, tuple | list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ToolkitError(f"{name} must be a list, got {value!r}")
        if default:
            value = [_coerce(v, default[0], f"{name}[{i}]", minimum) for i, v in enumerate(value)]
        return type(default)(value)
    return value


def resolve_config(file_data: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None,
                   where: str = "config file") -> SuiteConfig:
    """A ``SuiteConfig`` from a config file's mapping, with non-None ``overrides`` on top.

    Options merge key by key (an override replaces one option, not the whole table).
    """
    merged = _normalise(file_data or {}, where)
    extra = _normalise({k: v for k, v in (overrides or {}).items() if v is not None}, "command line")
    if "options" in extra and "options" in merged:
        extra["options"] = tuple(sorted({**dict(merged["options"]), **dict(extra["options"])}.items()))
    merged.update(extra)
    return SuiteConfig(**merged)
