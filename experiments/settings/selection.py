"""Choosing the latents a plain clamp suppresses: attribution to the behaviour score.

For each latent i at the site, summed over samples and the chosen positions,

    attr_i = sum_{b, p} z_{b,p,i} * d(score_b) / d(z_{b,p,i})

the first-order estimate of how much the score falls when latent i is set to zero. The
gradient flows through the SAE decoder only: at the site the activation is replaced by
``decode(z) + error`` with the error term held constant (same forward value), so
``z * grad`` is the linear effect of removing each latent's decoder contribution. The top-k
latents with the largest *positive* attribution (they support the behaviour) are chosen.

Only samples where the behaviour is present undefended (score > 0) count by default: a
clamp is meant to remove a behaviour the model shows. With control samples, the attribution
is ``mean over topic samples - mean over control samples``: latents that help everything
alike are not topic latents.

Utility-aware selection (``max_density``): a latent that fires on more than that fraction of
benign tokens (``latent_density``, position 0 of every chunk left out as the SAEs never saw it)
is never chosen, however large its attribution: clamping a latent that is active on nearly
every token is a change to the model everywhere, not the removal of one behaviour (on the
subject, three of the 32 IOI latents fired on 97-100% of benign tokens).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from experiments.settings.batch import Batch, batches, final_logits
from experiments.settings.sample import POSITIONS, Sample, behaviour_score
from guard.calibration import collect_resid
from guard.clamp import ClampConfig
from guard.errors import ToolkitError, unknown_name
from guard.sae_ops import check_activations, encode, reconstruct

ScoreFn = Callable[[torch.Tensor, Batch], torch.Tensor]


@dataclass(frozen=True)
class SelectionResult:
    """Latents chosen at ``site``, best first, with their attribution (same order)."""

    site: str
    features: tuple[int, ...]
    attribution: tuple[float, ...]
    n_samples: int  # topic samples whose attribution counted
    n_control: int
    max_density: float | None = None  # latents firing on more benign tokens than this were left out
    n_dense: int = 0  # positive-attribution latents left out as too dense
    density: tuple[float, ...] = ()  # benign firing density of each chosen latent (when measured)

    def clamp_config(self, mode: str = "set", value: float = 0.0, positive_only: bool = False) -> ClampConfig:
        return ClampConfig(features={self.site: self.features}, mode=mode, value=value, positive_only=positive_only)

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "features": list(self.features), "attribution": list(self.attribution),
                "n_samples": self.n_samples, "n_control": self.n_control, "max_density": self.max_density,
                "n_dense": self.n_dense, "density": list(self.density)}

    def top(self, k: int) -> SelectionResult:
        """The ``k`` best of these latents (the same selection, fewer clamped)."""
        return dataclasses.replace(self, features=self.features[:k], attribution=self.attribution[:k],
                                   density=self.density[:k])


def position_mask(batch: Batch, positions: str) -> torch.Tensor:
    """[batch, pos] bool: which positions' attribution counts."""
    mask = batch.mask
    if positions == "all":
        return mask
    if positions == "not_first":
        mask = mask.clone()
        mask[:, 0] = False
        return mask
    if positions == "last":
        return torch.nn.functional.one_hot(batch.last, batch.tokens.shape[1]).bool()
    raise ToolkitError(f"latent selection: positions must be one of {POSITIONS}, got {positions!r}")


def latent_attribution(
    model, sae, site: str, samples: Sequence[Sample], *, positions: str = "not_first",
    batch_size: int = 16, only_present: bool = True, score_fn: ScoreFn = behaviour_score,
) -> tuple[torch.Tensor, int]:
    """``(attr [d_sae], n_counted)``: attribution summed over the samples that count."""
    if site not in model.hook_dict:
        raise unknown_name("hook name", site, model.hook_dict.keys(), "latent selection")
    state: dict[str, torch.Tensor] = {}

    def splice(resid: torch.Tensor, hook) -> torch.Tensor:
        check_activations(resid, sae, defense="latent selection", site=site)
        with torch.no_grad():
            feature_acts = encode(sae, resid)
            error = resid - reconstruct(sae, feature_acts).to(resid.dtype)
        z = feature_acts.detach().requires_grad_(True)
        state["z"] = z
        return reconstruct(sae, z).to(resid.dtype) + error

    total = torch.zeros(int(sae.cfg.d_sae), dtype=torch.float64)
    counted = 0
    for batch in batches(samples, batch_size, device=model.cfg.device):
        with torch.enable_grad(), model.hooks(fwd_hooks=[(site, splice)]):
            score = score_fn(final_logits(model, batch), batch)
            keep = score.detach() > 0 if only_present else torch.ones_like(score, dtype=torch.bool)
            if not keep.any():
                continue
            (grad,) = torch.autograd.grad((score * keep).sum(), state["z"])
        weight = (position_mask(batch, positions) & keep[:, None]).to(grad.dtype)  # [batch, pos]
        contrib = (state["z"].detach() * grad * weight[..., None]).sum(dim=(0, 1))
        total += contrib.double().cpu()
        counted += int(keep.sum())
    return total, counted


