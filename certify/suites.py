"""The registry of evaluation suites: name -> a function turning a config into work.

A suite's ``build(config) -> SuitePlan`` fills the config's defaults and returns the work
units (frozen dataclasses with deterministic keys), the ``evaluate_unit`` callable that turns
one unit into records, the utility cost per defense and notes for the report. ``build``
may be given as ``"module:function"`` and is imported only when the suite is used, so a
suite defined in a higher layer (``experiments``) can be registered here without
``certify`` importing it.

Example::

    register_suite(Suite("standard", "experiments.suites:build_standard", "IOI + recall, SmolLM2"))
    plan = get_suite("demo").plan(SuiteConfig(suite="demo"))
    units, evaluate_unit, utility = plan
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from certify.config import SuiteConfig
from guard.errors import ToolkitError, unknown_name


@dataclass(frozen=True)
class SuitePlan:
    """The work of one run: ``units``, ``evaluate_unit(unit) -> list[dict]``, ``utility``.

    ``utility`` maps a defense (or a (defense, setting) pair) to its delta CE. ``config`` is
    the run's config with the suite's defaults filled in. ``reference`` is the defense every
    other is paired against in McNemar tests. Unpacks as ``units, evaluate_unit, utility``.
    """

    units: Sequence[Any]
    evaluate_unit: Callable[[Any], list[dict[str, Any]]]
    utility: Mapping[Any, float | None]
    config: SuiteConfig
    reference: str | None = "clamp"
    notes: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        return iter((self.units, self.evaluate_unit, self.utility))


@dataclass(frozen=True)
class Suite:
    """A named suite; ``build`` is a callable or a lazy ``"module:function"`` reference."""

    name: str
    build: Callable[[SuiteConfig], SuitePlan] | str
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self) -> Callable[[SuiteConfig], SuitePlan]:
        if callable(self.build):
            return self.build
        module_name, _, attr = self.build.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ToolkitError(f"suite {self.name!r}: cannot load {self.build!r}: {err}") from err

    def plan(self, config: SuiteConfig) -> SuitePlan:
        config = config.with_defaults(self.defaults)
        plan = self.resolve()(config)
        if not isinstance(plan, SuitePlan):
            raise ToolkitError(f"suite {self.name!r}: build returned {type(plan).__name__}, not a SuitePlan")
        return plan


SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> None:
    SUITES[suite.name] = suite


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise unknown_name("suite", name, SUITES.keys(), "certify")
    return SUITES[name]


register_suite(Suite(
    "demo",
    "certify.demo:build_demo",
    "a planted linear behaviour on a tiny random network with a hand-built ReLU SAE (runs in seconds, CPU)",
))
register_suite(Suite("standard", "experiments.suites:build_standard", "IOI + recall on the subject, all defenses"))
