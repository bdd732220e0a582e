"""Soft-suffix baseline: learned continuous token embeddings inserted into the prompt.

Source: the soft-prompt / embedding-space attack baseline used as a comparison point in
Cui, Shen, Yang, "SAE Interventions are Unreliable" (arXiv 2606.18322; 16 tokens recover
24/24 refusals there, at a defended-feature drift of ~0.82). Unlike residual recovery it
perturbs only the input embeddings and leaves every defended site free to move, which is
why its drift is large.

Threat model: ``n_suffix`` free vectors in embedding space (no norm bound unless
``max_norm`` is set), placed right after the user's message and before the end-of-turn
marker, so the assistant turn markers stay intact (``insert_before`` names the chat format's
end-of-turn marker; with ``insert_before=None`` the suffix goes at the very end of the prompt). The
defense is active during optimisation (``defense.applied(model)``), so the attacker
differentiates through it. Adam maximises ``objective(logits, batch) -> [batch]``;
an example stops as soon as ``success(logits, batch, scores)`` holds for it, and its
embeddings at that point are kept.

Shapes: embeddings [batch, n_suffix, d_model]; tokens [batch, pos] right-padded.

Example::

    examples = [SuffixExample.from_prompt(tok, chat_prompt(q), target=a, insert_before=END) for q, a in pairs]
    result = SoftSuffixAttack(SoftSuffixConfig(n_suffix=16)).run(
        model, examples, target_logprob, success=lambda lg, b, s: s > -0.5, defense=clamp)
    gen = generate(model, result.prompt_tokens(examples), defense=clamp,
                   perturbations=[result.as_perturbation(model, examples)])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from attacks.forward import frozen_cache
from attacks.perturbation import Perturbation
from guard.errors import ToolkitError

EMBED_SITE = "hook_embed"


@dataclass(frozen=True)
class SuffixExample:
    """One prompt split where the suffix goes, and an optional teacher-forced target answer.

    before, after: token ids around the suffix; target: answer ids appended after ``after``.
    """

    before: tuple[int, ...]
    after: tuple[int, ...] = ()
    target: tuple[int, ...] = ()

    @classmethod
    def from_prompt(cls, tokenizer, prompt: str, target: str = "",
                    insert_before: str | None = None) -> SuffixExample:
        """Split ``prompt`` at the last ``insert_before`` (the end of the user turn) or append at the end."""
        if insert_before is None:
            before, after = prompt, ""
        else:
            cut = prompt.rfind(insert_before)
            if cut < 0:
                raise ToolkitError(f"soft suffix: marker {insert_before!r} not found in the prompt")
            before, after = prompt[:cut], prompt[cut:]

        def ids(text: str) -> tuple[int, ...]:
            return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()

        return cls(ids(before), ids(after), ids(target))

    def prompt_ids(self, n_suffix: int, placeholder: int) -> list[int]:
        return [*self.before, *([placeholder] * n_suffix), *self.after]


@dataclass(frozen=True)
class SuffixBatch:
    """What the objective sees: right-padded tokens and where each part sits.

    tokens: long [b, pos]; lengths, suffix_start, target_start, target_lengths: long [b];
    rows: long [b], index of each example in the attack's input list.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor
    suffix_start: torch.Tensor
    target_start: torch.Tensor
    target_lengths: torch.Tensor
    rows: torch.Tensor

    def select(self, idx: torch.Tensor) -> SuffixBatch:
        return SuffixBatch(*(t[idx] for t in (self.tokens, self.lengths, self.suffix_start,
                                              self.target_start, self.target_lengths, self.rows)))

    def shifted(self, p0: int) -> SuffixBatch:
        """The same examples from position ``p0`` on (positions counted from ``p0``; rows unchanged)."""
        if p0 == 0:
            return self
        return SuffixBatch(self.tokens[:, p0:], self.lengths - p0, self.suffix_start - p0,
                           self.target_start - p0, self.target_lengths, self.rows)

    def last(self) -> torch.Tensor:
        """long [b]: position of the last prompt token (whose logits predict the first answer token)."""
        return self.target_start - 1


