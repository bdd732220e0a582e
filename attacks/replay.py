"""Attribution replay: which part of a found perturbation does the work?

Split delta at its site by re-encoding the defense's input with and without it
(``z0 = E(h)``, ``z = E(h + delta)``, ``dz = z - z0``):

    delta = dz_S W_dec[S]  +  dz_notS W_dec[not S]  +  (delta - dz W_dec)
            clamped latents    other latents           SAE error

(the last part is the change of the SAE's reconstruction error). Each part is replayed
alone, at the same positions, under the active defense, with an ordinary full forward.
The reference's refusal result: the error part alone recovered 23/24, other latents 2/24,
clamped latents 0/24. Assumes an affine decoder (``decode(z) = z W_dec + b_dec``), true for
the SAELens SAEs we use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attacks.batch import AttackBatch
from attacks.forward import full_forward
from attacks.objectives import Objective
from attacks.perturbation import Perturbation
from guard.base import Defense
from guard.errors import ToolkitError
from guard.sae_ops import encode

PARTS = ("full", "clamped", "other", "error")


@dataclass(frozen=True)
class ReplayResult:
    """Per example and part (``full``, ``clamped``, ``other``, ``error``): whether replaying that part
    alone recovers the behaviour (``success``), its objective ``score`` and its max L2 ``norm``;
    ``parts`` holds the split deltas [batch, pos, d_model] (they sum to the full delta)."""

    success: dict[str, torch.Tensor]
    score: dict[str, torch.Tensor]
    norm: dict[str, torch.Tensor]
    parts: dict[str, torch.Tensor]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recovered": {k: int(v.sum()) for k, v in self.success.items()},
            "n": int(self.success["full"].numel()),
            "success": {k: v.tolist() for k, v in self.success.items()},
            "score": {k: v.tolist() for k, v in self.score.items()},
            "norm": {k: v.tolist() for k, v in self.norm.items()},
        }


@torch.no_grad()
def split_perturbation(model, defense: Defense, batch: AttackBatch, perturbation: Perturbation) -> dict[str, torch.Tensor]:
    """The three parts of ``perturbation.delta`` (masked), by re-encoding the defense's input."""
    here = [d for d in defense.defended_latents() if d.site == perturbation.site]
    if len(here) != 1:
        raise ToolkitError(f"attribution replay at {perturbation.site!r}: need exactly one defended SAE there, "
                           f"defense {defense.name!r} has {len(here)}")
    latents = here[0]
    captured = {}

    def capture(resid, hook):
        captured["h"] = resid.detach().clone()

    # The defense's input at the site in the un-attacked defended run (upstream defenses applied).
    with model.hooks(fwd_hooks=[(perturbation.site, capture)] + defense.fwd_hooks()):
        model(batch.tokens, return_type=None)
    h, delta = captured["h"], perturbation.masked().to(captured["h"].dtype)
    dz = encode(latents.sae, h + delta) - encode(latents.sae, h)
    in_s = torch.zeros(dz.shape[-1], dtype=torch.bool, device=dz.device)
    in_s[latents.features] = True
    w_dec = latents.sae.W_dec.to(dz.dtype)
    clamped = (dz * in_s).to(w_dec.dtype) @ w_dec
    other = (dz * ~in_s).to(w_dec.dtype) @ w_dec
    mask = perturbation.mask[..., None].to(delta.dtype)
    clamped, other = clamped.to(delta.dtype) * mask, other.to(delta.dtype) * mask
    return {"full": delta, "clamped": clamped, "other": other, "error": delta - clamped - other}


@torch.no_grad()
def attribution_replay(model, defense: Defense, objective: Objective, batch: AttackBatch,
                       perturbation: Perturbation) -> ReplayResult:
    """Replay the full delta and each part alone under ``defense``; all four in one batched forward."""
    parts = split_perturbation(model, defense, batch, perturbation)
    n = batch.size
    stacked = AttackBatch(batch.tokens.repeat(len(PARTS), 1), batch.lengths.repeat(len(PARTS)),
                          None if batch.prompt_lengths is None else batch.prompt_lengths.repeat(len(PARTS)))
    delta = torch.cat([parts[k] for k in PARTS])
    mask = perturbation.mask.repeat(len(PARTS), 1)
    picked, _ = full_forward(model, defense, stacked, [Perturbation(perturbation.site, delta, mask)],
                             readout=objective.readout(stacked))
    rows = torch.arange(n, device=batch.tokens.device).repeat(len(PARTS))
    ok, score = objective.success(picked, rows), objective.score(picked, rows)
    norms = delta.norm(dim=-1).amax(dim=1)
    return ReplayResult(
        success={k: ok[i * n : (i + 1) * n] for i, k in enumerate(PARTS)},
        score={k: score[i * n : (i + 1) * n] for i, k in enumerate(PARTS)},
        norm={k: norms[i * n : (i + 1) * n] for i, k in enumerate(PARTS)},
        parts=parts,
    )
