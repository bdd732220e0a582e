"""Knowledge unlearning with a retain set: the offline WMDP-style setting.

Source: the unlearning setting of Cui, Shen, Yang (arXiv 2606.18322) and SAEBench's
unlearning evaluation, where latents tied to a forget topic are clamped and the topic's
answers must go while everything else stays. Here the forget domain is one or more
categories of our own facts (``categories``, default currencies; experiments/data/recall_facts.py),
the retain domain the other categories (``control_categories``, default: all the rest), in
the recall setting's free and cloze multiple-choice formats (``recall.py``).

Valid samples are forget facts the subject knows and the clamp removes. The retain facts
are split in two by fact (alternate facts of each category): the ``select`` half is the
contrast of latent selection (attribution on forget minus retain) and sizes the clamp
within ``max_retain_drop``; the ``evaluate`` half measures every defense's retain accuracy
(``utility_fields``: ``retain_acc``, the fraction of retain samples still answered, and
``retain_drop``, the undefended accuracy minus it), so the clamp is never judged on the
facts it was sized on.

Default clamp: up to the 8 most forget-specific latents at blocks.12 active on <= 1% of
benign tokens, the count (4, 8) and the multiplier (-4, -8, -16) searched within 0.1 nats and
a 5-point retain drop. Multiplying reverses a latent's decoder direction where it fires;
setting the chosen latents to 0 removes far fewer forget facts (README, "Unlearning with a
retain set", has the measurements and the forget target they miss).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from experiments.data import recall_facts as data
from experiments.settings.clamp_search import accuracy
from experiments.settings.recall import RecallConfig, RecallSetting, fact_samples
from experiments.settings.sample import Sample
from guard.errors import ToolkitError

SPLITS = ("select", "evaluate")


@dataclass(frozen=True)
class UnlearningConfig(RecallConfig):
    """Unlearning: forget ``categories``, retain ``control_categories`` (empty: every other category)."""

    name = "unlearning"
    site: str = "blocks.12.hook_resid_post"
    n_latents: int = 8
    categories: tuple[str, ...] = ("currency",)
    clamp_mode: str = "multiply"
    clamp_value: float = -8.0
    clamp_values: tuple[float, ...] = (-4.0, -8.0, -16.0)
    max_density: float | None = 0.01
    max_delta_ce: float | None = 0.1
    max_retain_drop: float | None = 0.05

    @property
    def retain_categories(self) -> tuple[str, ...]:
        return self.control_categories or tuple(c for c in data.CATEGORIES if c not in self.categories)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.retain_categories:
            raise ToolkitError(f"setting {self.name!r}: no retain category left (forget: {list(self.categories)})")


class UnlearningSetting(RecallSetting):
    """Forget one domain of facts, keep the others (see module docstring)."""

    config_cls = UnlearningConfig

    def retain_samples(self, tokenizer, split: str = "select") -> list[Sample]:
        if split not in SPLITS:
            raise ToolkitError(f"setting {self.name!r}: retain split must be one of {SPLITS}, got {split!r}")
        half = SPLITS.index(split)
        facts = [f for c in self.config.retain_categories for f in data.facts((c,))[half::2]]
        return list(fact_samples(tokenizer, facts, 0, self.config))

    def control_samples(self, tokenizer, n: int | None, seed: int) -> list[Sample]:
        return self.retain_samples(tokenizer, "select")[:n]

    def utility_fields(self, model, defenses: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        retain = self.retain_samples(model.tokenizer, "evaluate")
        undefended = accuracy(model, retain, score_fn=self.behaviour_score)
        out = {}
        for name, defense in defenses.items():
            kept = accuracy(model, retain, defense=defense, score_fn=self.behaviour_score)
            out[name] = {"retain_acc": kept, "retain_drop": undefended - kept}
        return out
