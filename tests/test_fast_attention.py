"""The copy-free attention gives TransformerLens's logits, gradients and hook shapes."""

from __future__ import annotations

import pytest
import torch

from attacks.forward import frozen_weights
from experiments.subject.fast_attention import use_fast_attention
from tests.helpers import tiny_model, tiny_tokens


def _pair(kv_heads):
    slow, fast = tiny_model(seed=4, n_key_value_heads=kv_heads), tiny_model(seed=4, n_key_value_heads=kv_heads)
    assert use_fast_attention(fast) == fast.cfg.n_layers
    return slow, fast


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_fast_attention_matches_transformer_lens(kv_heads):
    slow, fast = _pair(kv_heads)
    tokens = tiny_tokens(3, 7, seed=2)
    mask = torch.ones_like(tokens)
    mask[0, :2] = 0  # left padding: rotary positions and masking come from the mask
    for kwargs in ({}, {"attention_mask": mask}):
        torch.testing.assert_close(fast(tokens, **kwargs), slow(tokens, **kwargs), rtol=1e-5, atol=1e-5)
    for model in (slow, fast):  # weight gradients flow through the per-call path
        model.zero_grad()
        model(tokens).logsumexp(-1).sum().backward()
    for name in ("W_Q", "W_O", "_W_K" if kv_heads else "W_K"):
        torch.testing.assert_close(getattr(fast.blocks[0].attn, name).grad, getattr(slow.blocks[0].attn, name).grad,
                                   rtol=1e-4, atol=1e-5)
    seen = {}

    def record(x, hook):
        seen[hook.name] = x.shape

    hooks = [(f"blocks.1.attn.{h}", record) for h in ("hook_q", "hook_k", "hook_pattern", "hook_z")]
    with slow.hooks(fwd_hooks=hooks):
        slow(tokens)
    want = dict(seen)
    seen.clear()
    with fast.hooks(fwd_hooks=hooks):
        fast(tokens)
    assert seen == want


def test_cached_matrices_follow_weight_edits_and_frozen_input_gradients_match():
    slow, fast = _pair(2)
    tokens = tiny_tokens(2, 6, seed=3)
    with torch.no_grad():
        fast(tokens)  # fills the cache
        for model in (slow, fast):
            model.blocks[1].attn.W_Q.add_(0.1)
        torch.testing.assert_close(fast(tokens), slow(tokens), rtol=1e-5, atol=1e-5)
    grads = []
    for model in (slow, fast):
        x = model.embed(tokens).detach().requires_grad_()
        with frozen_weights(model):
            (g,) = torch.autograd.grad(model(x, start_at_layer=0).logsumexp(-1).sum(), x)
        grads.append(g)
        assert all(p.requires_grad for p in model.parameters())  # restored
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_other_dtypes_keep_the_transformer_lens_attention():
    assert use_fast_attention(tiny_model(seed=3, dtype=torch.float64)) == 0
