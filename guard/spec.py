"""One spec per defense: everything a pipeline needs to build, calibrate and self-test it.

A defense module ends with ``SPEC = DefenseSpec(...)``; ``guard.register_defense(SPEC)`` (or
the built-in list in ``guard.registry``) is its one registration. Every pipeline reads the
spec: the certify suites and the utility table build ``spec.default_config(...)``, fit
``spec.calibrate(data)`` on the data they collected, and the attack unit tests build
``spec.selftest(features)`` in their tiny world. So a new defense needs its own file and
that one line, and appears everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from guard.base import Defense, DefenseConfig
from guard.calibration import Calibration, collect_resid, last_token_resid
from guard.errors import ToolkitError

Features = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class CalibrationData:
    """What a calibration may read, collected once by the pipeline for every defense.

    ``sites``: where the defenses act (the per-site tensors cover exactly these);
    ``saes``/``model``: the whole subject (a closed loop watches sites downstream).
    ``benign``: benign residuals {site: [n_tokens, d]} (sinks left out); ``behaviour`` and
    ``contrast``: last-token residuals {site: [n_prompts, d]} of the behaviour's prompts and of
    contrast (harmless) prompts; ``behaviour_prompts`` / ``contrast_prompts``: those prompts' tokens;
    ``benign_tokens``: the benign text itself [batch, pos] (a fit that measures a utility cost); ``features``:
    the clamp the defenses compose with, ``clamp`` how it edits them (``mode``, ``value``; empty: the
    ``ClampConfig`` defaults, set to 0); ``options``: keyword arguments for a defense's fit, by
    defense name (e.g. ``{"error_ellipsoid": {"coverage": 0.9}}``).
    """

    model: Any
    saes: Mapping[str, Any]
    sites: tuple[str, ...]
    benign: Mapping[str, torch.Tensor]
    behaviour: Mapping[str, torch.Tensor]
    contrast: Mapping[str, torch.Tensor]
    behaviour_prompts: Sequence[torch.Tensor]
    features: Features
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    clamp: Mapping[str, Any] = field(default_factory=dict)
    contrast_prompts: Sequence[torch.Tensor] = ()
    benign_tokens: torch.Tensor | None = None

    @classmethod
    def collect(cls, model, saes: Mapping[str, Any], sites: Sequence[str], benign_tokens: torch.Tensor,
                behaviour_prompts: Sequence[torch.Tensor], contrast_prompts: Sequence[torch.Tensor],
                features: Features, *, options: Mapping[str, Mapping[str, Any]] | None = None,
                clamp: Mapping[str, Any] | None = None, progress: bool = False) -> CalibrationData:
        """Run the model once over each input and keep the residuals at ``sites``."""
        sites = tuple(sites)
        return cls(model=model, saes=saes, sites=sites,
                   benign=collect_resid(model, benign_tokens, sites, progress=progress),
                   behaviour=last_token_resid(model, behaviour_prompts, sites),
                   contrast=last_token_resid(model, contrast_prompts, sites),
                   behaviour_prompts=list(behaviour_prompts), features=features, options=dict(options or {}),
                   clamp=dict(clamp or {}), contrast_prompts=list(contrast_prompts), benign_tokens=benign_tokens)

    def options_for(self, name: str) -> dict[str, Any]:
        return dict(self.options.get(name, {}))

    def saes_here(self) -> dict[str, Any]:
        """The SAEs at ``sites`` only."""
        return {site: self.saes[site] for site in self.sites}


@dataclass(frozen=True)
class Sweep:
    """A defense's strength knob, swept by the frontier (``certify frontier``): the config ``field`` and
    its ``values`` (``quick``: the reduced sweep, default the same). For the field ``features`` a value is
    the fraction of the clamp's latents kept, the top-ranked first (the clamp's count)."""

    field: str
    values: tuple[float, ...]
    quick: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.values or len(set(self.values)) != len(self.values):
            raise ToolkitError(f"Sweep of {self.field!r}: values must be distinct and not empty, got {self.values}")

    def grid(self, quick: bool = False) -> tuple[float, ...]:
        return (self.quick or self.values) if quick else self.values


@dataclass(frozen=True)
class DefenseSpec:
    """A registered defense.

    ``default(features, sites, calibration)``: the config a suite or utility table evaluates,
    composed with the clamp ``features`` (``sites``: where to act when it has no features;
    ``calibration``: the folder ``calibrate``'s result was saved to, "" without one). None: the
    config class with ``features`` (and ``calibration``, when it has that field).
    ``calibrate(data)``: the fitted ``Calibration`` (None: the defense needs none).
    ``selftest(features)``: a config that edits in the attack unit tests' tiny world (None:
    the defense stays "unverified"). ``unusable(model, saes, features)``: why the defense cannot
    be built on this subject with this clamp (None: it can), asked before any calibration.
    ``sweep``: its strength knob for the frontier (None: the frontier evaluates its default alone).
    """

    config: type[DefenseConfig]
    defense: type[Defense]
    default: Callable[[Features, tuple[str, ...], str], DefenseConfig] | None = None
    calibrate: Callable[[CalibrationData], Calibration] | None = None
    selftest: Callable[[Features], DefenseConfig] | None = None
    unusable: Callable[[Any, Mapping[str, Any], Features], str | None] | None = None
    sweep: Sweep | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.config, type) and issubclass(self.config, DefenseConfig)):
            raise ToolkitError(f"DefenseSpec: config must be a DefenseConfig subclass, got {self.config!r}")
        if not (isinstance(self.defense, type) and issubclass(self.defense, Defense)):
            raise ToolkitError(f"DefenseSpec {self.config.name!r}: defense must be a Defense subclass, "
                               f"got {self.defense!r}")
        for name in ("default", "calibrate", "selftest", "unusable"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise ToolkitError(f"DefenseSpec {self.config.name!r}: {name} must be callable")
        if self.sweep is not None and self.sweep.field not in {f.name for f in fields(self.config)}:
            raise ToolkitError(f"DefenseSpec {self.config.name!r}: sweep field {self.sweep.field!r} is not a field "
                               f"of {self.config.__name__}")

    @property
    def name(self) -> str:
        return self.config.name

    def default_config(self, features: Features, sites: tuple[str, ...], calibration: str) -> DefenseConfig:
        if self.default is not None:
            return self.default(features, sites, calibration)
        if "calibration" in {f.name for f in fields(self.config)}:
            return self.config(features=features, calibration=calibration)
        return self.config(features=features)
