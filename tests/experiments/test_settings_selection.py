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
from experiments.settings.clamp_search import search_clamp
from experiments.settings.selection import latent_density
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.sae_ops import encode
from tests.helpers import D_SAE, tiny_model, tiny_sae, tiny_tokens
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


def test_latent_density_counts_active_tokens_after_position_zero():
    model, sae = tiny_model(), tiny_sae("jumprelu")
    tokens = tiny_tokens(batch=4, pos=7, seed=3)
    density = latent_density(model, sae, EARLY, tokens, batch_size=3)
    _, cache = model.run_with_cache(tokens, names_filter=EARLY)
    by_hand = (encode(sae, cache[EARLY][:, 1:]) > 0).double().mean(dim=(0, 1))
    torch.testing.assert_close(density, by_hand)
    with pytest.raises(ToolkitError, match="pos >= 2"):
        latent_density(model, sae, EARLY, tokens[:, :1])


def test_density_filter_never_chooses_a_latent_above_it():
    model, sae = tiny_model(seed=1), tiny_sae("jumprelu", seed=1)
    samples = random_samples(model, n=8, seed=1)
    everything = select_latents(model, sae, LATE, samples, k=D_SAE)
    density = torch.linspace(0.0, 1.0, D_SAE, dtype=torch.float64)
    cut = float(density[list(everything.features)].median())
    sparse = select_latents(model, sae, LATE, samples, k=D_SAE, density=density, max_density=cut)
    assert sparse.features and all(density[i] <= cut for i in sparse.features)
    # the filter only removes: the kept latents are the unfiltered order minus the dense ones
    assert sparse.features == tuple(i for i in everything.features if density[i] <= cut)
    assert sparse.n_dense == len(everything.features) - len(sparse.features) > 0
    assert sparse.density == tuple(float(density[i]) for i in sparse.features)
    with pytest.raises(ToolkitError, match="fires on more than"):
        select_latents(model, sae, LATE, samples, k=3, density=torch.ones(D_SAE), max_density=0.5)
    with pytest.raises(ToolkitError, match="needs the latents' benign density"):
        select_latents(model, sae, LATE, samples, k=3, max_density=0.5)


def test_clamp_search_takes_the_strongest_clamp_within_the_utility_budget():
    model, sae = tiny_model(seed=1), tiny_sae("jumprelu", seed=1)
    samples = random_samples(model, n=12, seed=1)
    ranked = select_latents(model, sae, LATE, samples, k=D_SAE)
    benign = tiny_tokens(batch=4, pos=8, seed=2)  # text on which every clamp here costs > 0 nats
    counts = (1, 2, 4, 8, 16)
    free = search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=None, counts=counts)
    assert free.meets_budget and free.chosen == free.points[-1] and len(free.selection.features) == free.points[-1].n_latents
    costs = sorted(p.delta_ce for p in free.points)
    budget = costs[len(costs) // 2]  # a budget some counts meet and some do not
    choice = search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=budget, counts=counts)
    within = [p for p in choice.points if p.delta_ce <= budget]
    assert choice.meets_budget and choice.chosen.delta_ce <= budget
    assert choice.chosen.suppressed == max(p.suppressed for p in within)
    assert choice.selection.features == ranked.features[: choice.chosen.n_latents]
    assert choice.points == free.points  # the same measurements, whatever the budget
    assert costs[0] > 0
    impossible = search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=costs[0] / 2, counts=counts)
    assert not impossible.meets_budget and impossible.chosen.delta_ce == costs[0]
    assert impossible.to_dict()["meets_budget"] is False


def test_utility_aware_setting_needs_benign_tokens_and_records_its_choice():
    model, sae = tiny_model(seed=1), tiny_sae("jumprelu", seed=1)
    samples = random_samples(model, n=8, seed=1)
    setting = IOISetting(IOIConfig(site=LATE, n_latents=8, max_density=0.9, max_delta_ce=0.5))
    with pytest.raises(ToolkitError, match="needs benign tokens"):
        setting.select(model, sae, samples)
    choice = setting.choose_clamp(model, {LATE: sae}, samples, benign=tiny_tokens(batch=3, pos=8, seed=4))
    assert [p.n_latents for p in choice.points] == [4, 8]
    assert choice.selection.max_density == 0.9 and all(d <= 0.9 for d in choice.selection.density)
    with pytest.raises(ToolkitError, match="max_density must be in"):
        IOIConfig(max_density=0.0)
    with pytest.raises(ToolkitError, match="max_delta_ce must be"):
        IOIConfig(max_delta_ce=-0.1)


def test_clamp_search_tries_every_count_and_value_and_keeps_the_retain_budget():
    model, sae = tiny_model(seed=1), tiny_sae("jumprelu", seed=1)
    samples, retain = random_samples(model, n=12, seed=1), random_samples(model, n=12, seed=7)
    ranked = select_latents(model, sae, LATE, samples, k=D_SAE)
    benign = tiny_tokens(batch=4, pos=8, seed=2)
    counts = (1, 2, len(ranked.features))
    grid = dict(counts=counts, values=(0.5, -1.0, -4.0), mode="multiply", retain=retain)
    free = search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=None, **grid)
    assert [(p.n_latents, p.value) for p in free.points] == [(c, v) for c in counts for v in (0.5, -1.0, -4.0)]
    assert all(p.retain_drop is not None for p in free.points)
    drops = sorted({p.retain_drop for p in free.points})
    assert len(drops) > 1  # some clamps cost retain accuracy and some less
    budget = drops[len(drops) // 2]
    choice = search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=None, max_retain_drop=budget,
                          **grid)
    within = [p for p in choice.points if p.retain_drop <= budget]
    assert choice.meets_budget and choice.chosen.retain_drop <= budget
    assert choice.chosen.suppressed == max(p.suppressed for p in within)
    config = choice.clamp_config()
    assert (config.mode, config.value) == ("multiply", choice.chosen.value)
    assert config.features == {LATE: ranked.features[: choice.chosen.n_latents]}
    assert choice.to_dict()["chosen"]["retain_drop"] == choice.chosen.retain_drop
    # no point within the retain budget: the one over it least, whatever its next-token cost
    over = search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=10.0,
                        max_retain_drop=drops[0] - 0.01, **grid)
    assert not over.meets_budget and over.chosen.retain_drop == drops[0]
    with pytest.raises(ToolkitError, match="needs retain samples"):
        search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=None, max_retain_drop=0.1)
    with pytest.raises(ToolkitError, match="mode must be one of"):
        search_clamp(model, {LATE: sae}, ranked, samples, benign, max_delta_ce=None, mode="scale")
