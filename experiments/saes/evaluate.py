"""Held-out evaluation of SAEs: explained variance, CE-loss recovered, L0, dead latents.

All statistics skip position 0 of each window (the attention sink). CE-loss recovered
uses zero ablation of the site at positions > 0 as the floor:
``(CE_zero - CE_spliced) / (CE_zero - CE_clean)``, where "spliced" replaces the
activation at positions > 0 with the SAE reconstruction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from tqdm import tqdm

from guard.errors import ToolkitError


def _next_token_ce(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed CE of predicting tokens[1:] (so position 0's prediction of 1 is included)."""
    logprobs = logits[:, :-1].log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None]).sum()


def _logits_from_site(model, site: str, resid: torch.Tensor, new_after_first: torch.Tensor) -> torch.Tensor:
    """Logits with the site's activation replaced at positions > 0, run from the next block on."""
    edited = resid.clone()
    edited[:, 1:] = new_after_first
    # resid_post of block L is the input of block L+1: skip the layers the edit cannot change.
    return model(edited, start_at_layer=int(site.split(".")[1]) + 1)


@torch.inference_mode()
def evaluate_saes(model, saes: Mapping[str, object], windows: Sequence[list[int]], batch_size: int = 16) -> list[dict]:
    """One metrics dict per site over the given token windows (sites must be ``blocks.L.hook_resid_post``)."""
    for site in saes:
        if not site.endswith("hook_resid_post"):
            raise ToolkitError(f"SAE evaluation splices at resid_post sites only, got {site!r}")
    sites = list(saes)
    totals = {s: {"sse": 0.0, "sum": 0.0, "sumsq": 0.0, "l0": 0.0, "ce_zero": 0.0, "ce_sae": 0.0,
                  "fired": torch.zeros(saes[s].cfg.d_sae, dtype=torch.bool)} for s in sites}
    ce_clean = 0.0
    n_tokens = 0
    n_predictions = 0
    for start in tqdm(range(0, len(windows), batch_size), desc="evaluate SAEs", unit="batch"):
        tokens = torch.tensor(windows[start : start + batch_size])
        logits, cache = model.run_with_cache(tokens, names_filter=sites)
        ce_clean += _next_token_ce(logits, tokens).item()
        n_predictions += tokens.shape[0] * (tokens.shape[1] - 1)
        n_tokens += tokens.shape[0] * (tokens.shape[1] - 1)
        for site in sites:
            sae, tot = saes[site], totals[site]
            acts = cache[site][:, 1:]
            feature_acts = sae.encode(acts)
            recon = sae.decode(feature_acts)
            flat = acts.reshape(-1, acts.shape[-1]).double()
            tot["sse"] += (acts - recon).double().pow(2).sum().item()
            tot["sum"] = tot["sum"] + flat.sum(0)
            tot["sumsq"] += flat.pow(2).sum().item()
            active = feature_acts > 0
            tot["l0"] += active.sum().item()
            tot["fired"] |= active.reshape(-1, active.shape[-1]).any(0)
            spliced = _logits_from_site(model, site, cache[site], recon)
            zeroed = _logits_from_site(model, site, cache[site], torch.zeros_like(acts))
            tot["ce_sae"] += _next_token_ce(spliced, tokens).item()
            tot["ce_zero"] += _next_token_ce(zeroed, tokens).item()
    results = []
    for site in sites:
        tot = totals[site]
        # total variance around the per-dimension mean
        variance = tot["sumsq"] - (tot["sum"].pow(2).sum().item() / n_tokens)
        ce_c, ce_s, ce_z = ce_clean / n_predictions, tot["ce_sae"] / n_predictions, tot["ce_zero"] / n_predictions
        results.append({
            "site": site,
            "explained_variance": 1 - tot["sse"] / variance,
            "ce_loss_recovered": (ce_z - ce_s) / (ce_z - ce_c),
            "l0": tot["l0"] / n_tokens,
            "dead_fraction": 1 - tot["fired"].float().mean().item(),
            "tokens": n_tokens,
            "ce_clean": ce_c,
            "ce_spliced": ce_s,
            "ce_zero_ablation": ce_z,
        })
    return results
