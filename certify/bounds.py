"""First-order certificates: the worst case of the linearised behaviour score over the threat set.

For one sample, let ``g`` [d_model] be the gradient of the behaviour score with respect to
the perturbation ``delta`` at the defended state, taken through the defense (the caller
computes it with autograd; the defense's Jacobian is part of it). The threat set is

    { delta :  ||delta||_2 <= B,   A^T delta = 0,   ||J delta||_2 <= eps }

with ``A = W_enc[:, S]`` [d_model, k] (encoder-orthogonal: the defended latents at the
perturbed site keep their pre-activations) and an optional ``J`` [m, d_model] (the
linearised change of downstream defended latents, the cross-layer constraint). The bound is

    max  g^T delta   over the threat set,

a second-order cone program. Writing ``delta = N y`` with ``N`` an orthonormal basis of the
null space of ``A^T`` removes the equality constraints; the program is solved with cvxpy
(imported lazily). The returned ``bound`` is *sound*: it is weak-duality's value
``B ||N^T g - M^T mu|| + eps ||mu||`` (``M = J N``) evaluated in float64 at the solver's
dual point ``mu``, an upper bound for any ``mu``, so solver inaccuracy can only loosen it.
``lower`` is the value of an exactly feasible maximiser; ``gap = bound - lower``.

Without ``J`` (or with ``eps == 0``, where ``J delta = 0`` joins the equalities) the
bound has the closed form ``B * ||P g||``, ``P`` the projector onto that null space.

The certificate is first order: it bounds the behaviour score exactly where the score is
linear in delta (a linear readout behind an exact encoder-orthogonal clamp, as in the
tests), and only approximately elsewhere; an attack exceeding it on a real model says the
linearisation is loose there (``certify.checks`` flags it).

Example::

    result = convex_bound(g, budget=5.0, A=sae.W_enc[:, S], J=J, eps=0.1)
    certified = score_defended + result.bound <= threshold
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from guard.errors import ToolkitError

_RANK_RTOL = 1e-10


def _array(x: Any, name: str, ndim: int) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ToolkitError(f"certify.bounds: {name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ToolkitError(f"certify.bounds: {name} contains NaN or inf")
    return arr


def null_space_basis(A: Any, d: int) -> np.ndarray:
    """Orthonormal basis ``N`` [d, d - rank(A)] of ``{x : A^T x = 0}``; identity when A is None."""
    if A is None:
        return np.eye(d)
    A = _array(A, "A", 2)
    if A.shape[0] != d:
        raise ToolkitError(f"certify.bounds: A must be [d_model={d}, k], got {A.shape}")
    if A.shape[1] == 0:
        return np.eye(d)
    _, s, vt = np.linalg.svd(A.T, full_matrices=True)
    rank = int((s > _RANK_RTOL * max(s.max(initial=0.0), 1e-300)).sum()) if s.size else 0
    return vt[rank:].T


def projector(A: Any, d: int) -> np.ndarray:
    """``P = N N^T``, the orthogonal projector onto the null space of ``A^T`` [d, d]."""
    n = null_space_basis(A, d)
    return n @ n.T


@dataclass(frozen=True)
class BoundResult:
    """A first-order certificate for one sample.

    ``bound``: sound upper bound on ``g^T delta`` over the threat set. ``lower``: value of
    ``delta`` (an exactly feasible maximiser, [d_model]). ``method``: ``closed_form`` or
    ``socp``; ``status``: the solver's status (``optimal`` for closed forms).
    """

    bound: float
    lower: float
    budget: float
    eps: float | None
    method: str
    status: str
    delta: np.ndarray = field(repr=False, compare=False)

    @property
    def gap(self) -> float:
        return self.bound - self.lower

    def to_dict(self) -> dict[str, Any]:
        return {
            "bound": self.bound, "lower": self.lower, "gap": self.gap, "budget": self.budget, "eps": self.eps,
            "method": self.method, "status": self.status, "delta_norm": float(np.linalg.norm(self.delta)),
        }


def _check_budget(budget: float, name: str = "budget") -> float:
    budget = float(budget)
    if not np.isfinite(budget) or budget < 0:
        raise ToolkitError(f"certify.bounds: {name} must be finite and >= 0, got {budget}")
    return budget


def _closed_form(h: np.ndarray, basis: np.ndarray, budget: float, eps: float | None) -> BoundResult:
    norm = float(np.linalg.norm(h))
    y = h * (budget / norm) if norm > 0 else np.zeros_like(h)
    lower = float(h @ y)
    # both are B ||h|| up to rounding; keep bound >= lower so the gap is never negative
    return BoundResult(max(budget * norm, lower), lower, budget, eps, "closed_form", "optimal", basis @ y)


def closed_form_bound(g: Any, budget: float, A: Any = None) -> BoundResult:
    """``B * ||P g||`` and its maximiser ``B * P g / ||P g||``: the bound without ``J``."""
    g = _array(g, "g", 1)
    budget = _check_budget(budget)
    basis = null_space_basis(A, g.shape[0])
    return _closed_form(basis.T @ g, basis, budget, None)


def convex_bound(
    g: Any,
    budget: float,
    A: Any = None,
    J: Any = None,
    eps: float | None = None,
    method: str = "auto",
    solver: str | None = None,
) -> BoundResult:
    """Maximise ``g^T delta`` over the threat set (see the module docstring).

    Arguments: ``g`` [d_model]; ``budget`` B >= 0; ``A`` [d_model, k] or None; ``J``
    [m, d_model] or None, with ``eps`` >= 0 required when ``J`` is given. ``method``:
    ``auto`` (closed form where one exists, else SOCP) or ``socp`` (always cvxpy).
    Arrays may be numpy arrays or torch tensors.
    """
    g = _array(g, "g", 1)
    d = g.shape[0]
    budget = _check_budget(budget)
    if method not in ("auto", "socp"):
        raise ToolkitError(f"certify.bounds: method must be 'auto' or 'socp', got {method!r}")
    basis = null_space_basis(A, d)
    m = None
    if J is not None:
        if eps is None:
            raise ToolkitError("certify.bounds: J given without eps (the drift radius)")
        eps = _check_budget(eps, "eps")
        J = _array(J, "J", 2)
        if J.shape[1] != d:
            raise ToolkitError(f"certify.bounds: J must be [m, d_model={d}], got {J.shape}")
        m = J @ basis
        if eps == 0.0:  # J delta = 0 is one more linear equality: fold it into the basis
            inner = null_space_basis(m.T, m.shape[1])
            basis, m = basis @ inner, None
    h = basis.T @ g
    if m is None or h.size == 0 or budget == 0.0:
        if method == "auto" or h.size == 0 or budget == 0.0:
            return _closed_form(h, basis, budget, eps)
        m = np.zeros((0, h.size))  # socp forced: solve the same problem with an empty drift block
    return _socp(h, m, basis, budget, eps, solver)


def _socp(h: np.ndarray, m: np.ndarray, basis: np.ndarray, budget: float, eps: float | None,
          solver: str | None) -> BoundResult:
    q = h.size
    primal, dual = _programs(q, m.shape[0])
    primal.param_dict["h"].value = h
    primal.param_dict["budget"].value = budget
    if m.shape[0]:
        primal.param_dict["m"].value = m
        primal.param_dict["eps"].value = eps
    _solve(primal, solver)
    y = primal.var_dict["y"]
    y_val = np.zeros(q) if y.value is None else np.asarray(y.value, dtype=np.float64)
    # make the maximiser exactly feasible, so ``lower`` is attained
    scale = 1.0
    norm_y = float(np.linalg.norm(y_val))
    if norm_y > budget:
        scale = budget / norm_y
    if m.shape[0]:
        drift = float(np.linalg.norm(m @ y_val))
        if drift * scale > eps:
            scale = eps / drift
    candidates = [y_val * scale]
    if m.shape[0]:
        # the best point of the smaller set {M y = 0} is feasible for every eps: a floor for tiny eps,
        # where scaling the solver's point into the drift ball can lose everything
        inner = null_space_basis(m.T, q)
        z = inner.T @ h
        z_norm = float(np.linalg.norm(z))
        if z_norm > 0:
            candidates.append(inner @ (z * (budget / z_norm)))
    y_val = max(candidates, key=lambda c: float(h @ c))
    lower = float(h @ y_val)

    upper = budget * float(np.linalg.norm(h))  # the set without J contains this one
    status = str(primal.status)
    if m.shape[0]:
        for name, value in (("h", h), ("m", m), ("budget", budget), ("eps", eps)):
            dual.param_dict[name].value = value
        _solve(dual, solver)
        mu = dual.var_dict["mu"]
        mu_val = np.zeros(m.shape[0]) if mu.value is None else np.asarray(mu.value, dtype=np.float64)
        # weak duality: an upper bound for any mu, whatever the solver's accuracy
        upper = min(upper, budget * float(np.linalg.norm(h - m.T @ mu_val)) + eps * float(np.linalg.norm(mu_val)))
        status = f"{primal.status}/{dual.status}"
    return BoundResult(max(upper, lower), lower, budget, eps, "socp", status, basis @ y_val)


@functools.lru_cache(maxsize=32)
def _programs(q: int, m_rows: int) -> tuple[Any, Any]:
    """Primal and dual programs for one shape, with parameters: compiled once, solved many times."""
    import cvxpy as cp  # deferred: ~4 s to import, and only the convex certificates need it

    h = cp.Parameter(q, name="h")
    budget = cp.Parameter(nonneg=True, name="budget")
    y = cp.Variable(q, name="y")
    constraints = [cp.norm(y, 2) <= budget]
    dual = None
    if m_rows:
        m = cp.Parameter((m_rows, q), name="m")
        eps = cp.Parameter(nonneg=True, name="eps")
        constraints.append(cp.norm(m @ y, 2) <= eps)
        mu, t = cp.Variable(m_rows, name="mu"), cp.Variable(2, name="t")
        # epigraph form keeps the program DPP (parameter times variable only)
        dual = cp.Problem(cp.Minimize(budget * t[0] + eps * t[1]),
                          [cp.norm(h - m.T @ mu, 2) <= t[0], cp.norm(mu, 2) <= t[1]])
    return cp.Problem(cp.Maximize(h @ y), constraints), dual


def _solve(problem: Any, solver: str | None) -> None:
    import cvxpy as cp  # deferred: ~4 s to import, and only the convex certificates need it

    try:
        problem.solve(solver=solver)
    except cp.error.SolverError as err:
        raise ToolkitError(f"certify.bounds: cvxpy solver {solver or 'default'} failed: {err}") from err
    if problem.status not in ("optimal", "optimal_inaccurate"):
        raise ToolkitError(f"certify.bounds: convex program ended with status {problem.status!r}")


def convex_bounds(G: Any, budget: Any, A: Any = None, J: Any = None, eps: float | None = None,
                  method: str = "auto", solver: str | None = None) -> list[BoundResult]:
    """``convex_bound`` for each row of ``G`` [n, d_model]; ``budget`` scalar or [n]."""
    G = _array(G, "G", 2)
    budgets = np.broadcast_to(np.asarray(budget, dtype=np.float64), (G.shape[0],))
    return [convex_bound(g, b, A, J, eps, method, solver) for g, b in zip(G, budgets, strict=True)]
