"""Attention without per-call weight copies, for float32 rotary models on CPU.

TransformerLens's attention forward rearranges ``W_Q``, ``W_K``, ``W_V`` ([head, d_model,
d_head]) and ``W_O`` into 2-D matrices on every call (a copy of each) and, for grouped-query
attention, repeats keys and values per query head. On the embedded subject those copies
were 14% of an attack's CPU time (torch profiler, 64 rows, 10 steps). Here the 2-D matrices
are made once per weight version and reused whenever no gradient to the weights is wanted
(``torch.no_grad`` or frozen weights: the attack engine freezes them, ``attacks.forward.frozen``);
otherwise they are rearranged per call as before, so weight gradients stay exact. Queries are
grouped by key/value head instead of repeating keys and values. Hooks ``hook_q``, ``hook_k``,
``hook_v``, ``hook_rot_q``, ``hook_rot_k``, ``hook_attn_scores``, ``hook_pattern`` and ``hook_z``
fire with TransformerLens's shapes; the tests check outputs against TransformerLens's forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from transformer_lens.components.abstract_attention import AbstractAttention
from transformer_lens.utilities import apply_softcap


def _in(w: torch.Tensor) -> torch.Tensor:
    """[head, d_model, d_head] -> [head * d_head, d_model] (``F.linear``'s layout, as TransformerLens)."""
    return w.permute(0, 2, 1).reshape(-1, w.shape[1])


def _out(w: torch.Tensor) -> torch.Tensor:
    """W_O [head, d_head, d_model] -> [d_model, head * d_head]."""
    return w.reshape(-1, w.shape[-1]).T.contiguous()


def _matrices(attn, grouped: bool) -> tuple[torch.Tensor, ...]:
    """W_Q, W_K, W_V, W_O in ``F.linear`` layout: cached per weight version when no weight
    gradient is needed, rearranged (differentiably) on every call otherwise."""
    ws = (attn.W_Q, attn._W_K, attn._W_V, attn.W_O) if grouped else (attn.W_Q, attn.W_K, attn.W_V, attn.W_O)
    if torch.is_grad_enabled() and any(w.requires_grad for w in ws):
        return _in(ws[0]), _in(ws[1]), _in(ws[2]), _out(ws[3])
    key = tuple((w.data_ptr(), w._version) for w in ws)
    if getattr(attn, "_matrices_key", None) != key:
        with torch.no_grad():
            attn._matrices = (_in(ws[0]), _in(ws[1]), _in(ws[2]), _out(ws[3]))
        attn._matrices_key = key
    return attn._matrices


def _forward(self, query_input, key_input, value_input, past_kv_cache_entry=None,
             additive_attention_mask=None, attention_mask=None, position_bias=None):
    cfg = self.cfg
    grouped = hasattr(self, "_W_K") and not cfg.ungroup_grouped_query_attention
    w_q, w_k, w_v, w_o = _matrices(self, grouped)
    b_k, b_v = (self._b_K, self._b_V) if grouped else (self.b_K, self.b_V)
    n, p = query_input.shape[:2]
    heads, d_head = cfg.n_heads, cfg.d_head
    q = self.hook_q(F.linear(query_input, w_q, self.b_Q.flatten()).view(n, p, heads, d_head))
    k = self.hook_k(F.linear(key_input, w_k, b_k.flatten()).view(n, key_input.shape[1], -1, d_head))
    v = self.hook_v(F.linear(value_input, w_v, b_v.flatten()).view(n, value_input.shape[1], -1, d_head))
    offset = 0
    if past_kv_cache_entry is not None:
        offset = past_kv_cache_entry.past_keys.size(1)
        k, v = past_kv_cache_entry.append(k, v)
    q = self.hook_rot_q(self.apply_rotary(q, offset, attention_mask))
    k = self.hook_rot_k(self.apply_rotary(k, 0, attention_mask))
    if k.shape[2] != heads:  # grouped-query attention: query head h reads key/value head h // group
        k = k.repeat_interleave(heads // k.shape[2], dim=2)
        v = v.repeat_interleave(heads // v.shape[2], dim=2)
    scores = apply_softcap(q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / self.attn_scale, cfg.attn_scores_soft_cap)
    scores = self.apply_causal_mask(scores, offset, attention_mask)  # [n, head, p, t]
    if additive_attention_mask is not None:
        scores = scores + additive_attention_mask
    pattern = F.softmax(self.hook_attn_scores(scores), dim=-1)
    pattern = self.hook_pattern(torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern))
    z = self.hook_z((pattern @ v.transpose(1, 2)).transpose(1, 2))  # [n, p, head, d_head]
    return F.linear(z.reshape(n, p, heads * d_head), w_o, self.b_O)


_UNSUPPORTED = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_qk_norm", "load_in_4bit",
                "use_logn_attn", "use_attention_sinks", "clip_qkv")


def _supported(attn, cfg) -> bool:
    return (isinstance(attn, AbstractAttention) and cfg.dtype == torch.float32
            and cfg.positional_embedding_type == "rotary" and cfg.attention_dir == "causal"
            and not any(getattr(cfg, flag, None) for flag in _UNSUPPORTED)
            and not str(cfg.original_architecture).startswith("Olmo")
            and getattr(attn, "_attention_dir_override", None) in (None, "causal"))


def use_fast_attention(model) -> int:
    """Give every supported attention layer of ``model`` the copy-free forward; returns how many."""
    n = 0
    for block in model.blocks:
        if _supported(block.attn, model.cfg):
            block.attn.forward = types.MethodType(_forward, block.attn)
            n += 1
    return n
