"""The token threat: a GCG-style search over real suffix tokens, with the defense in the loop.

Source: greedy coordinate gradient (Zou et al., arXiv 2307.15043): each step, the gradient of
the loss with respect to the one-hot suffix tokens ranks every position's replacements; B
candidates, each one suffix position swapped for one of its top-k tokens, are scored exactly
and the best becomes the new suffix. nanoGCG's defaults are 250 steps, 512 candidates, top-k
256, a 20-token suffix (docs/METHOD.md); ours are smaller so a CPU can run the ladder.

The suffix lives where the embedding threat's does (``attacks.suffix.SuffixSlot``); choosing
token v at a suffix position is the delta ``embed(v) - embed(current)`` at
``blocks.0.hook_resid_pre``, so the engine's cached forward, per-example early stop, best-point
record and independent check serve this attack unchanged. Candidates are scored under the
defense (with a detector's excess in the loss, so a monitor is attacked too) from the cached
prompt prefix, in chunks of ``chunk_rows`` rows. With a tokenizer, only tokens that decode to
printable ASCII are used, and a candidate whose text re-tokenises differently is never scored,
so a found suffix is a string; ``replay_tokens`` checks that afterwards, from scratch.

Example::

    stages = token_stages(steps=20, candidates=64, top_k=64)
    outcome = run_cascade(model, defense, slot.threat(1.0), objective, batch, stages)
    ok = replay_tokens(model, defense, objective, batch, outcome.result.perturbations[0])
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from attacks.batch import AttackBatch
from attacks.engine import AttackConfig, RecoveryAttack, RowState, RunContext
from attacks.forward import full_forward
from attacks.objectives import Objective
from attacks.perturbation import Perturbation
from attacks.runner import CascadeOutcome, Stage
from guard.base import Defense
from guard.errors import ToolkitError


@dataclass(frozen=True)
class TokenConfig(AttackConfig):
    """GCG settings: ``candidates`` scored per step and example, ``top_k`` replacements per position,
    ``chunk_rows`` candidate rows per forward; ``steps``, ``seed``, ``stop_margin``,
    ``reuse_prefix`` and ``detector_weight`` as for every attack."""

    name: ClassVar[str] = "gcg"
    candidates: int = 64
    top_k: int = 64
    chunk_rows: int = 512
    detector_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates < 1 or self.top_k < 1 or self.chunk_rows < 1:
            raise ToolkitError(f"attack {self.name!r}: candidates, top_k and chunk_rows must be >= 1")


def token_stages(steps: int = 20, candidates: int = 64, top_k: int = 64, seed: int = 0) -> tuple[Stage, ...]:
    """The token threat's cascade: GCG from the placeholders, then three times longer from the best suffix."""
    if steps < 0:
        raise ToolkitError(f"token cascade: steps must be >= 0, got {steps}")
    first = TokenConfig(steps=steps, candidates=candidates, top_k=top_k, seed=seed)
    return (Stage("gcg", TokenSearch, first),
            Stage("gcg_long", TokenSearch, TokenConfig(steps=3 * steps, candidates=candidates, top_k=top_k,
                                                       seed=seed + 1), from_best=True))


def embedding_table(model) -> torch.Tensor:
    """[d_vocab, d_model]: what each token puts into ``blocks.0.hook_resid_pre`` (before positions)."""
    with torch.no_grad():
        return model.embed(torch.arange(model.cfg.d_vocab, device=model.cfg.device)[None])[0]


@functools.lru_cache(maxsize=4)
def _printable(tokenizer) -> tuple[int, ...]:
    special = set(tokenizer.all_special_ids)
    keep = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        if i not in special and text.isascii() and text.isprintable() and text.strip():
            keep.append(i)
    return tuple(keep)


def allowed_tokens(model) -> torch.Tensor:
    """bool [d_vocab]: tokens a suffix may use (printable ASCII, no special token; all without a tokenizer)."""
    allowed = torch.ones(model.cfg.d_vocab, dtype=torch.bool)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        allowed[:] = False
        ids = [i for i in _printable(tokenizer) if i < model.cfg.d_vocab]
        allowed[torch.tensor(ids, dtype=torch.long)] = True
    return allowed.to(model.cfg.device)


def retokenizes(tokenizer, sequences: list[list[int]]) -> list[bool]:
    """Whether each token sequence comes back unchanged from decode then encode (True without a tokenizer)."""
    if tokenizer is None:
        return [True] * len(sequences)
    texts = tokenizer.batch_decode(sequences, clean_up_tokenization_spaces=False)
    again = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [list(a) == list(s) for a, s in zip(again, sequences, strict=True)]


