"""SAE arithmetic every defense shares, computed inside autograd.

SAELens's ``use_error_term`` computes the error under ``no_grad``; here the error term
``resid - decode(encode(resid))`` keeps its gradient, so d(out)/d(in) is exact.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from guard.errors import ToolkitError


def check_activations(resid: torch.Tensor, sae, *, defense: str, site: str) -> None:
    """Clear errors for the input mistakes that otherwise surface as shape or NaN noise."""
    if resid.shape[-1] != sae.cfg.d_in:
        raise ToolkitError(
            f"defense {defense!r} at {site!r}: activations have width {resid.shape[-1]} "
            f"({tuple(resid.shape)}) but the SAE reads width {sae.cfg.d_in}"
        )
    if not torch.isfinite(resid).all():
        raise ToolkitError(f"defense {defense!r} at {site!r}: activations contain NaN or inf")


def check_features(features: torch.Tensor, sae, *, defense: str, site: str) -> torch.Tensor:
    features = torch.as_tensor(features, dtype=torch.long).flatten()
    d_sae = int(sae.cfg.d_sae)
    bad = features[(features < 0) | (features >= d_sae)]
    if bad.numel():
        raise ToolkitError(
            f"defense {defense!r} at {site!r}: feature ids {bad.tolist()[:10]} out of range [0, {d_sae})"
        )
    return features


_STRAIGHT_THROUGH = contextvars.ContextVar("straight_through", default=False)


@contextlib.contextmanager
def straight_through() -> Iterator[None]:
    """Inside this context ``encode`` passes gradient through inactive latents as if they were linear.

    A JumpReLU (or ReLU) latent below its threshold has zero gradient, so an attacker who
    differentiates through an SAE splice sees nothing of the latents it could switch on. The
    forward values are unchanged; only the backward pass of inactive latents becomes that of
    ``resid @ W_enc`` (a straight-through estimator), for attacks that must see past the threshold.
    """
    token = _STRAIGHT_THROUGH.set(True)
    try:
        yield
    finally:
        _STRAIGHT_THROUGH.reset(token)


def straight_through_active() -> bool:
    """Whether the caller is inside ``straight_through()`` (a gate's surrogate gradient reads this too)."""
    return _STRAIGHT_THROUGH.get()


def encode(sae, resid: torch.Tensor) -> torch.Tensor:
    """Latent activations [.., d_sae]; differentiable (straight-through for inactive latents inside
    ``straight_through()``)."""
    acts = sae.encode(resid)
    if not _STRAIGHT_THROUGH.get() or not resid.requires_grad:
        return acts
    linear = resid.to(sae.W_enc.dtype) @ sae.W_enc
    inactive = (acts.detach() == 0).to(linear.dtype)
    return acts + (linear - linear.detach()) * inactive


def reconstruct(sae, feature_acts: torch.Tensor) -> torch.Tensor:
    return sae.decode(feature_acts)


def split(sae, resid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(feature_acts, reconstruction, error)`` with ``resid = reconstruction + error``."""
    feature_acts = encode(sae, resid)
    recon = reconstruct(sae, feature_acts)
    return feature_acts, recon, resid - recon


def encoder_columns(sae, features: torch.Tensor) -> torch.Tensor:
    """``W_enc[:, S]`` [d_in, |S|]: the directions whose change moves the pre-activations of S.

    For an SAE with elementwise activation (ReLU, JumpReLU) and no input normalisation,
    a perturbation orthogonal to these columns leaves the latents in S exactly unchanged.
    """
    if sae.cfg.normalize_activations not in ("none", None):
        raise ToolkitError(
            f"SAE with normalize_activations={sae.cfg.normalize_activations!r}: pre-activations are "
            "not linear in the input, so encoder-orthogonal constraints are not exact"
        )
    return sae.W_enc[:, features]


def feature_delta(sae, features: torch.Tensor, z_s: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """The residual change [.., d_in] that moves latents ``features`` from ``z_s`` to ``edited``.

    Exact for SAELens decoders that are linear in the latents (``decode(z') - decode(z)``),
    including TopK SAEs that rescale activations by decoder norm.
    """
    w_dec = sae.W_dec[features]
    change = edited - z_s
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        change = change / w_dec.norm(dim=-1)
    return change.to(w_dec.dtype) @ w_dec


def sink_mask(resid: torch.Tensor, ratio: float | None) -> torch.Tensor:
    """Bool [batch, pos]: tokens whose residual norm exceeds ``ratio`` x the median norm in this call.

    Attention-sink tokens (position 0 of the subject, norm ~100x the rest) lie far outside
    what an SAE was trained on; residual-aware defenses pass them through. The median is
    taken over the tokens of the call, so a single generated token is never a sink. The
    mask carries no gradient (it is piecewise constant).
    """
    if ratio is None:
        return torch.zeros(resid.shape[:-1], dtype=torch.bool, device=resid.device)
    with torch.no_grad():
        norms = resid.norm(dim=-1)
        return norms > ratio * norms.flatten().median()
