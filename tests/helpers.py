"""Tiny random models and SAEs for unit tests: built in code, never downloaded."""

from __future__ import annotations

import torch
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from transformer_lens import HookedTransformer

from certify.selftest import D_MODEL, D_SAE, D_VOCAB, randomise_sae
from certify.selftest import tiny_model as selftest_tiny_model

__all__ = ["D_MODEL", "D_SAE", "D_VOCAB", "tiny_model", "tiny_sae", "tiny_tokens"]


def tiny_model(n_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32) -> HookedTransformer:
    """The self-test's random transformer (the subject's hook layout); the test's own draws then
    come from a stream seeded with ``seed``, so every test's inputs are reproducible."""
    model = selftest_tiny_model(n_layers=n_layers, seed=seed, dtype=dtype)
    torch.manual_seed(seed)
    return model


def tiny_sae(kind: str = "standard", d_in: int = D_MODEL, d_sae: int = D_SAE, seed: int = 0,
             dtype: torch.dtype = torch.float32, k: int = 4):
    """A tiny random SAELens SAE: ``standard`` (ReLU), ``jumprelu`` or ``topk``."""
    common = dict(d_in=d_in, d_sae=d_sae, dtype=str(dtype).removeprefix("torch."))
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
    elif kind == "topk":
        sae = TopKSAE(TopKSAEConfig(k=k, **common))
    else:
        raise ValueError(f"unknown tiny SAE kind {kind!r}")
    return randomise_sae(sae, seed, dtype)


def tiny_tokens(batch: int = 3, pos: int = 8, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, D_VOCAB, (batch, pos), generator=gen)
