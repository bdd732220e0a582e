"""Utility cost of a defense: next-token cross-entropy increase and KL to the undefended model
on benign text.

Per defense: ``delta_ce`` = CE(defended) - CE(undefended), ``kl`` = mean over predicted
tokens of KL(undefended || defended) (nats); for a detector, ``flag_rate``, the fraction of benign
sequences it flags. The pipeline that calibrates every registered
defense and measures it is ``experiments.utility`` (and the certify suites).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm import tqdm

from guard.base import Defense
from guard.errors import ToolkitError


@dataclass(frozen=True)
class UtilityResult:
    """Utility cost of one defense on ``n_tokens`` predicted tokens (CE in nats per token)."""

    name: str
    delta_ce: float
    kl: float
    ce_base: float
    ce_defended: float
    n_tokens: int
    flag_rate: float | None = None  # a detector: the fraction of benign sequences it flagged (its false positives)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def measure_utility_many(model, defenses: Mapping[str, Defense], tokens: torch.Tensor, *, batch_size: int = 4,
                         progress: bool = False) -> dict[str, UtilityResult]:
    """CE increase and KL(undefended || defended) for each defense on ``tokens`` [batch, pos]."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ToolkitError(f"utility: tokens must be [batch, pos >= 2], got {tuple(tokens.shape)}")
    ce_base = 0.0
    ce_def = dict.fromkeys(defenses, 0.0)
    kl = dict.fromkeys(defenses, 0.0)
    flagged: dict[str, int | None] = dict.fromkeys(defenses, 0)
    n = 0
    for defense in defenses.values():
        defense.draw(0)  # a randomized defense: one stream across the chunks, so its mean cost
    batches = tokens.split(batch_size)
    if progress:
        batches = tqdm(batches, desc="utility", leave=False)
    for batch in batches:
        target = batch[:, 1:, None]
        base = model(batch).log_softmax(-1)[:, :-1].double()
        ce_base += float(-base.gather(-1, target).sum())
        n += target.numel()
        for name, defense in defenses.items():
            with defense.applied(model):
                logp = model(batch).log_softmax(-1)[:, :-1].double()
                flags = defense.flags()
            if flags is None or flagged[name] is None:
                flagged[name] = None
            else:
                flagged[name] += int(flags.sum())
            ce_def[name] += float(-logp.gather(-1, target).sum())
            kl[name] += float((base.exp() * (base - logp)).sum())
    return {name: UtilityResult(name=name, delta_ce=(ce_def[name] - ce_base) / n, kl=kl[name] / n,
                                ce_base=ce_base / n, ce_defended=ce_def[name] / n, n_tokens=n,
                                flag_rate=None if flagged[name] is None else flagged[name] / tokens.shape[0])
            for name in defenses}


def measure_utility(model, defense: Defense, tokens: torch.Tensor, *, batch_size: int = 4) -> UtilityResult:
    """CE increase and KL to the undefended model of one defense on ``tokens`` [batch, pos]."""
    return measure_utility_many(model, {defense.name: defense}, tokens, batch_size=batch_size)[defense.name]


def random_features(saes: Mapping[str, object], n: int = 16, seed: int = 0) -> dict[str, tuple[int, ...]]:
    """A fixed random set of ``n`` latents per SAE site (the utility's stand-in feature set)."""
    gen = torch.Generator().manual_seed(seed)
    return {site: tuple(sorted(torch.randperm(int(sae.cfg.d_sae), generator=gen)[:n].tolist()))
            for site, sae in saes.items()}


def chunk_tokens(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[n_chunks, seq_len] from a 1-D token stream (the tail shorter than seq_len is dropped)."""
    n = tokens.numel() // seq_len
    if n < 2:
        raise ToolkitError(f"utility: need at least 2 chunks of {seq_len} tokens, the text has {tokens.numel()} tokens")
    return tokens[: n * seq_len].reshape(n, seq_len)
