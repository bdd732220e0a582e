"""The one representation of a residual perturbation, shared by attacks and generation.

A ``Perturbation`` holds a delta for every example and ABSOLUTE token position (prompt
and, for teacher forcing, answer positions) at one site, and a mask of the positions it
acts on. ``perturbation_hooks`` turns perturbations into TransformerLens forward hooks
that add ``delta * mask`` to whatever positions the current forward covers: a forward
over only positions ``[offset, offset + n)`` (a KV-cached step) gets the matching slice,
and positions outside the stored delta get nothing. Attacks add these hooks BEFORE the
defense's hooks, so the defense sees ``resid + delta``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from guard.errors import ToolkitError

Offset = int | Callable[[], int]


@dataclass(frozen=True)
class Perturbation:
    """An additive residual edit at one site.

    Arguments:
        site: full hook name, e.g. ``blocks.12.hook_resid_post``.
        delta: float [batch, pos, d_model], indexed by absolute token position.
        mask: bool [batch, pos], positions the delta acts on.

    Example::

        p = Perturbation("blocks.1.hook_resid_post", delta, mask)
        with model.hooks(fwd_hooks=perturbation_hooks([p]) + defense.fwd_hooks()):
            logits = model(tokens)
    """

    site: str
    delta: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.delta.ndim != 3 or self.mask.shape != self.delta.shape[:2]:
            raise ToolkitError(
                f"perturbation at {self.site!r}: delta must be [batch, pos, d_model] and mask [batch, pos]; "
                f"got delta {tuple(self.delta.shape)}, mask {tuple(self.mask.shape)}"
            )
        if self.mask.dtype != torch.bool:
            raise ToolkitError(f"perturbation at {self.site!r}: mask must be bool, got {self.mask.dtype}")

    def masked(self) -> torch.Tensor:
        """``delta * mask`` [batch, pos, d_model]."""
        return self.delta * self.mask[..., None].to(self.delta.dtype)

    def window(self, start: int, length: int) -> torch.Tensor:
        """The masked delta for absolute positions ``[start, start + length)``, zero beyond its end."""
        out = self.masked()[:, start : start + length]
        missing = length - out.shape[1]
        if missing > 0:
            out = torch.nn.functional.pad(out, (0, 0, 0, missing))
        return out

    def norms(self) -> torch.Tensor:
        """float [batch, pos]: L2 norm of the masked delta per position."""
        return self.masked().norm(dim=-1)

    def select(self, rows: torch.Tensor) -> Perturbation:
        return Perturbation(self.site, self.delta[rows], self.mask[rows])


def add_perturbation(resid: torch.Tensor, perturbation: Perturbation, offset: int = 0) -> torch.Tensor:
    """``resid`` [batch, n, d_model] covering absolute positions [offset, offset + n), plus the delta."""
    if resid.shape[0] != perturbation.delta.shape[0] or resid.shape[-1] != perturbation.delta.shape[-1]:
        raise ToolkitError(
            f"perturbation at {perturbation.site!r}: delta {tuple(perturbation.delta.shape)} does not fit "
            f"activations {tuple(resid.shape)}"
        )
    return resid + perturbation.window(offset, resid.shape[1]).to(resid.dtype)


def perturbation_hooks(perturbations: Sequence[Perturbation], offset: Offset = 0) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks adding each perturbation at its site.

    ``offset`` is the absolute position of the first position in the forward (0 for a full
    forward; the cache length for a KV-cached step), or a callable read at hook time, so a
    generation loop can advance it without rebuilding hooks.
    """
    hooks = []
    for p in perturbations:
        def hook_fn(resid: torch.Tensor, hook, _p: Perturbation = p) -> torch.Tensor:
            start = offset() if callable(offset) else offset
            return add_perturbation(resid, _p, start)

        hooks.append((p.site, hook_fn))
    return hooks
