"""What a setting is: prompts with a next-token behaviour, its score (``sample.py``) and a plain clamp.

A sample is *valid* (docs/METHOD.md) when the behaviour is present undefended and absent
defended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from experiments.settings.clamp_search import DEFAULT_COUNTS, ClampChoice, search_clamp
from experiments.settings.sample import POSITIONS, Sample, behaviour_score, present
from experiments.settings.selection import latent_density, select_latents
from guard.clamp import MODES, ClampConfig, FeatureClamp
from guard.errors import ToolkitError, unknown_name


@dataclass(frozen=True)
class SettingConfig:
    """Base of every setting config: frozen, serialisable, registered by ``name``.

    ``site``: the SAE site the plain clamp defends; ``n_latents``: how many latents it
    clamps (to ``clamp_value`` with ``clamp_mode``; with ``max_delta_ce``, at most this many);
    ``selection_positions``: where attribution is summed ("all" tokens, "not_first" skipping
    the attention-sink position 0, or only the "last" position). Utility-aware selection:
    ``max_density`` leaves out latents active on more than that fraction of benign tokens;
    ``max_delta_ce`` (nats) searches the number of latents (and, with ``clamp_values``, the
    value) for the strongest suppression within that benign next-token loss increase, and
    ``max_retain_drop`` within that drop of the setting's retain accuracy (``clamp_search.py``).
    """

    name: ClassVar[str] = "setting"
    site: str = "blocks.12.hook_resid_post"
    n_latents: int = 64
    clamp_mode: str = "set"
    clamp_value: float = 0.0
    selection_positions: str = "not_first"
    max_density: float | None = None
    max_delta_ce: float | None = None
    clamp_values: tuple[float, ...] = ()  # values the search tries (empty: clamp_value alone)
    max_retain_drop: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "clamp_values", tuple(float(v) for v in self.clamp_values))
        if self.n_latents < 1:
            raise ToolkitError(f"setting {self.name!r}: n_latents must be >= 1, got {self.n_latents}")
        if self.max_density is not None and not 0 < self.max_density <= 1:
            raise ToolkitError(f"setting {self.name!r}: max_density must be in (0, 1], got {self.max_density}")
        if self.max_delta_ce is not None and self.max_delta_ce < 0:
            raise ToolkitError(f"setting {self.name!r}: max_delta_ce must be >= 0 nats, got {self.max_delta_ce}")
        if self.max_retain_drop is not None and not 0 <= self.max_retain_drop <= 1:
            raise ToolkitError(f"setting {self.name!r}: max_retain_drop must be in [0, 1], got {self.max_retain_drop}")
        if self.clamp_mode not in MODES:
            raise ToolkitError(f"setting {self.name!r}: clamp_mode must be one of {MODES}, got {self.clamp_mode!r}")
        if self.selection_positions not in POSITIONS:
            raise ToolkitError(
                f"setting {self.name!r}: selection_positions must be one of {POSITIONS}, "
                f"got {self.selection_positions!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


class Setting(ABC):
    """A behaviour to suppress: its samples, its score, and the plain clamp that suppresses it.

    Subclasses implement :meth:`generate` (built-in data) and :meth:`load_file` (a user's
    JSONL file). Example::

        setting = get_setting("ioi")
        samples = setting.samples(model.tokenizer, n=200, seed=0)
        clamp = setting.defense(model, subject.saes, samples)
        valid = evaluate_validity(model, clamp, samples)
    """

    config_cls: ClassVar[type[SettingConfig]] = SettingConfig

    def __init__(self, config: SettingConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        if not isinstance(self.config, self.config_cls):
            raise ToolkitError(
                f"setting {self.name!r} needs a {self.config_cls.__name__}, got {type(self.config).__name__}"
            )

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    def generate(self, tokenizer, n: int | None, seed: int) -> list[Sample]:
        """Built-in samples, deterministic given ``seed``; the first n of a longer list."""

    @abstractmethod
    def load_file(self, path: str | Path, tokenizer) -> list[Sample]:
        """Samples from a user's JSONL file (errors name the line)."""

    def samples(self, tokenizer, n: int | None = None, seed: int = 0,
                prompts_file: str | Path | None = None) -> list[Sample]:
        """``n`` samples (all when None): from ``prompts_file`` if given, else generated."""
        if n is not None and n < 1:
            raise ToolkitError(f"setting {self.name!r}: n must be >= 1 or None, got {n}")
        if prompts_file is not None:
            return self.load_file(prompts_file, tokenizer)[:n]
        return self.generate(tokenizer, n, seed)

    def behaviour_score(self, logits_last: torch.Tensor, batch) -> torch.Tensor:
        """[batch, vocab] final-position logits -> [batch] margin (see module docstring)."""
        return behaviour_score(logits_last, batch)

    def present(self, score: torch.Tensor) -> torch.Tensor:
        return present(score)

    def control_samples(self, tokenizer, n: int | None, seed: int) -> list[Sample]:
        """Prompts whose attribution is subtracted during latent selection (none by default)."""
        return []

    def retain_samples(self, tokenizer, split: str = "select") -> list[Sample]:
        """What the clamp must leave intact, scored like the behaviour (none by default): the
        ``select`` split sizes the clamp, the ``evaluate`` split measures its utility."""
        return []

    def utility_fields(self, model, defenses: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        """The setting's own utility measures of each of ``defenses`` beside dCE, by name (none by default)."""
        return {name: {} for name in defenses}

    def select(self, model, sae, samples: Sequence[Sample], *, batch_size: int = 16, control=None,
               benign: torch.Tensor | None = None):
        """Latents supporting the behaviour at ``config.site``: a ``SelectionResult``
        (``benign`` [batch, pos] tokens measure the latents' density; ``max_density`` needs them)."""
        if control is None:
            control = self.control_samples(model.tokenizer, None, 0) if model.tokenizer is not None else []
        if self.config.max_density is not None and benign is None:
            raise ToolkitError(f"setting {self.name!r}: max_density is set, so latent selection needs benign tokens")
        # measured whenever benign text is given, so the chosen latents' density is on record
        density = None if benign is None else latent_density(model, sae, self.config.site, benign)
        return select_latents(
            model, sae, self.config.site, samples, self.config.n_latents,
            control=control or None, positions=self.config.selection_positions,
            batch_size=batch_size, score_fn=self.behaviour_score, density=density,
            max_density=self.config.max_density,
        )

    def choose_clamp(self, model, saes: Mapping[str, Any], samples: Sequence[Sample], *,
                     benign: torch.Tensor, batch_size: int = 16, control=None) -> ClampChoice:
        """The plain clamp's latents with their measured suppression on ``samples`` and cost on
        ``benign``: ``n_latents`` of them at ``clamp_value``, or with a budget (``max_delta_ce``,
        ``max_retain_drop``) the searched count and value."""
        site = self.config.site
        if site not in saes:
            raise unknown_name("SAE site", site, saes.keys(), f"setting {self.name!r}")
        ranked = self.select(model, saes[site], samples, batch_size=batch_size, control=control, benign=benign)
        config = self.config
        searched = config.max_delta_ce is not None or config.max_retain_drop is not None
        counts = tuple(c for c in DEFAULT_COUNTS if c < config.n_latents) + (config.n_latents,) if searched \
            else (config.n_latents,)
        values = config.clamp_values if searched and config.clamp_values else (config.clamp_value,)
        retain = self.retain_samples(model.tokenizer, "select") if model.tokenizer is not None else []
        return search_clamp(model, saes, ranked, samples, benign, max_delta_ce=config.max_delta_ce, counts=counts,
                            values=values, mode=config.clamp_mode, retain=retain,
                            max_retain_drop=config.max_retain_drop, score_fn=self.behaviour_score,
                            batch_size=batch_size)

    def clamp_config(self, model, sae, samples: Sequence[Sample], *, batch_size: int = 16,
                     control=None) -> ClampConfig:
        """The plain clamp of this setting, ready for ``FeatureClamp``."""
        selection = self.select(model, sae, samples, batch_size=batch_size, control=control)
        return selection.clamp_config(mode=self.config.clamp_mode, value=self.config.clamp_value)

    def defense(self, model, saes: Mapping[str, Any], samples: Sequence[Sample], *,
                batch_size: int = 16, control=None) -> FeatureClamp:
        """The plain clamp defense for ``samples`` (selected on them; SAE from ``saes[site]``)."""
        site = self.config.site
        if site not in saes:
            raise unknown_name("SAE site", site, saes.keys(), f"setting {self.name!r}")
        config = self.clamp_config(model, saes[site], samples, batch_size=batch_size, control=control)
        return FeatureClamp(config, saes)
