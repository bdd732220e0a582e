"""A faithful re-implementation of the reference recovery loop, for benchmarking only.

It reproduces the reference implementation's structure and flaws (docs/METHOD.md section 5) so
the benchmark compares like with like: one example at a time (batch 1), a full forward
from token 0 every step, the encoder constraint applied to the GRADIENT by a ridge
least-squares solve per perturbed row per step, Adam on that projected gradient, an L2
clip to the budget, delta never re-projected, no early stop (an unbounded objective).
``stop_margin`` gives it the engine's stopping rule instead (an example stops at the first step
whose forward succeeds with that margin), so a benchmark can compare the two at an equal rule.
Do not use it to evaluate defenses; use ``attacks.engine.GradientRecovery``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from attacks.batch import AttackBatch
from attacks.objectives import Objective
from attacks.projection import orthogonality_ratio
from guard.base import Defense


@dataclass(frozen=True)
class ReferenceResult:
    """Per example: success at the end, orthogonality ratio of the final delta, steps taken; total wall time."""

    success: torch.Tensor
    orthogonality: torch.Tensor
    score: torch.Tensor
    wall_seconds: float
    steps: torch.Tensor


def reference_attack(model, defense: Defense, site: str, encoder_cols: torch.Tensor, objective: Objective,
                     batch: AttackBatch, budget: float, steps: int, lr: float,
                     ridge: float = 1e-6, progress: bool = False, stop_margin: float | None = None) -> ReferenceResult:
    """Reference-style recovery at the last token of each row, absolute L2 ``budget``.

    ``encoder_cols`` is ``W_enc[:, S]`` [d_model, |S|] of the defended latents at ``site``;
    ``stop_margin``: stop an example once it succeeds with this margin (None: run every step).
    """
    start = time.perf_counter()
    a = encoder_cols.detach()
    gram = a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype)
    readout = objective.readout(batch)
    rows = tqdm(range(batch.size), desc="reference", disable=not progress)
    out = [_one_example(model, defense, site, a, gram, objective, batch, readout, i, budget, steps, lr, stop_margin)
           for i in rows]
    success, scores, ratios, used = zip(*out, strict=True)
    return ReferenceResult(torch.tensor(success), torch.tensor(ratios), torch.tensor(scores),
                           time.perf_counter() - start, torch.tensor(used))


def _one_example(model, defense, site, a, gram, objective, batch, readout, i, budget, steps, lr, stop_margin):
    tokens = batch.tokens[i : i + 1, : int(batch.lengths[i])]
    last = tokens.shape[1] - 1
    delta = torch.zeros(model.cfg.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    rows = torch.tensor([i])

    def perturb(resid, hook):
        resid = resid.clone()
        resid[:, last] = resid[:, last] + delta
        return resid

    def forward():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(site, perturb)] + defense.fwd_hooks())
        return logits.gather(1, readout[i : i + 1, :, None].expand(-1, -1, logits.shape[-1]))

    used = 0
    for _ in range(steps):
        opt.zero_grad()
        picked = forward()
        if stop_margin is not None and bool(objective.success(picked.detach(), rows, stop_margin)[0]):
            break
        used += 1
        loss = objective.loss(objective.score(picked, rows), rows).sum()
        loss.backward()
        with torch.no_grad():
            g = delta.grad
            coef = torch.linalg.solve(gram, a.T @ g)  # ridge solve, this row, this step
            delta.grad = g - a @ coef
        opt.step()
        with torch.no_grad():  # clip to the budget; delta itself is never re-projected
            norm = delta.norm()
            if norm > budget:
                delta.mul_(budget / norm)
    with torch.no_grad():
        picked = forward()
        return (bool(objective.success(picked, rows)[0]), float(objective.score(picked, rows)[0]),
                float(orthogonality_ratio(a, delta.detach())), used)
