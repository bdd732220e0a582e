"""The threat ladder: the same defense attacked by an attacker who writes activations, one who
writes input embeddings, and one who only chooses tokens.

Each rung is a ``Rung``: its threat model, its budget grid, its cascade and, for the input rungs,
the ``SuffixSlot`` each prompt gets (evaluation then runs on the prompts with the placeholders in
them: budget 0 is exactly that input, so validity and zero-budget recovery mean what they mean on
the residual rung).

- ``residual``: the caller's residual threat, the default cascade (``attacks.runner``);
- ``embedding``: a suffix of ``n_tokens`` free embeddings, each within ``budget`` times the
  placeholder's embedding norm (``attacks.suffix``), the default cascade;
- ``tokens``: the same suffix chosen from real tokens by GCG (``attacks.tokens``); its grid is
  {0, 1}: the placeholders, or any printable suffix that survives re-tokenisation; every success
  must replay from text (``replay``).

Example::

    rung = build_rung("tokens", residual_threat, budgets=(0.0, 0.05), steps=20, seed=0,
                      suffix=SuffixOptions(n_tokens=10, placeholder=1792))
    rung.prompt([5, 6, 7]), rung.budgets, rung.stages(seed=3), rung.detail
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attacks.runner import Stage, default_stages
from attacks.suffix import SuffixSlot
from attacks.threat import ThreatModel
from attacks.tokens import token_stages
from guard.errors import ToolkitError, unknown_name

THREATS = ("residual", "embedding", "tokens")


@dataclass(frozen=True)
class SuffixOptions:
    """The input rungs' settings: suffix length and placeholder, the embedding rung's relative L2
    budget, GCG's steps, candidates per step and top-k."""

    n_tokens: int = 10
    placeholder: int = 0
    keep: int = 0
    embedding_budget: float = 1.0
    token_steps: int = 10
    candidates: int = 32
    top_k: int = 64

    def __post_init__(self) -> None:
        if not self.embedding_budget > 0 or self.token_steps < 0 or self.candidates < 1 or self.top_k < 1:
            raise ToolkitError(f"threat ladder: bad suffix options {self}")

    @property
    def slot(self) -> SuffixSlot:
        return SuffixSlot(self.n_tokens, self.keep, self.placeholder)


@dataclass(frozen=True)
class Rung:
    """One rung: ``threat`` at the largest budget, ``budgets`` (0 first), the suffix ``slot`` (None on
    the residual rung), whether successes must ``replay`` from text, and a one-line ``detail``."""

    name: str
    threat: ThreatModel
    budgets: tuple[float, ...]
    slot: SuffixSlot | None
    replay: bool
    detail: str
    steps: int
    options: SuffixOptions

    def prompt(self, tokens: Sequence[int]) -> list[int]:
        """The input this rung attacks: the prompt, with the suffix placeholders in it."""
        return list(tokens) if self.slot is None else self.slot.insert(tokens)

    def stages(self, seed: int, budget_zero: bool = False) -> tuple[Stage, ...]:
        """The rung's cascade (one checked forward when ``budget_zero``)."""
        if budget_zero:
            return default_stages(0, seed=seed)[:1]
        if self.name == "tokens":
            o = self.options
            return token_stages(o.token_steps, o.candidates, o.top_k, seed=seed)
        return default_stages(self.steps, seed=seed)


def rung_budgets(name: str, budgets: Sequence[float], suffix: SuffixOptions = SuffixOptions()) -> tuple[float, ...]:
    """The rung's budget grid (0 first); ``budgets`` is the residual rung's."""
    if name not in THREATS:
        raise unknown_name("threat", name, THREATS, "threat ladder")
    if name == "residual":
        return tuple(sorted({0.0, *map(float, budgets)}))
    return (0.0, suffix.embedding_budget) if name == "embedding" else (0.0, 1.0)


def build_rung(name: str, residual: ThreatModel, budgets: Sequence[float], steps: int,
               suffix: SuffixOptions = SuffixOptions()) -> Rung:
    """The rung ``name``; ``residual`` and ``budgets`` are the residual rung's threat and grid."""
    grid = rung_budgets(name, budgets, suffix)
    if name == "residual":
        site = ", ".join(residual.sites)
        detail = (f"L2 <= budget x ||h|| at {site}, positions {residual.positions.kind.value}, "
                  f"{residual.constraint.name}; default cascade, {steps} steps per stage")
        return Rung(name, residual.with_budget(max(grid)), grid, None, False, detail, steps, suffix)
    slot = suffix.slot
    if name == "embedding":
        detail = (f"{slot.n_tokens} suffix embeddings, each L2 <= {suffix.embedding_budget:g} x the placeholder's "
                  f"embedding norm; default cascade, {steps} steps per stage")
        return Rung(name, slot.threat(suffix.embedding_budget), grid, slot, False, detail, steps, suffix)
    detail = (f"{slot.n_tokens} suffix tokens, GCG {suffix.token_steps} + {3 * suffix.token_steps} steps x "
              f"{suffix.candidates} candidates, top-k {suffix.top_k}; budget 1 = any printable suffix that "
              "re-tokenises, every success replayed from text")
    return Rung(name, slot.threat(1.0), grid, slot, True, detail, steps, suffix)
