"""The shipped SAEs load with SAELens, sit at the documented sites and have elementwise activations."""

from __future__ import annotations

import json

import torch
from sae_lens import JumpReLUSAE

from experiments.saes.shipped import SHIPPED_DIR, SITES, load_shipped_saes, shipped_sites


def test_every_site_is_shipped():
    assert shipped_sites() == list(SITES)


def test_shapes_hook_names_and_activation():
    saes = load_shipped_saes()
    for site, sae in saes.items():
        assert isinstance(sae, JumpReLUSAE)  # elementwise: encoder-orthogonal recovery is exact
        assert sae.cfg.metadata.hook_name == site
        assert sae.cfg.d_in == 576 and sae.W_enc.shape == (576, sae.cfg.d_sae)
        assert sae.W_dec.shape == (sae.cfg.d_sae, 576)
        assert sae.W_enc.dtype == torch.float32
        assert sae.cfg.normalize_activations == "none"  # pre-activations linear in the input


def test_cards_record_training_and_metrics():
    for site in SITES:
        card = json.loads((SHIPPED_DIR / site / "card.json").read_text())
        assert card["site"] == site
        assert card["training"]["train_tokens"] > 0
        assert set(card["heldout_metrics"]) >= {"explained_variance", "ce_loss_recovered", "l0", "dead_fraction"}


def test_weights_are_16_bit_and_small():
    total = sum((SHIPPED_DIR / s / "sae_weights.safetensors").stat().st_size for s in SITES)
    assert total < 40 * 2**20
    cfg = json.loads((SHIPPED_DIR / SITES[0] / "cfg.json").read_text())
    assert cfg["dtype"] == "float16"

