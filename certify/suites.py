"""The registry of evaluation suites: name -> a function turning a config into work.

A suite's ``build(config) -> SuitePlan`` fills the config's defaults and returns the work
units (frozen dataclasses with deterministic keys), the ``evaluate_unit`` callable that turns
one unit into records, the utility cost per defense and notes for the report. ``build``
may be given as ``"module:function"`` and is imported only when the suite is used. Suites of
other packages register themselves through the entry-point group ``latentguard.suites``
(each entry a ``Suite``; ``experiments`` adds ``standard`` and ``full`` in pyproject.toml),
read the first time the registry is consulted, so ``certify`` never names a higher layer.

Example::

    register_suite(Suite("mine", "my_package.suite:build", "my settings on my model"))
    plan = get_suite("demo").plan(SuiteConfig(suite="demo"))
    units, evaluate_unit, utility = plan
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from certify.config import SuiteConfig
from certify.provenance import record_config
from guard.errors import ToolkitError
from guard.named import Registry


@dataclass(frozen=True)
class SuitePlan:
    """The work of one run: ``units``, ``evaluate_unit(unit) -> list[dict]``, ``utility``.

    ``utility`` maps a defense (or a (defense, setting) pair) to its delta CE. ``config`` is
    the run's config with the suite's defaults filled in. ``reference`` is the defense every
    other is paired against in McNemar tests. Unpacks as ``units, evaluate_unit, utility``.

    ``fingerprint``: JSON data naming what determines the records beyond the config, so a
    resumed run can tell that its inputs changed: ``subject`` (name and weight hash),
    ``saes`` (hash per site), prompt/data file hashes, selected latents, calibration hashes,
    the attack config with its defaults filled in (``certify.provenance`` has the hash helpers).
    Anything that only changes speed or display (batch progress, a test delay) stays out.

    ``provenance``: JSON data measured while planning (e.g. how the clamp was chosen: latent
    densities, suppression, utility cost), written into the run's provenance; floats that may
    differ in the last digit between machines belong here, not in the fingerprint.
    """

    units: Sequence[Any]
    evaluate_unit: Callable[[Any], list[dict[str, Any]]]
    utility: Mapping[Any, float | None]
    config: SuiteConfig
    reference: str | None = "clamp"
    notes: tuple[str, ...] = ()
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    required_checks: tuple[str, ...] = ()
    verified: Mapping[str, str] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)  # measured set-up facts, recorded, not compared

    def __iter__(self) -> Iterator[Any]:
        return iter((self.units, self.evaluate_unit, self.utility))


@dataclass(frozen=True)
class Suite:
    """A named suite; ``build`` is a callable or a lazy ``"module:function"`` reference.

    ``option_defaults`` (a mapping or a lazy ``"module:NAME"``): the suite's option defaults,
    so that a run can be compared with an earlier one in its output directory before the
    (possibly slow) planning starts. ``volatile_options``: options that never change a record
    (a pause for interruption tests), ignored in that comparison. ``quick``: the config fields a quick run
    sets where they are not given (``certify frontier --quick``; ``options`` merged option by option).
    """

    name: str
    build: Callable[[SuiteConfig], SuitePlan] | str
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    option_defaults: Mapping[str, Any] | str = field(default_factory=dict)
    volatile_options: tuple[str, ...] = ()
    quick: Mapping[str, Any] = field(default_factory=dict)

    def _load(self, ref: str) -> Any:
        module_name, _, attr = ref.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ToolkitError(f"suite {self.name!r}: cannot load {ref!r}: {err}") from err

    def resolve(self) -> Callable[[SuiteConfig], SuitePlan]:
        return self.build if callable(self.build) else self._load(self.build)

    def resolve_option_defaults(self) -> dict[str, Any]:
        defaults = self.option_defaults
        return dict(self._load(defaults) if isinstance(defaults, str) else defaults)

    def record_config(self, config: SuiteConfig | Mapping[str, Any]) -> dict[str, Any]:
        """The fields of ``config`` that shape this suite's records (``certify.provenance.record_config``)."""
        data = config.to_dict() if isinstance(config, SuiteConfig) else dict(config)
        return record_config(data, self.resolve_option_defaults(), self.volatile_options)

    def plan(self, config: SuiteConfig) -> SuitePlan:
        config = config.with_defaults(self.defaults)
        plan = self.resolve()(config)
        if not isinstance(plan, SuitePlan):
            raise ToolkitError(f"suite {self.name!r}: build returned {type(plan).__name__}, not a SuitePlan")
        return plan


ENTRY_POINT_GROUP = "latentguard.suites"
SUITES: Registry[Suite] = Registry("suite")


def register_suite(suite: Suite, *, replace: bool = False) -> None:
    if not isinstance(suite, Suite):
        raise ToolkitError(f"register_suite: expected a Suite, got {type(suite).__name__}")
    SUITES.add(suite.name, suite, replace=replace)


def _load_entry_points() -> None:
    """Add every installed package's suite not registered yet: read on each lookup (about 10 ms), so a
    suite registry restored by ``SUITES.scoped()`` never loses them."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        suite = entry.load()
        if not isinstance(suite, Suite) or suite.name != entry.name:
            raise ToolkitError(f"entry point {entry.name!r} of {ENTRY_POINT_GROUP!r} ({entry.value}) must be a "
                               f"Suite named {entry.name!r}")
        if suite.name not in SUITES:  # one registered in code takes precedence
            SUITES.add(suite.name, suite)


def suites() -> dict[str, Suite]:
    """Every registered suite by name (the built-in demo and those of installed packages)."""
    _load_entry_points()
    return dict(SUITES.items())


def get_suite(name: str) -> Suite:
    _load_entry_points()
    return SUITES[SUITES.check(name, "certify")]


register_suite(Suite(
    "demo",
    "certify.demo:build_demo",
    "a planted linear behaviour on a tiny random transformer with a planted ReLU SAE, attacked by the real "
    "cascade (about 30 s on a CPU)",
    option_defaults="certify.demo:OPTION_DEFAULTS",
    volatile_options=("unit_delay_s",),
))
