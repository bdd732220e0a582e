"""A right-padded batch of token sequences, the unit every attack works on.

Right padding keeps absolute positions (and rotary phases) of real tokens identical to an
unpadded run, and causal attention never lets a real token read a pad after it, so the
attack runs without an attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from guard.errors import ToolkitError


@dataclass(frozen=True)
class AttackBatch:
    """Token sequences to attack, right-padded.

    Arguments:
        tokens: long [batch, pos], right-padded.
        lengths: long [batch], number of real tokens per row.
        prompt_lengths: long [batch] or None; where a teacher-forced answer starts
            (tokens[b, prompt_lengths[b]:lengths[b]] is the answer). None: no answer part.

    Example::

        batch = AttackBatch.from_lists([[5, 7, 9], [4, 2]], pad_id=0)
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    prompt_lengths: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2:
            raise ToolkitError(f"AttackBatch: tokens must be [batch, pos], got {tuple(self.tokens.shape)}")
        n, t = self.tokens.shape
        if self.lengths.shape != (n,) or (self.lengths < 1).any() or (self.lengths > t).any():
            raise ToolkitError(f"AttackBatch: lengths {self.lengths.tolist()} do not fit tokens [{n}, {t}]")
        if self.prompt_lengths is not None:
            p = self.prompt_lengths
            if p.shape != (n,) or (p < 1).any() or (p > self.lengths).any():
                raise ToolkitError(
                    f"AttackBatch: prompt_lengths {p.tolist()} must lie in [1, length] per row "
                    f"(lengths {self.lengths.tolist()})"
                )

    @classmethod
    def from_lists(
        cls,
        sequences: Sequence[Sequence[int]],
        pad_id: int = 0,
        prompt_lengths: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> AttackBatch:
        if not sequences:
            raise ToolkitError("AttackBatch: no sequences given")
        width = max(len(s) for s in sequences)
        tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            tokens[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
        prompts = None if prompt_lengths is None else torch.as_tensor(list(prompt_lengths), dtype=torch.long)
        return cls(tokens.to(device), lengths.to(device), None if prompts is None else prompts.to(device))

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @property
    def width(self) -> int:
        return self.tokens.shape[1]

    def valid(self) -> torch.Tensor:
        """bool [batch, pos]: real (non-pad) tokens."""
        return torch.arange(self.width, device=self.tokens.device)[None] < self.lengths[:, None]

    def last(self) -> torch.Tensor:
        """long [batch]: index of the last real token."""
        return self.lengths - 1

    def answer_start(self) -> torch.Tensor:
        if self.prompt_lengths is None:
            raise ToolkitError("AttackBatch: this batch has no answer part (prompt_lengths is None)")
        return self.prompt_lengths

    def select(self, rows: torch.Tensor) -> AttackBatch:
        prompts = None if self.prompt_lengths is None else self.prompt_lengths[rows]
        return AttackBatch(self.tokens[rows], self.lengths[rows], prompts)