@torch.no_grad()
def latent_density(model, sae, site: str, tokens: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
    """[d_sae] float64: the fraction of tokens of ``tokens`` [batch, pos] (benign text, position 0 of
    each row left out) on which each latent at ``site`` is active (> 0)."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ToolkitError(f"latent density at {site!r}: tokens must be [batch, pos >= 2], got {tuple(tokens.shape)}")
    resid = collect_resid(model, tokens, [site], sink_ratio=None, batch_size=batch_size)[site]  # [n, d_model]
    check_activations(resid, sae, defense="latent density", site=site)
    active = sum((encode(sae, chunk.to(sae.W_enc)) > 0).sum(dim=0).double().cpu() for chunk in resid.split(4096))
    return active / resid.shape[0]


def select_latents(
    model, sae, site: str, samples: Sequence[Sample], k: int, *, control: Sequence[Sample] | None = None,
    positions: str = "not_first", batch_size: int = 16, only_present: bool = True,
    score_fn: ScoreFn = behaviour_score, density: torch.Tensor | None = None, max_density: float | None = None,
) -> SelectionResult:
    """The (at most) ``k`` latents with the largest positive attribution (see module docstring);
    with ``max_density``, only among latents whose benign ``density`` [d_sae] is at most that.

    Example::

        sel = select_latents(model, saes[site], site, samples, k=64)
        clamp = FeatureClamp(sel.clamp_config(), saes)
    """
    if k < 1:
        raise ToolkitError(f"latent selection at {site!r}: k must be >= 1, got {k}")
    if not samples:
        raise ToolkitError(f"latent selection at {site!r}: no samples given")
    if max_density is not None:
        if density is None:
            raise ToolkitError(f"latent selection at {site!r}: max_density needs the latents' benign density")
        if not 0 < max_density <= 1:
            raise ToolkitError(f"latent selection at {site!r}: max_density must be in (0, 1], got {max_density}")
        if density.shape != (int(sae.cfg.d_sae),):
            raise ToolkitError(f"latent selection at {site!r}: density has shape {tuple(density.shape)}, "
                               f"the SAE has {int(sae.cfg.d_sae)} latents")
    kwargs = dict(positions=positions, batch_size=batch_size, score_fn=score_fn)
    attr, n = latent_attribution(model, sae, site, samples, only_present=only_present, **kwargs)
    if n == 0:
        raise ToolkitError(
            f"latent selection at {site!r}: the behaviour is absent on all {len(samples)} samples "
            "undefended, so there is nothing to suppress"
        )
    attr = attr / n
    n_control = 0
    if control:
        # Control prompts count whether or not the model gets them right.
        control_attr, n_control = latent_attribution(model, sae, site, control, only_present=False, **kwargs)
        attr = attr - control_attr / max(n_control, 1)
    values, order = torch.sort(attr, descending=True)
    positive = order[values > 0]
    if positive.numel() == 0:
        raise ToolkitError(f"latent selection at {site!r}: no latent has positive attribution")
    n_dense = 0
    if max_density is not None:
        sparse = density[positive] <= max_density
        n_dense = int((~sparse).sum())
        positive = positive[sparse]
        if positive.numel() == 0:
            raise ToolkitError(f"latent selection at {site!r}: every latent with positive attribution fires on "
                               f"more than {max_density:g} of benign tokens")
    chosen = positive[:k]
    return SelectionResult(
        site=site, features=tuple(int(i) for i in chosen), attribution=tuple(float(attr[i]) for i in chosen),
        n_samples=n, n_control=n_control, max_density=max_density, n_dense=n_dense,
        density=() if density is None else tuple(float(density[i]) for i in chosen),
    )
