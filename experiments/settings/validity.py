"""Valid samples (docs/METHOD.md): the behaviour is present undefended and absent under the defense.

Recovery rates are counted over valid samples only, so this filter decides the denominator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from experiments.settings.batch import Batch, batches, final_logits
from experiments.settings.sample import Sample, behaviour_score, present

ScoreFn = Callable[[torch.Tensor, Batch], torch.Tensor]


@dataclass(frozen=True)
class ValidityResult:
    """Per-sample scores undefended and defended, and which samples are valid."""

    ids: tuple[str, ...]
    score_undefended: tuple[float, ...]
    score_defended: tuple[float, ...]
    valid: tuple[bool, ...]

    @property
    def n_valid(self) -> int:
        return sum(self.valid)

    @property
    def n_present(self) -> int:
        """Samples where the undefended model shows the behaviour."""
        return sum(s > 0 for s in self.score_undefended)

    def to_dict(self) -> dict[str, Any]:
        return {"n": len(self.ids), "n_present": self.n_present, "n_valid": self.n_valid,
                "ids": list(self.ids), "score_undefended": list(self.score_undefended),
                "score_defended": list(self.score_defended), "valid": list(self.valid)}


@torch.no_grad()
def score_samples(model, samples: Sequence[Sample], *, defense=None, batch_size: int = 16,
                  score_fn: ScoreFn = behaviour_score, progress: bool = False) -> torch.Tensor:
    """Behaviour scores [n] (float, on CPU), under ``defense`` when given."""
    scope = defense.applied(model) if defense is not None else contextlib.nullcontext()
    out = []
    chunks = batches(samples, batch_size, device=model.cfg.device)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, total=-(-len(samples) // batch_size), desc="scoring", leave=False)
    with scope:
        for batch in chunks:
            out.append(score_fn(final_logits(model, batch), batch).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def validity(model, defense, samples: Sequence[Sample], batch_size: int = 16,
             score_fn: ScoreFn = behaviour_score, progress: bool = False) -> ValidityResult:
    """Score every sample undefended and defended; valid = present, then absent (a randomized defense's
    defended score: the median over its ``draws``, so valid means absent in most of them)."""
    clean = score_samples(model, samples, batch_size=batch_size, score_fn=score_fn, progress=progress)
    drawn = []
    for i in range(defense.draws):  # a randomized defense: the median of its judged draws (their majority)
        defense.draw(i)
        drawn.append(score_samples(model, samples, defense=defense, batch_size=batch_size, score_fn=score_fn,
                                   progress=progress))
    defended = torch.stack(drawn).median(0).values
    valid = present(clean) & ~present(defended)
    return ValidityResult(
        ids=tuple(s.id for s in samples), score_undefended=tuple(clean.tolist()),
        score_defended=tuple(defended.tolist()), valid=tuple(bool(v) for v in valid),
    )


def evaluate_validity(model, defense, samples: Sequence[Sample], batch_size: int = 16,
                      score_fn: ScoreFn = behaviour_score) -> list[bool]:
    """Per sample: behaviour present undefended and absent with ``defense.applied(model)``."""
    return list(validity(model, defense, samples, batch_size, score_fn).valid)
