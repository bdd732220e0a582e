"""The ``frontier`` certify suite: every defense family swept over its strength knob, on the same samples.

What it is: the standard suite's settings and cascade (``experiments.suites``), with each built
defense expanded into the points of its ``DefenseSpec.sweep`` (``splice@0``, ``splice@0.25``, ...;
a family without a sweep is evaluated at its default, under its own name). Every point of a setting
is built on the setting's one clamp and calibration, measured for utility (delta CE, the setting's
own fields, a detector's benign flag rate) and attacked on the setting's evaluation samples (its
valid ones are those it suppresses), at every budget of a finer grid, and each valid sample's
minimal recovering budget is bracketed by the grid and bisected ``rounds`` times by the same
cascade. ``certify frontier`` turns the records into frontier.json, frontier.png and a leaderboard
(``certify.frontier``). The reference is the plain clamp at full strength (``clamp@1``).

Options: those of the standard suite, ``rounds`` (2), ``quick`` (false: the reduced sweep of each
spec, ``Sweep.quick``) and ``points`` (only these points and the reference; ``certify frontier
--long-check`` reruns the non-dominated points that way with 10x the steps). The suite's ``quick`` (experiments/suite_entries.py) is what ``certify frontier
--quick`` sets when not given: n = 8, budgets 0.02 / 0.05 / 0.2, 5 steps per stage, one bisection round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from certify.config import SuiteConfig
from certify.suites import SuitePlan
from experiments import suites as standard
from guard.base import Defense
from guard.errors import ToolkitError
from guard.registry import DEFENSES, build_defense
from guard.spec import Sweep

REFERENCE = "clamp@1"
DEFAULTS = {**standard.DEFAULTS, "budgets": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)}
OPTION_DEFAULTS = {**standard.OPTION_DEFAULTS, "rounds": 2, "quick": False, "points": []}


def point_name(family: str, strength: float) -> str:
    return f"{family}@{strength:g}"


def point_config(config, sweep: Sweep, value: float):
    """``config`` at strength ``value``: the field set, or for ``features`` the top fraction of each site's latents."""
    if sweep.field != "features":
        return dataclasses.replace(config, **{sweep.field: type(getattr(config, sweep.field))(value)})
    if not 0 < value <= 1:
        raise ToolkitError(f"defense {config.name!r}: a features sweep value is a fraction in (0, 1], got {value}")
    kept = {site: tuple(f)[: max(1, round(value * len(f)))] for site, f in config.features.items()}
    return dataclasses.replace(config, features=kept)


def sweep_points(defenses: Mapping[str, Defense], saes: Mapping[str, object], quick: bool,
                 keep: Sequence[str] = ()) -> dict[str, Defense]:
    """Each built defense at every strength of its sweep, on its own calibration (no refit); ``keep``: only
    these points (and the reference), as a longer check of some points runs them."""
    out: dict[str, Defense] = {}
    for name, defense in defenses.items():
        sweep = DEFENSES[name].sweep
        if sweep is None:
            out[name] = defense
            continue
        calibration = getattr(defense, "calibration", None)
        for value in sweep.grid(quick):
            out[point_name(name, value)] = build_defense(point_config(defense.config, sweep, value), saes, calibration)
    if keep:
        unknown = sorted(set(keep) - set(out))
        if unknown:
            raise ToolkitError(f"frontier suite: option points names {unknown}, which are not points of this sweep "
                               f"({sorted(out)})")
        out = {name: d for name, d in out.items() if name in keep or name == REFERENCE}
    return out


def check_frontier(config: SuiteConfig) -> None:
    if tuple(config.threats or ("residual",)) != ("residual",):
        raise ToolkitError(f"frontier suite: it attacks the residual threat only, got threats {list(config.threats)}")
    if "clamp" in DEFENSES and (DEFENSES["clamp"].sweep is None or 1.0 not in DEFENSES["clamp"].sweep.values):
        raise ToolkitError("frontier suite: the clamp's sweep must include 1 (the full clamp is the reference)")


def build_frontier(config: SuiteConfig) -> SuitePlan:
    """The frontier on the embedded subject (or ``--subject``); see the module docstring."""
    check_frontier(config)
    config = config.with_defaults(DEFAULTS)
    quick = bool(config.option_dict.get("quick", False))
    keep = tuple(config.option_dict.get("points") or ())
    return standard.build_standard(config, expand=lambda defenses, saes: sweep_points(defenses, saes, quick, keep),
                                   reference=REFERENCE, option_defaults=OPTION_DEFAULTS)

