"""Gated MLPs without per-call weight copies, for float32 models on CPU.

TransformerLens's ``GatedMLP.forward`` multiplies by ``W.T.contiguous()``, which copies all
three weight matrices on every call (to match Hugging Face's bfloat16 accumulation order).
On the embedded subject that copy was half the time of an attack step (9.9 of 20.4 s in a
30-step profile: 3 x 576 x 1536 floats per layer, forward and backward). In float32 the
plain product gives the same values up to summation order (checked in the tests to 1e-5),
so the subject uses it; hooks (``hook_pre``, ``hook_pre_linear``, ``hook_post``) are unchanged.
"""

from __future__ import annotations

import types

import torch
from transformer_lens.components.mlps.gated_mlp import GatedMLP


def _forward(self: GatedMLP, x: torch.Tensor) -> torch.Tensor:
    pre_act = self.hook_pre(x @ self.W_gate)
    pre_linear = self.hook_pre_linear(x @ self.W_in)
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear + self.b_in)
    return post_act @ self.W_out + self.b_out


def use_fast_mlps(model) -> int:
    """Give every plain gated MLP of ``model`` the copy-free forward (float32 only); returns how many."""
    if model.cfg.dtype != torch.float32:
        return 0
    n = 0
    for block in model.blocks:
        mlp = block.mlp
        if type(mlp) is GatedMLP and not (model.cfg.is_layer_norm_activation() and getattr(mlp, "ln", None)):
            mlp.forward = types.MethodType(_forward, mlp)
            n += 1
    return n
