"""Batches of variable-length prompts: right-padded tokens plus each prompt's final position.

Right padding keeps every real token at the position it has alone (rotary positions and
the causal mask are unchanged), so a padded batch gives the same final-position logits as
running each prompt by itself; padding only sits after the positions we read.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformer_lens.utilities.activation_functions import apply_softcap

from experiments.settings.sample import Sample
from guard.errors import ToolkitError


@dataclass(frozen=True)
class Batch:
    """Samples stacked for one forward pass.

    ``tokens`` [batch, pos] long, right-padded with ``pad_id``; ``lengths`` [batch] real
    token counts; ``target`` [batch]; ``foils`` [batch, n_foils] padded with -1 (n_foils may
    be 0); ``ids`` the sample ids in order.
    """

    ids: tuple[str, ...]
    tokens: torch.Tensor
    lengths: torch.Tensor
    target: torch.Tensor
    foils: torch.Tensor

    @property
    def last(self) -> torch.Tensor:
        """Index of each prompt's final position [batch]."""
        return self.lengths - 1

    @property
    def mask(self) -> torch.Tensor:
        """[batch, pos] True on real tokens, False on padding."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return pos[None, :] < self.lengths[:, None]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: str | torch.device) -> Batch:
        return Batch(self.ids, self.tokens.to(device), self.lengths.to(device),
                     self.target.to(device), self.foils.to(device))


def collate(samples: Sequence[Sample], pad_id: int = 0, device: str | torch.device = "cpu") -> Batch:
    """Stack samples into a right-padded :class:`Batch`."""
    if not samples:
        raise ToolkitError("collate: no samples given")
    width = max(len(s.tokens) for s in samples)
    n_foils = max(len(s.foils) for s in samples)
    tokens = torch.full((len(samples), width), pad_id, dtype=torch.long)
    foils = torch.full((len(samples), n_foils), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        tokens[i, : len(s.tokens)] = torch.tensor(s.tokens, dtype=torch.long)
        if s.foils:
            foils[i, : len(s.foils)] = torch.tensor(s.foils, dtype=torch.long)
    lengths = torch.tensor([len(s.tokens) for s in samples], dtype=torch.long)
    target = torch.tensor([s.target for s in samples], dtype=torch.long)
    return Batch(tuple(s.id for s in samples), tokens, lengths, target, foils).to(device)


def batches(samples: Sequence[Sample], batch_size: int, pad_id: int = 0,
            device: str | torch.device = "cpu") -> Iterator[Batch]:
    """Consecutive batches of at most ``batch_size`` samples, in the given order."""
    if batch_size < 1:
        raise ToolkitError(f"batches: batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(samples), batch_size):
        yield collate(samples[start : start + batch_size], pad_id=pad_id, device=device)


def check_vocab(model, batch: Batch) -> None:
    """Token ids must fit the model's vocabulary (a wrong tokenizer shows up here)."""
    d_vocab = int(model.cfg.d_vocab)
    top = max(int(batch.tokens.max()), int(batch.target.max()), int(batch.foils.max()) if batch.foils.numel() else -1)
    if top >= d_vocab:
        raise ToolkitError(
            f"batch {batch.ids[:3]}...: token id {top} is outside the model's vocabulary of {d_vocab} "
            "(were the samples tokenized with this model's tokenizer?)"
        )


def final_logits(model, batch: Batch) -> torch.Tensor:
    """Next-token logits at each prompt's final position: [batch, d_vocab].

    Runs the blocks on the whole batch but the final norm and unembedding only at the
    final positions (the unembedding is the costliest layer for a 49k vocabulary). Hooks
    attached to the model (defenses, perturbations) apply as in a normal forward.
    """
    check_vocab(model, batch)
    device = model.cfg.device
    tokens = batch.tokens.to(device)
    resid = model(tokens, stop_at_layer=model.cfg.n_layers)  # [batch, pos, d_model]
    rows = torch.arange(len(batch), device=resid.device)
    resid_last = resid[rows, batch.last.to(resid.device)][:, None, :]  # [batch, 1, d_model]
    if model.cfg.normalization_type is not None:
        resid_last = model.ln_final(resid_last)
    logits = model.unembed(resid_last)[:, 0, :]
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)
