"""Tiny random models and SAEs for unit tests: built in code, never downloaded."""

from __future__ import annotations

import re

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

__all__ = ["D_MODEL", "D_SAE", "D_VOCAB", "MERGED", "WordTokenizer", "tiny_model", "tiny_sae", "tiny_tokens"]


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


MERGED = 40  # with merges on, the one token whose text is that of tokens 3 and 4 together


class WordTokenizer:
    """A tokenizer for the tiny models: token i is the word " t<i>", token 0 the special "<s>".
    With ``merge``, " t3 t4" is one token (MERGED), so the sequence [3, 4] does not survive
    decode then encode."""

    all_special_ids = [0]
    padding_side = "right"
    pad_token_id = 0

    def __init__(self, merge: bool = True) -> None:
        self.merge = merge

    def __len__(self) -> int:
        return D_VOCAB

    def _word(self, i: int) -> str:
        return "<s>" if i == 0 else " t3 t4" if self.merge and i == MERGED else f" t{i}"

    def decode(self, ids) -> str:
        return "".join(self._word(int(i)) for i in ids)

    def batch_decode(self, seqs, clean_up_tokenization_spaces=False) -> list[str]:
        return [self.decode(s) for s in seqs]

    def _encode(self, text: str) -> list[int]:
        out: list[int] = []
        for word in re.findall(r"<s>| t\d+", text):
            i = 0 if word == "<s>" else int(word[2:])
            if self.merge and out and out[-1] == 3 and i == 4:
                out[-1] = MERGED
            else:
                out.append(i)
        return out

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [self._encode(t) for t in texts] if isinstance(texts, list) else self._encode(texts)}
