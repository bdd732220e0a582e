"""The multi-layer bottleneck: which sites it splices, and that each is the plain splice there."""

from __future__ import annotations

import pytest
import torch

from guard.bottleneck import SPEC, BottleneckConfig, MultiLayerBottleneck, downstream_sites
from guard.errors import ToolkitError
from guard.splice import ReconstructionSplice, SpliceConfig
from tests.helpers import D_MODEL, tiny_sae

SITES = [f"blocks.{i}.hook_resid_post" for i in (6, 18, 12, 24)]  # not in forward order on purpose


@pytest.fixture(scope="module")
def saes():
    return {site: tiny_sae("jumprelu", seed=20 + i) for i, site in enumerate(SITES)}


def test_downstream_sites_are_the_later_saes_in_layer_order(saes):
    assert downstream_sites({SITES[0]: (1,)}, saes) == [SITES[2], SITES[1], SITES[3]]
    assert downstream_sites({SITES[2]: (1,)}, saes) == [SITES[1], SITES[3]]
    assert downstream_sites({SITES[3]: (1,)}, saes) == []
    assert SPEC.unusable(None, saes, {SITES[3]: ()}) is not None and SPEC.unusable(None, saes, {SITES[2]: ()}) is None


@pytest.mark.parametrize("downstream, spliced", [(0, 1), (1, 2), (2, 3), (9, 4)])
def test_it_splices_at_the_clamp_and_the_next_sites(saes, downstream, spliced):
    config = BottleneckConfig(features={SITES[0]: (1, 4)}, downstream=downstream)
    defense = MultiLayerBottleneck(config, saes)
    assert defense.config == config  # as given, so a sweep can replace downstream on it
    assert defense.sites == (SITES[0], SITES[2], SITES[1], SITES[3])[:spliced]
    assert [d.site for d in defense.defended_latents()] == [SITES[0]]  # latents clamped at the clamp's site only
    resid = torch.randn(2, 3, D_MODEL, generator=torch.Generator().manual_seed(0))
    for site in defense.sites:
        plain = ReconstructionSplice(SpliceConfig(features={site: (1, 4) if site == SITES[0] else ()}), saes)
        torch.testing.assert_close(defense.edit(resid, site), plain.edit(resid, site))


def test_negative_downstream_is_refused(saes):
    with pytest.raises(ToolkitError, match="downstream"):
        MultiLayerBottleneck(BottleneckConfig(features={SITES[0]: (1,)}, downstream=-1), saes)
