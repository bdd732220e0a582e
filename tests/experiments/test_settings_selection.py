"""Latent selection: the attribution is the derivative it claims to be, and it finds latents
whose clamp removes the behaviour better than random latents do."""

from __future__ import annotations

import pytest
import torch

from experiments.settings import (
    IOIConfig,
    IOISetting,
    behaviour_score,
    collate,
    final_logits,
    latent_attribution,
    score_samples,
    select_latents,
)
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.sae_ops import encode
from tests.helpers import D_SAE, tiny_model, tiny_sae
from tests.settings_cases import random_samples

EARLY, LATE = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


def _scaled_latent_score(model, sae, site, samples, latent, eps, last_only):
    """Total score with latent i's decoder contribution scaled by (1 + eps) at the site."""
    def hook(resid, hook):
        z_i = encode(sae, resid)[..., latent].detach()  # [batch, pos]
        if last_only:
            keep = torch.zeros_like(z_i)
            keep[torch.arange(len(lengths)), lengths - 1] = 1
            z_i = z_i * keep
        return resid + eps * z_i[..., None] * sae.W_dec[latent]

    batch = collate(samples)
    lengths = batch.lengths
    with torch.no_grad(), model.hooks(fwd_hooks=[(site, hook)]):
        return float(behaviour_score(final_logits(model, batch), batch).sum())  # float64 throughout


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
@pytest.mark.parametrize("positions", ["all", "last"])
def test_attribution_is_the_derivative_of_scaling_each_latent(kind, positions):
    model = tiny_model(dtype=torch.float64)
    sae = tiny_sae(kind, dtype=torch.float64)
    samples = random_samples(model, n=4, seed=5)
    attr, n = latent_attribution(model, sae, EARLY, samples, positions=positions, only_present=False)
    assert n == 4 and attr.shape == (D_SAE,)
    eps = 1e-5
    top = attr.abs().topk(3).indices.tolist()
    for latent in top + [int(attr.abs().argmin())]:
        up = _scaled_latent_score(model, sae, EARLY, samples, latent, eps, positions == "last")
        down = _scaled_latent_score(model, sae, EARLY, samples, latent, -eps, positions == "last")
        assert attr[latent].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-8)


def test_selected_latents_suppress_more_than_random_latents():
    model, sae = tiny_model(seed=1), tiny_sae("jumprelu", seed=1)
    samples = random_samples(model, n=12, seed=1)
    base = score_samples(model, samples)

    def drop(features):
        clamp = FeatureClamp(ClampConfig(features={LATE: tuple(features)}), {LATE: sae})
        return float((base - score_samples(model, samples, defense=clamp)).sum())

    selection = select_latents(model, sae, LATE, samples, k=4)
    gen = torch.Generator().manual_seed(0)
    random_drops = [drop(torch.randperm(D_SAE, generator=gen)[:4].tolist()) for _ in range(10)]
    assert drop(selection.features) > max(random_drops)


def test_selection_result_is_sorted_positive_and_ready_to_clamp():
    model, sae = tiny_model(), tiny_sae("topk")
    samples = random_samples(model, n=6)
    selection = select_latents(model, sae, EARLY, samples, k=5)
    assert 1 <= len(selection.features) <= 5 and len(set(selection.features)) == len(selection.features)
    assert all(a > 0 for a in selection.attribution)
    assert list(selection.attribution) == sorted(selection.attribution, reverse=True)
    config = selection.clamp_config()
    assert config.features == {EARLY: selection.features} and config.mode == "set" and config.value == 0.0
    assert selection.to_dict()["n_samples"] == 6
    FeatureClamp(config, {EARLY: sae})  # builds


def test_control_equal_to_topic_leaves_nothing_to_select():
    model, sae = tiny_model(), tiny_sae()
    samples = random_samples(model, n=4)  # all present, so topic and control count the same samples
    with pytest.raises(ToolkitError, match="no latent has positive attribution"):
        select_latents(model, sae, EARLY, samples, k=3, control=samples)


def test_selection_errors_name_the_site():
    model, sae = tiny_model(), tiny_sae()
    samples = random_samples(model, n=3)
    with pytest.raises(ToolkitError, match="blocks.0.hook_resid_post"):
        select_latents(model, sae, "blocks.0.hook_resid_pots", samples, k=3)
    absent = [type(s)(id=s.id, prompt="", tokens=s.tokens, target=s.foils[0], foils=(s.target,)) for s in samples]
    with pytest.raises(ToolkitError, match="absent on all 3 samples"):
        select_latents(model, sae, EARLY, absent, k=3)
    with pytest.raises(ToolkitError, match="k must be"):
        select_latents(model, sae, EARLY, samples, k=0)


def test_setting_builds_its_plain_clamp_and_removes_no_hooks_it_did_not_add():
    model, sae = tiny_model(), tiny_sae("jumprelu")
    samples = random_samples(model, n=6)
    setting = IOISetting(IOIConfig(site=LATE, n_latents=3))
    clamp = setting.defense(model, {LATE: sae}, samples)
    assert clamp.sites == (LATE,) and len(clamp.features[LATE]) <= 3
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    with pytest.raises(ToolkitError, match="SAE site"):
        setting.defense(model, {EARLY: sae}, samples)
