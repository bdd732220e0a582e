"""Shared pieces for the settings tests: a word-level tokenizer and tiny-model samples."""

from __future__ import annotations

import re

import torch

from experiments.settings.sample import Sample
from tests.helpers import D_VOCAB


class WordTokenizer:
    """A stand-in for an HF tokenizer: one token per word with its leading whitespace; words
    longer than 8 characters become two tokens (so multi-token names exist). No BOS."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.vocab[piece]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out = []
        for word in re.findall(r"\s*\S+|\s+$", text):
            core = word.lstrip()
            if len(core) > 8:
                cut = len(word) - len(core) + 4
                out += [self._id(word[:cut]), self._id(word[cut:])]
            else:
                out.append(self._id(word))
        return out

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)


def random_samples(model, n: int = 6, seed: int = 0, min_len: int = 4, max_len: int = 9) -> list[Sample]:
    """Random-token prompts of varied length for the tiny model, where the behaviour is
    present by construction: target = the undefended top-1 next token, foil = the runner-up."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        tokens = torch.randint(0, D_VOCAB, (length,), generator=gen)
        with torch.no_grad():
            logits = model(tokens[None])[0, -1]
        top2 = logits.topk(2).indices.tolist()
        out.append(Sample(id=f"rand/{i}", prompt="", tokens=tuple(tokens.tolist()), target=top2[0],
                          foils=(top2[1],)))
    return out