def suffix_token_ids(model, batch: AttackBatch, perturbation: Perturbation) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [batch, pos] with each perturbed position replaced by the nearest token to
    embed(token) + delta, bool [batch]: whether every perturbed position is a token exactly)."""
    table = embedding_table(model).to(perturbation.delta.dtype)
    target = table[batch.tokens] + perturbation.delta
    points = target[perturbation.mask]
    idx = torch.cdist(points, table).argmin(dim=1)
    # cdist's matrix-product form loses ~sqrt(eps) x the norm to cancellation (a large embedding then
    # looks like no token): the exactness test uses the direct distance to the nearest token
    near = (points - table[idx]).norm(dim=-1)
    ids = batch.tokens.clone()
    ids[perturbation.mask] = idx
    off = (near > 1e-3 * table.norm(dim=-1).mean()).to(torch.long)  # a position that is no token
    misses = torch.zeros(batch.size, dtype=torch.long, device=ids.device)
    misses.index_add_(0, perturbation.mask.nonzero()[:, 0], off)
    return ids, misses == 0


@torch.no_grad()
def replay_tokens(model, defense: Defense, objective: Objective, batch: AttackBatch,
                  perturbation: Perturbation) -> torch.Tensor:
    """bool [batch]: the found suffix is made of tokens, survives decode/encode, and the behaviour is
    back in an ordinary forward of those tokens under the defense with no perturbation hook (and no
    detector flag)."""
    ids, exact = suffix_token_ids(model, batch, perturbation)
    seqs = [ids[i, : int(batch.lengths[i])].tolist() for i in range(batch.size)]
    same = torch.tensor(retokenizes(getattr(model, "tokenizer", None), seqs), device=ids.device)
    replay = AttackBatch(ids, batch.lengths, batch.prompt_lengths)
    defense.reset()
    logits, _ = full_forward(model, defense, replay, [], readout=objective.readout(replay))
    flags = defense.flags(valid=replay.valid()) if hasattr(defense, "excess") else defense.flags()
    defense.reset()
    flagged = torch.zeros_like(exact) if flags is None else flags.bool().to(exact.device)
    back = objective.success(logits, torch.arange(batch.size, device=ids.device)).to(exact.device)
    return exact & same & back & ~flagged


def with_replay(outcome: CascadeOutcome, replayed: torch.Tensor) -> CascadeOutcome:
    """The outcome with every success that did not replay (``replayed`` false) counted as none."""
    ok = outcome.result.success & replayed.to(outcome.result.success.device)
    stage = tuple(s if bool(ok[i]) else None for i, s in enumerate(outcome.stage))
    return replace(outcome, result=replace(outcome.result, success=ok), stage=stage)


class TokenSearch(RecoveryAttack):
    """GCG over the threat's perturbed positions (one site: ``blocks.0.hook_resid_pre``)."""

    def __init__(self, model, defense, threat, objective, config: TokenConfig | None = None) -> None:
        super().__init__(model, defense, threat, objective, config or TokenConfig())
        if not isinstance(self.config, TokenConfig):
            raise ToolkitError(f"token attack: needs a TokenConfig, got {type(self.config).__name__}")
        if len(self.bound.sites) != 1 or self.bound.sites[0] != "blocks.0.hook_resid_pre":
            raise ToolkitError(f"token attack: the threat must perturb blocks.0.hook_resid_pre only, got "
                               f"{list(self.bound.sites)}")
        self.table = embedding_table(model)
        self.allowed = allowed_tokens(model)
        self.tokenizer = getattr(model, "tokenizer", None)

    @property
    def site(self) -> str:
        return self.bound.sites[0]

    def _delta(self, ctx: RunContext, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        base = ctx.forward.batch.tokens[rows]
        mask = ctx.masks[self.site][rows, :, None]
        return (self.table[ids] - self.table[base]).to(ctx.forward.start_resid.dtype) * mask

    def init_delta(self, ctx, rows, restart, init=None):
        batch = ctx.forward.batch
        ids = batch.tokens[rows].clone()
        mask = ctx.masks[self.site][rows]
        if restart == 0 and init is not None:  # the nearest tokens to an earlier stage's best point
            sub = AttackBatch(batch.tokens[rows], batch.lengths[rows])
            ids, _ = suffix_token_ids(self.model, sub, Perturbation(self.site, init[self.site][rows], mask))
        elif restart > 0:
            pool = self.allowed.nonzero().flatten()
            draw = torch.randint(len(pool), ids.shape, generator=ctx.generator, device=pool.device)
            ids = torch.where(mask, pool[draw].to(ids.device), ids)
        seqs = [ids[i, : int(batch.lengths[r])].tolist() for i, r in enumerate(rows.tolist())]
        bad = [int(r) for r, ok in zip(rows.tolist(), retokenizes(self.tokenizer, seqs), strict=True) if not ok]
        if bad and restart == 0 and init is None:
            raise ToolkitError(f"token attack: rows {bad[:10]} do not survive decode/encode before any change; "
                               "a token suffix could never replay as text")
        return {self.site: self._delta(ctx, rows, ids)}

    def init_state(self, ctx, rows, deltas):
        sub = AttackBatch(ctx.forward.batch.tokens[rows], ctx.forward.batch.lengths[rows])
        ids, _ = suffix_token_ids(self.model, sub, Perturbation(self.site, deltas[self.site].detach(),
                                                                ctx.masks[self.site][rows]))
        return RowState(ids=ids)

    def _loss(self, ctx, rows, out, score) -> torch.Tensor:
        loss = self.objective.loss(score, rows)
        if self.config.detector_weight > 0 and self._detector():
            loss = loss + self.config.detector_weight * self.defense.excess(valid=self._real(ctx.forward.batch, rows, out))
        return loss

    def step(self, ctx, rows, deltas, out, score, drift, state):
        cfg, site = self.config, self.site
        mask = ctx.masks[site][rows]
        (g,) = torch.autograd.grad(self._loss(ctx, rows, out, score).sum(), [deltas[site]])
        g = g * mask[..., None].to(g.dtype)
        first = torch.isnan(ctx.grad_norm[rows])
        norms = g.flatten(1).norm(dim=1).float()
        if first.any() and (norms[first] == 0).any():
            ctx.flags.add("zero_gradient")
        ctx.grad_norm[rows[first]] = norms[first]
        # descent on the loss through the one-hot: -g . embed(v) ranks token v at each suffix position
        k = int(mask.sum(dim=1)[0])
        where = mask.nonzero()[:, 1].reshape(len(rows), k)  # [n, k] suffix positions per row
        g_suffix = g.gather(1, where[..., None].expand(-1, -1, g.shape[-1]))
        rank = -(g_suffix @ self.table.to(g.dtype).T)
        rank = rank.masked_fill(~self.allowed[None, None], -math.inf)
        top = rank.topk(min(cfg.top_k, int(self.allowed.sum())), dim=-1).indices  # [n, k, top_k]
        ids = state["ids"]
        n, b = len(rows), cfg.candidates
        pick_pos = torch.randint(k, (n, b), generator=ctx.generator, device=ids.device)
        pick_tok = torch.randint(top.shape[-1], (n, b), generator=ctx.generator, device=ids.device)
        cand = ids[:, None].expand(n, b, -1).clone()
        col = where.gather(1, pick_pos)
        new_tok = top.gather(1, pick_pos[..., None].expand(-1, -1, top.shape[-1])).gather(2, pick_tok[..., None])[..., 0]
        cand.scatter_(2, col[..., None], new_tok[..., None])
        scores = self._score_candidates(ctx, rows, cand)
        best = scores.argmax(dim=1)
        moved = torch.isfinite(scores.gather(1, best[:, None])[:, 0])
        chosen = torch.where(moved[:, None], cand[torch.arange(n, device=ids.device), best], ids)
        state["ids"] = chosen
        return {site: self._delta(ctx, rows, chosen)}

    @torch.no_grad()
    def _score_candidates(self, ctx, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """float [n, B]: minus the loss of each candidate (-inf where it would not re-tokenise)."""
        n, b, _ = cand.shape
        batch = ctx.forward.batch
        lengths = batch.lengths[rows]
        flat_rows = rows.repeat_interleave(b)
        flat = cand.reshape(n * b, -1)
        seqs = [flat[i, : int(lengths[i // b])].tolist() for i in range(n * b)]
        ok = torch.tensor(retokenizes(self.tokenizer, seqs), device=cand.device)
        out = torch.full((n * b,), -math.inf, device=cand.device)
        live = ok.nonzero().flatten()
        for start in range(0, len(live), self.config.chunk_rows):
            idx = live[start : start + self.config.chunk_rows]
            r = flat_rows[idx]
            step_out = ctx.forward.run(r, {self.site: self._delta(ctx, r, flat[idx])}, monitor=False)
            score = self.objective.score(step_out.logits, r)
            out[idx] = -self._loss(ctx, r, step_out, score).float()
        return out.reshape(n, b)