def target_logprob(logits: torch.Tensor, batch: SuffixBatch) -> torch.Tensor:
    """Mean teacher-forced log-probability of each example's target tokens: float [b]."""
    logp = logits.float().log_softmax(-1)
    pos = torch.arange(logits.shape[1], device=logits.device)[None]
    start, n = batch.target_start[:, None], batch.target_lengths[:, None]
    in_target = (pos >= start) & (pos < start + n)  # positions of target tokens
    # the token at position t is predicted by logits at t - 1
    pred = logp[:, :-1].gather(-1, batch.tokens[:, 1:, None])[..., 0]
    mask = in_target[:, 1:].to(pred.dtype)
    if (batch.target_lengths == 0).any():
        raise ToolkitError("soft suffix: target_logprob needs a non-empty target for every example")
    return (pred * mask).sum(-1) / batch.target_lengths.to(pred.dtype)


@dataclass(frozen=True)
class SoftSuffixConfig:
    """Soft-suffix attack settings.

    n_suffix: suffix length (tokens). steps: Adam steps. lr: Adam learning rate.
    init: 'token' (embedding of ``init_token_id``, default the placeholder) or 'random'
    (Gaussian scaled to the mean embedding norm). max_norm: optional per-vector L2 cap,
    relative to the mean embedding norm. placeholder: token id fed at suffix positions
    (its embedding is overwritten). seed: for 'random' init. reuse_prefix: compute the keys
    and values of the positions before the earliest suffix once, under the defense, and run
    each step from there (same result; assumes the defense edits each position independently,
    as the clamps and residual defenses in guard/ do).
    """

    name: ClassVar[str] = "soft_suffix"
    n_suffix: int = 16
    steps: int = 100
    lr: float = 1e-2
    init: str = "token"
    init_token_id: int | None = None
    max_norm: float | None = None
    placeholder: int = 0
    seed: int = 0
    reuse_prefix: bool = True

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class SuffixResult:
    """Best suffix per example.

    embeddings: float [batch, n_suffix, d_model]; scores: float [batch] (objective at those
    embeddings); success: bool [batch]; steps: long [batch], optimiser steps taken;
    history: mean objective over still-active examples, per step.
    """

    embeddings: torch.Tensor
    scores: torch.Tensor
    success: torch.Tensor
    steps: torch.Tensor
    history: tuple[float, ...]
    n_suffix: int
    placeholder: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "scores": self.scores.tolist(),
            "success": self.success.tolist(),
            "steps": self.steps.tolist(),
            "history": list(self.history),
            "n_suffix": self.n_suffix,
            "embedding_norms": self.embeddings.norm(dim=-1).mean(-1).tolist(),
        }

    def prompt_tokens(self, examples: Sequence[SuffixExample]) -> list[list[int]]:
        """Prompt ids with placeholders at the suffix (to generate from, with :meth:`as_perturbation`)."""
        return [e.prompt_ids(self.n_suffix, self.placeholder) for e in examples]

    def as_perturbation(self, model, examples: Sequence[SuffixExample]) -> Perturbation:
        """The suffix as an additive edit at ``hook_embed``: placeholder embedding -> learned embedding."""
        prompts = self.prompt_tokens(examples)
        width = max(len(p) for p in prompts)
        d_model = self.embeddings.shape[-1]
        w_e = model.W_E.detach()
        delta = torch.zeros((len(prompts), width, d_model), dtype=w_e.dtype, device=w_e.device)
        mask = torch.zeros((len(prompts), width), dtype=torch.bool, device=w_e.device)
        for b, e in enumerate(examples):
            s = len(e.before)
            delta[b, s : s + self.n_suffix] = self.embeddings[b].to(w_e) - w_e[self.placeholder]
            mask[b, s : s + self.n_suffix] = True
        return Perturbation(EMBED_SITE, delta, mask)


