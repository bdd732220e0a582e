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
from transformer_lens import HookedTransformer, HookedTransformerConfig

from certify.selftest import randomise_sae

D_MODEL = 16
D_SAE = 32
D_VOCAB = 50


def tiny_model(n_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32) -> HookedTransformer:
    """A random 2-layer transformer with the same hook layout as the real subject."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=D_MODEL,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=D_VOCAB,
        n_ctx=32,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        default_prepend_bos=False,
        seed=seed,
        dtype=dtype,
        device="cpu",
    )
    return HookedTransformer(cfg).eval()


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
