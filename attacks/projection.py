"""Projections onto the attacker's feasible set: encoder null space, budget balls, Jacobian null space.

Encoder-orthogonal: ``P = I - Q Q^T`` with ``Q`` an orthonormal basis of span(W_enc[:, S])
(several SAEs at one site: the union of their columns), computed once per (SAE, S) in
float64 by SVD and cached. For an L2 ball centred at 0 and a linear subspace V,
projecting onto V and then radially onto the ball is the exact Euclidean projection onto
V ∩ ball, so the composition used by attacks is exact.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from guard.base import DefendedLatents
from guard.errors import ToolkitError
from guard.sae_ops import encoder_columns

_PROJECTOR_CACHE: dict[tuple, EncoderProjector] = {}


class EncoderProjector:
    """Orthogonal projector onto the complement of span(W_enc[:, S]) at one site.

    Arguments:
        columns: float [d_model, k], the encoder columns whose span is removed.
        site: the site (for error messages).

    Shapes: ``__call__`` maps [..., d_model] -> [..., d_model].

    Example::

        proj = EncoderProjector(sae.W_enc[:, S], "blocks.12.hook_resid_post")
        delta = proj(delta)   # sae.W_enc[:, S].T @ delta ~ 0
    """

    def __init__(self, columns: torch.Tensor, site: str = "") -> None:
        if columns.ndim != 2 or columns.shape[1] == 0:
            raise ToolkitError(f"encoder projector at {site!r}: need [d_model, k>0] columns, got {tuple(columns.shape)}")
        a = columns.detach().to(torch.float64)
        u, s, _ = torch.linalg.svd(a, full_matrices=False)
        # rank at the precision the columns were stored in (float32 rounding is not a direction)
        eps = torch.finfo(columns.dtype).eps if columns.dtype.is_floating_point else torch.finfo(torch.float64).eps
        tol = s.max() * max(a.shape) * eps
        self.basis64 = u[:, s > tol].contiguous()  # [d_model, rank]
        self.columns = columns.detach()
        self.site = site
        self._basis: dict[tuple, torch.Tensor] = {}

    @property
    def rank(self) -> int:
        return self.basis64.shape[1]

    def basis(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self._basis:
            self._basis[key] = self.basis64.to(dtype=like.dtype, device=like.device)
        return self._basis[key]

    def __call__(self, delta: torch.Tensor) -> torch.Tensor:
        if self.rank == delta.shape[-1]:  # the columns span everything: only delta = 0 is feasible
            return torch.zeros_like(delta)
        q = self.basis(delta)
        return delta - (delta @ q) @ q.T

    def ratio(self, delta: torch.Tensor) -> torch.Tensor:
        """``||A^T delta|| / (||A||_2 ||delta||)`` per vector [...]; 0 where delta is 0."""
        return orthogonality_ratio(self.columns, delta)


def orthogonality_ratio(columns: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``||A^T delta|| / (||A||_2 ||delta||)`` over the last dim, in float64; 0 where delta is 0."""
    a = columns.detach().to(torch.float64)
    d = delta.detach().to(torch.float64)
    num = (d @ a).norm(dim=-1)
    den = torch.linalg.matrix_norm(a, ord=2) * d.norm(dim=-1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))


def encoder_projector(latents: Sequence[DefendedLatents]) -> EncoderProjector:
    """The projector for all latents pinned at one site, computed once per (SAE, S) and cached."""
    if not latents:
        raise ToolkitError("encoder projector: no defended latents given")
    sites = {d.site for d in latents}
    if len(sites) != 1:
        raise ToolkitError(f"encoder projector: latents from several sites {sorted(sites)}")
    key = tuple((id(d.sae.W_enc), d.sae.W_enc._version, tuple(d.features.tolist())) for d in latents)
    if key not in _PROJECTOR_CACHE:
        columns = torch.cat([encoder_columns(d.sae, d.features) for d in latents], dim=1)
        _PROJECTOR_CACHE[key] = EncoderProjector(columns, latents[0].site)
        for d in latents:  # forget the entry when its SAE goes, so a new SAE at a reused id is not confused
            weakref.finalize(d.sae.W_enc, _PROJECTOR_CACHE.pop, key, None)
    return _PROJECTOR_CACHE[key]