@dataclass(frozen=True)
class _Prefix:
    """Keys/values of positions [0, length) per layer, for every example of the attack's batch."""

    length: int
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def cache(self, rows: torch.Tensor) -> TransformerLensKeyValueCache:
        return frozen_cache(self.keys, self.values, rows, self.length)


def _defended(model, defense):
    return defense.applied(model) if defense is not None else contextlib.nullcontext()


Objective = Callable[[torch.Tensor, SuffixBatch], torch.Tensor]
Success = Callable[[torch.Tensor, SuffixBatch, torch.Tensor], torch.Tensor]


def build_batch(examples: Sequence[SuffixExample], n_suffix: int, placeholder: int, pad_id: int,
                device) -> SuffixBatch:
    seqs = [[*e.prompt_ids(n_suffix, placeholder), *e.target] for e in examples]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)

    def col(values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return SuffixBatch(
        tokens=tokens.to(device),
        lengths=col([len(s) for s in seqs]),
        suffix_start=col([len(e.before) for e in examples]),
        target_start=col([len(e.before) + n_suffix + len(e.after) for e in examples]),
        target_lengths=col([len(e.target) for e in examples]),
        rows=col(list(range(len(seqs)))),
    )


class SoftSuffixAttack:
    """Adam on suffix embeddings, per-example early stop, defense active throughout."""

    def __init__(self, config: SoftSuffixConfig = SoftSuffixConfig()) -> None:
        if config.n_suffix < 1 or config.steps < 0 or config.lr <= 0:
            raise ToolkitError(f"soft suffix: bad config {config.to_dict()}")
        if config.init not in ("token", "random"):
            raise ToolkitError(f"soft suffix: init must be 'token' or 'random', got {config.init!r}")
        self.config = config

    def _init(self, model, n: int) -> torch.Tensor:
        cfg = self.config
        w_e = model.W_E.detach()
        scale = w_e.norm(dim=-1).mean()
        if cfg.init == "random":
            gen = torch.Generator().manual_seed(cfg.seed)
            x = torch.randn((n, cfg.n_suffix, w_e.shape[1]), generator=gen).to(w_e)
            return x * scale / x.norm(dim=-1, keepdim=True)
        token = cfg.placeholder if cfg.init_token_id is None else cfg.init_token_id
        return w_e[token].expand(n, cfg.n_suffix, -1).clone()

    def _project(self, emb: torch.Tensor, model) -> None:
        if self.config.max_norm is None:
            return
        cap = self.config.max_norm * model.W_E.detach().norm(dim=-1).mean()
        norms = emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        emb.mul_(torch.clamp(cap / norms, max=1.0))

    @torch.no_grad()
    def _prefix(self, model, batch: SuffixBatch, defense) -> _Prefix | None:
        """Keys/values of every layer over the positions before the earliest suffix (defended)."""
        p0 = int(batch.suffix_start.min())
        if not self.config.reuse_prefix or p0 == 0:
            return None
        n = len(batch.rows)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n)
        ones = torch.ones((n, p0), dtype=torch.int, device=batch.tokens.device)
        with _defended(model, defense):
            model(batch.tokens[:, :p0], return_type=None, past_kv_cache=cache, attention_mask=ones)
        return _Prefix(p0, [e.past_keys for e in cache.entries], [e.past_values for e in cache.entries])

    def _forward(self, model, batch: SuffixBatch, emb: torch.Tensor, defense,
                 prefix: _Prefix | None = None) -> tuple[torch.Tensor, SuffixBatch]:
        """Logits from the first uncached position on, and ``batch`` shifted to match."""
        p0, cache = (0, None) if prefix is None else (prefix.length, prefix.cache(batch.rows))
        batch = batch.shifted(p0)
        n = self.config.n_suffix
        rows = torch.arange(len(batch.rows), device=emb.device)[:, None].expand(-1, n)
        cols = batch.suffix_start[:, None] + torch.arange(n, device=emb.device)[None]

        def overwrite(embed: torch.Tensor, hook) -> torch.Tensor:
            return embed.index_put((rows.reshape(-1), cols.reshape(-1)), emb.reshape(-1, emb.shape[-1]).to(embed))

        with model.hooks(fwd_hooks=[(EMBED_SITE, overwrite)]), _defended(model, defense):
            if cache is None:
                return model(batch.tokens), batch
            mask = torch.ones(batch.tokens.shape, dtype=torch.int, device=batch.tokens.device)
            return model(batch.tokens, past_kv_cache=cache, attention_mask=mask), batch

    def run(self, model, examples: Sequence[SuffixExample], objective: Objective,
            success: Success | None = None, defense=None, progress: bool = False) -> SuffixResult:
        """Optimise one suffix per example; returns the best embeddings seen for each."""
        if not examples:
            raise ToolkitError("soft suffix: no examples")
        if EMBED_SITE not in model.hook_dict:
            raise ToolkitError(f"soft suffix: the model has no {EMBED_SITE!r} hook")
        cfg = self.config
        device = model.W_E.device
        pad = model.tokenizer.pad_token_id if getattr(model, "tokenizer", None) is not None else None
        batch = build_batch(examples, cfg.n_suffix, cfg.placeholder, pad if pad is not None else 0, device)
        if int(batch.lengths.max()) > model.cfg.n_ctx:
            raise ToolkitError(f"soft suffix: sequences reach {int(batch.lengths.max())} > n_ctx {model.cfg.n_ctx}")
        n = len(examples)
        emb = self._init(model, n).requires_grad_(True)
        opt = torch.optim.Adam([emb], lr=cfg.lr)
        best = emb.detach().clone()
        best_scores = torch.full((n,), float("-inf"), device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        steps = torch.zeros(n, dtype=torch.long, device=device)
        history: list[float] = []

        prefix = self._prefix(model, batch, defense)

        def evaluate(active: torch.Tensor, with_grad: bool) -> torch.Tensor:
            with torch.set_grad_enabled(with_grad):
                logits, sub = self._forward(model, batch.select(active), emb[active], defense, prefix)
                scores = objective(logits, sub)
            if scores.shape != (len(active),):
                raise ToolkitError(f"soft suffix: objective returned shape {tuple(scores.shape)}, expected ({len(active)},)")
            s = scores.detach().float()
            better = s > best_scores[active]
            best[active[better]] = emb.detach()[active[better]]
            best_scores[active[better]] = s[better]
            if success is not None:
                ok = torch.as_tensor(success(logits.detach(), sub, s), device=device).bool()
                best[active[ok]] = emb.detach()[active[ok]]  # keep the successful point itself
                best_scores[active[ok]] = s[ok]
                done[active[ok]] = True
            return scores

        for _ in tqdm(range(cfg.steps), disable=not progress, desc="soft suffix", leave=False):
            active = (~done).nonzero().squeeze(-1)
            if len(active) == 0:
                break
            scores = evaluate(active, with_grad=True)
            history.append(float(scores.detach().mean()))
            # gradient for the suffix only: no .grad piles up on the model's weights
            (grad,) = torch.autograd.grad(-scores.sum(), emb)
            opt.zero_grad()
            emb.grad = grad
            opt.step()
            with torch.no_grad():
                self._project(emb, model)
            steps[active[~done[active]]] += 1  # an example that succeeded at this evaluation took no step
        active = (~done).nonzero().squeeze(-1)
        if len(active):
            evaluate(active, with_grad=False)  # score the final update too
        return SuffixResult(best, best_scores.cpu(), done.cpu(), steps.cpu(), tuple(history),
                            cfg.n_suffix, cfg.placeholder)
