"""The copy-free gated MLP gives the same logits and gradients as TransformerLens's own forward."""

from __future__ import annotations

import torch

from experiments.subject.fast_mlp import use_fast_mlps
from tests.helpers import tiny_model, tiny_tokens


def test_fast_mlps_match_transformer_lens_and_keep_their_hooks():
    slow, fast = tiny_model(seed=3), tiny_model(seed=3)
    assert use_fast_mlps(fast) == fast.cfg.n_layers
    tokens = tiny_tokens(3, 7, seed=1)
    torch.testing.assert_close(fast(tokens), slow(tokens), rtol=1e-5, atol=1e-5)
    seen = []
    with fast.hooks(fwd_hooks=[("blocks.0.mlp.hook_pre", lambda x, hook: seen.append(x.shape))]):
        fast(tokens)
    assert seen == [torch.Size([3, 7, fast.cfg.d_mlp])]
    for model in (slow, fast):
        model.zero_grad()
        model(tokens).logsumexp(-1).sum().backward()
    torch.testing.assert_close(fast.blocks[1].mlp.W_in.grad, slow.blocks[1].mlp.W_in.grad, rtol=1e-4, atol=1e-5)


def test_other_dtypes_keep_the_transformer_lens_forward():
    model = tiny_model(seed=3, dtype=torch.float64)
    assert use_fast_mlps(model) == 0
