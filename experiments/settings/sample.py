"""A sample and its behaviour score: the margin at the final prompt position.

Every setting scores its behaviour the same way:

    score = logit[target] - max(logit[rival] for rival in rivals)

where the rivals are the sample's ``foils`` when it lists some (IOI: the subject name, so
the score is the usual logit difference logit[IO] - logit[S]; multiple choice: the other
choice letters), and every other vocabulary token when it lists none (free recall: the
answer's first token must be the model's top-1 next token). The behaviour is present when
the score is > 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from guard.errors import ToolkitError

POSITIONS = ("all", "not_first", "last")


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One prompt and the next-token behaviour measured on it.

    Arguments: ``id`` stable across runs (derived from the content, or the user's own id);
    ``prompt`` the text; ``tokens`` its token ids with no BOS (the subject's tokenizer adds
    none); ``target`` the token the behaviour predicts; ``foils`` the tokens it must beat
    (empty: every other token in the vocabulary); ``meta`` free-form provenance.
    """

    id: str
    prompt: str
    tokens: tuple[int, ...]
    target: int
    foils: tuple[int, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ToolkitError(f"sample {self.id!r}: the prompt {self.prompt!r} has no tokens")
        if self.target in self.foils:
            raise ToolkitError(f"sample {self.id!r}: target token {self.target} is also a foil")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tokens"] = list(self.tokens)
        out["foils"] = list(self.foils)
        out["meta"] = dict(self.meta)
        return out


def behaviour_score(logits_last: torch.Tensor, batch) -> torch.Tensor:
    """The margin of the target over its rivals: logits_last [batch, vocab] -> [batch].

    ``batch`` is a :class:`experiments.settings.batch.Batch` (``target`` [batch],
    ``foils`` [batch, n_foils] padded with -1). Differentiable (a max, so a subgradient).
    """
    target = batch.target.to(logits_last.device)
    foils = batch.foils.to(logits_last.device)
    if logits_last.ndim != 2 or logits_last.shape[0] != target.shape[0]:
        raise ToolkitError(
            f"behaviour_score: logits_last must be [batch, vocab] with batch {target.shape[0]}, "
            f"got {tuple(logits_last.shape)}"
        )
    neg_inf = torch.finfo(logits_last.dtype).min
    target_logit = logits_last.gather(-1, target[:, None]).squeeze(-1)
    # Rival = best listed foil, or best other token when the sample lists no foils.
    others = logits_last.scatter(-1, target[:, None], neg_inf).max(-1).values
    if foils.shape[1]:
        listed = logits_last.gather(-1, foils.clamp(min=0)).masked_fill(foils < 0, neg_inf).max(-1).values
        rival = torch.where((foils >= 0).any(-1), listed, others)
    else:
        rival = others
    return target_logit - rival


def present(score: torch.Tensor) -> torch.Tensor:
    """Whether the behaviour is shown: score > 0 (bool, same shape)."""
    return score > 0
