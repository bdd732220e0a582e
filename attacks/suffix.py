"""The embedding threat: a suffix of free input embeddings, attacked by the engine like any threat.

Source: the soft-prompt / embedding-space baseline of Cui, Shen, Yang, "SAE Interventions are
Unreliable" (arXiv 2606.18322; 16 tokens recover 24/24 refusals there, at a defended-feature
drift of ~0.82). Unlike residual recovery it perturbs only the input embeddings and leaves every
defended site free to move, which is why its drift is large.

A ``SuffixSlot`` inserts ``n_tokens`` placeholder tokens into each prompt, ``keep`` tokens
before its end (``keep`` = 0: at the very end; for a chat prompt, the end-of-turn marker and the
assistant header stay after it). ``SuffixSlot.threat(budget)`` is the ``ThreatModel`` of the
rung: an additive delta at ``blocks.0.hook_resid_pre`` (the embedding output, plus positional
embeddings in models that have them) on those positions only, each position's L2 norm at most
``budget`` times the placeholder's embedding norm there, no linear constraint (no defense pins a
latent at the embedding). The cascade, the re-verification and the drift over every defended
site downstream come from the engine (``attacks.runner.run_cascade``); the token attack
(``attacks.tokens``) searches the same positions over real tokens.

Example::

    slot = SuffixSlot.before_marker(tok, chat_prompt(q), END, n_tokens=16, placeholder=0)
    batch = AttackBatch.from_lists([slot.insert(ids) + answer], prompt_lengths=[len(ids) + 16])
    outcome = run_cascade(model, clamp, slot.threat(2.0), Continuation(batch, refusal_ids), batch, stages)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from attacks.threat import Positions, ThreatModel
from guard.errors import ToolkitError

EMBED_SITE = "blocks.0.hook_resid_pre"


@dataclass(frozen=True)
class SuffixSlot:
    """Where the suffix goes: ``n_tokens`` copies of ``placeholder`` inserted ``keep`` tokens before
    the prompt's end."""

    n_tokens: int = 16
    keep: int = 0
    placeholder: int = 0

    def __post_init__(self) -> None:
        if self.n_tokens < 1 or self.keep < 0 or self.placeholder < 0:
            raise ToolkitError(f"suffix slot: need n_tokens >= 1, keep >= 0, placeholder >= 0; got {self.to_dict()}")

    @classmethod
    def before_marker(cls, tokenizer, prompt: str, marker: str, n_tokens: int = 16,
                      placeholder: int = 0) -> SuffixSlot:
        """The slot right before the last ``marker`` of ``prompt`` (e.g. the end of the user turn)."""
        cut = prompt.rfind(marker)
        if cut < 0:
            raise ToolkitError(f"suffix slot: marker {marker!r} not found in the prompt")
        whole = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(prompt[cut:], add_special_tokens=False)["input_ids"]
        if list(whole[len(whole) - len(tail):]) != list(tail):
            raise ToolkitError(f"suffix slot: the prompt does not tokenize at marker {marker!r} as its parts do")
        return cls(n_tokens, len(tail), placeholder)

    def insert(self, prompt: Sequence[int]) -> list[int]:
        """``prompt`` with the placeholders inserted."""
        if self.keep >= len(prompt):
            raise ToolkitError(f"suffix slot: keep={self.keep} leaves no prompt before the suffix "
                               f"(prompt of {len(prompt)} tokens)")
        cut = len(prompt) - self.keep
        return [*prompt[:cut], *([self.placeholder] * self.n_tokens), *prompt[cut:]]

    def positions(self) -> Positions:
        return Positions.tail(self.n_tokens, self.keep)

    def threat(self, budget: float) -> ThreatModel:
        """The embedding threat: relative L2 ``budget`` per suffix position, no linear constraint."""
        return ThreatModel.make(EMBED_SITE, positions=self.positions(), budget=budget, relative=True,
                                constraint="none")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