def ball_size(delta: torch.Tensor, norm: str = "l2", scope: str = "position") -> torch.Tensor:
    """Size of each budget ball's delta: [batch, pos] (scope ``position``) or [batch] (``example``)."""
    flat = delta if scope == "position" else delta.flatten(1)
    if norm == "l2":
        return flat.norm(dim=-1)
    if norm == "linf":
        return flat.abs().amax(dim=-1)
    raise ToolkitError(f"budget: unknown norm {norm!r} (valid: l2, linf)")


def _per_ball(x: torch.Tensor, scope: str) -> torch.Tensor:
    """Broadcast a per-ball value against [batch, pos, d_model]."""
    return x[..., None] if scope == "position" else x[:, None, None]


def scale_to(delta: torch.Tensor, radius: torch.Tensor, norm: str = "l2", scope: str = "position") -> torch.Tensor:
    """Rescale each ball's delta to exactly its radius (a zero delta stays zero)."""
    return delta * _per_ball(radius / ball_size(delta, norm, scope).clamp_min(1e-30), scope)


def project_budget(delta: torch.Tensor, mask: torch.Tensor, radius: torch.Tensor, norm: str = "l2",
                   scope: str = "position", linear: bool = False) -> torch.Tensor:
    """Project ``delta`` [batch, pos, d_model] onto the budget at the masked positions.

    ``radius`` is [batch, pos] (scope ``position``) or [batch] (scope ``example``).
    L2: radial scaling (exact projection; keeps a subspace constraint). Linf: coordinate
    clipping (exact) unless ``linear`` (delta lies in a subspace the clip would leave),
    then a uniform shrink into the box (feasible, not the nearest point).
    """
    delta = delta * mask[..., None].to(delta.dtype)
    radius = radius.to(delta.dtype)
    if norm == "linf" and not linear:
        r = _per_ball(radius, scope)
        return torch.maximum(torch.minimum(delta, r), -r)
    size = ball_size(delta, norm, scope)
    scale = torch.where(size > radius, radius / size.clamp_min(1e-30), torch.ones_like(size))
    return delta * _per_ball(scale, scope)


def budget_excess(delta: torch.Tensor, mask: torch.Tensor, radius: torch.Tensor, norm: str = "l2",
                  scope: str = "position") -> torch.Tensor:
    """float [batch]: how far the largest ball is exceeded, relative to its radius (<= 0: inside)."""
    size = ball_size(delta * mask[..., None].to(delta.dtype), norm, scope)
    excess = (size - radius) / radius.clamp_min(1e-30)
    if scope == "position":
        excess = torch.where(mask, excess, torch.full_like(excess, -1.0)).amax(dim=1)
    return excess


def nullspace_step(jac: torch.Tensor, update: torch.Tensor, residual: torch.Tensor | None = None,
                   rcond: float = 1e-6) -> torch.Tensor:
    """Project ``update`` off the row space of ``jac`` and add a Gauss-Newton restoration step.

    ``jac`` [batch, m, D] (rows: derivatives of constrained quantities), ``update`` [batch, D],
    ``residual`` [batch, m] (current constraint value minus its target) or None. Returns
    ``update - J^T G^+ J update - J^T G^+ residual`` with ``G = J J^T``: to first order the
    constrained quantities move by ``-residual`` (back to target) and not at all from the update.
    """
    gram = jac @ jac.transpose(1, 2)  # [batch, m, m]
    evals, evecs = torch.linalg.eigh(gram.to(torch.float64))
    keep = evals > rcond * evals.amax(dim=-1, keepdim=True).clamp_min(1e-300)
    inv = torch.where(keep, 1.0 / evals.clamp_min(1e-300), torch.zeros_like(evals))
    rhs = (jac @ update[..., None]).squeeze(-1)  # [batch, m]
    if residual is not None:
        rhs = rhs + residual
    rhs = rhs.to(torch.float64)
    coeff = evecs @ (inv[..., None] * (evecs.transpose(1, 2) @ rhs[..., None]))  # G^+ rhs
    return update - (jac.transpose(1, 2) @ coeff.to(jac.dtype)).squeeze(-1)
