"""The refusal pipeline's pieces on tiny models: latent scoring, drift on the generated trajectory,
threat models per mode, data splits, summaries and the README block."""

from __future__ import annotations

import json

import pytest
import torch

from attacks.generate import generate
from attacks.perturbation import Perturbation
from attacks.projection import EncoderProjector
from attacks.threat import CrossLayer, EncoderOrthogonal, NoConstraint, PositionKind
from experiments.refusal.discovery import DiscoveryConfig, score_latents
from experiments.refusal.pipeline import RefusalConfig, headline, results_table, split, summarise
from experiments.refusal.recovery import RecoveryConfig, threat_for, trajectory_drift
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import D_MODEL, tiny_model, tiny_sae

SITE0, SITE1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
PROMPTS = [[3, 7, 1, 9, 4], [5, 2, 8], [8, 8, 1, 6, 2, 0, 11]]


@pytest.fixture(scope="module")
def two_site():
    model = tiny_model(dtype=torch.float64)
    saes = {SITE0: tiny_sae("jumprelu", dtype=torch.float64, seed=1),
            SITE1: tiny_sae("jumprelu", dtype=torch.float64, seed=2)}
    clamp = FeatureClamp(ClampConfig(features={SITE0: (0, 3), SITE1: (1, 4, 6)}, mode="set", value=2.0,
                                     sink_ratio=None), saes)
    return model, saes, clamp


def test_score_latents_finds_a_planted_decoder_direction():
    sae = tiny_sae("jumprelu", seed=3)
    w = sae.W_dec.detach()
    g = 5.0 * w[7] / w[7].norm()
    scores = score_latents({SITE0: sae}, {SITE0: g})[SITE0]
    # the score is the projection of the gradient on the unit decoder row: largest for the planted one
    assert torch.isclose(scores[7], torch.tensor(5.0), atol=1e-5) and int(scores.argmax()) == 7


def test_trajectory_drift_zero_without_delta_and_for_an_encoder_orthogonal_delta(two_site):
    model, saes, clamp = two_site
    width = 7 + 6
    gen = generate(model, PROMPTS, max_new_tokens=6, defense=clamp, stop_token_ids=())
    zero = Perturbation(SITE1, torch.zeros(3, width, D_MODEL, dtype=torch.float64), torch.ones(3, width, dtype=torch.bool))
    drift, floor = trajectory_drift(model, clamp, gen, zero)
    assert torch.allclose(drift, torch.zeros(3), atol=1e-12) and torch.allclose(floor, torch.zeros(3), atol=1e-12)
    # a delta at the last clamped site, orthogonal to its clamped encoder columns: no drift anywhere
    project = EncoderProjector(saes[SITE1].W_enc[:, [1, 4, 6]].detach())
    delta = project(torch.randn(3, width, D_MODEL, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    mask = torch.zeros(3, width, dtype=torch.bool)
    mask[:, 1:4] = True
    gen = generate(model, PROMPTS, max_new_tokens=6, defense=clamp, stop_token_ids=(),
                   perturbations=[Perturbation(SITE1, delta, mask)])
    drift, _ = trajectory_drift(model, clamp, gen, Perturbation(SITE1, delta, mask))
    assert drift.max() < 1e-9
    # the same delta one site earlier moves the later site's defended latents
    gen = generate(model, PROMPTS, max_new_tokens=6, defense=clamp, stop_token_ids=(),
                   perturbations=[Perturbation(SITE0, 5 * delta, mask)])
    drift, _ = trajectory_drift(model, clamp, gen, Perturbation(SITE0, 5 * delta, mask))
    assert drift.min() > 1e-4


def test_threat_per_mode():
    assert isinstance(threat_for("encoder", SITE0, 0.2, 0.1).constraint, EncoderOrthogonal)
    assert isinstance(threat_for("none", SITE0, 0.2, 0.1).constraint, NoConstraint)
    cross = threat_for("cross_layer", SITE0, 0.2, 0.13)
    assert isinstance(cross.constraint, CrossLayer) and cross.constraint.drift_threshold == 0.13
    assert cross.positions.kind is PositionKind.PROMPT and cross.relative
    with pytest.raises(ToolkitError, match="soft_suffix"):
        threat_for("soft_suffix", SITE0, 0.2, 0.1)


def test_split_is_disjoint_deterministic_and_refuses_too_few():
    items = [f"r{i}" for i in range(20)]
    a, b = split(items, 5, seed=1)
    assert len(a) == 5 and len(b) == 15 and not set(a) & set(b)
    assert split(items, 5, seed=1) == (a, b) and split(items, 5, seed=2) != (a, b)
    assert len(split(items, 5, seed=1, n_rest=4)[1]) == 4
    with pytest.raises(ToolkitError, match="reserved"):
        split(items[:3], 5, seed=0)


def _record(nonrefusal: bool, base_like: bool, drift: float, label: str) -> dict:
    return {"nonrefusal": nonrefusal, "base_like": base_like, "objective_success": nonrefusal, "drift": drift,
            "floor_violation": drift / 2, "rel_delta_norm": 0.1, "label": label}


def test_summary_headline_and_table_from_records():
    records = [_record(True, True, 0.05, "comply"), _record(True, False, 0.1, "hedge"),
               _record(False, False, 0.9, "refusal")]
    s = summarise(records, drift_threshold=0.08)
    assert s["nonrefusal"]["k"] == 2 and s["nonrefusal"]["n"] == 3 and s["base_like"]["k"] == 1
    assert s["nonrefusal_within_drift"]["k"] == 1  # the recovered one at drift 0.1 is over 0.08
    assert s["nonrefusal"]["ci_low"] <= 2 / 3 <= s["nonrefusal"]["ci_high"]
    assert s["drift_mean"] == pytest.approx(0.075)  # over the recovered samples only
    assert s["labels"] == {"comply": 1, "hedge": 1, "refusal": 1}
    config = RefusalConfig(DiscoveryConfig(sites=(SITE0, SITE1)), RecoveryConfig(site=SITE0), sweep=())
    rate = {"k": 1, "n": 10, "rate": 0.1, "ci_low": 0.0, "ci_high": 0.4}
    results = {"setting": "refusal", "config": config.to_dict(), "n_valid": 3, "n_evaluated": 10,
               "defense": {"summary": "refusal latents set"}, "undefended_complies": rate, "defended_refuses": rate,
               "over_refusal_harmless": rate, "over_refusal_harmless_undefended": rate,
               "recovery": {"cross_layer": s}, "sweep": [{"budget": 0.0, **s}], "replay": {}, "seconds": 1.0}
    line = headline(results)
    assert set(line) == {"setting", "n_valid", "recovery_nonrefusal", "ci_low", "ci_high", "recovery_baselike",
                         "drift", "over_refusal_harmless", "seconds"}
    assert line["recovery_nonrefusal"] == pytest.approx(2 / 3) and line["over_refusal_harmless"] == 0.1
    json.dumps(line)
    table = results_table(results)
    assert "| cross_layer | 2/3" in table and "over-refusal" in table.lower()


def test_config_rejects_unknown_modes_and_empty_discovery():
    with pytest.raises(ToolkitError, match="modes"):
        RefusalConfig(DiscoveryConfig(sites=(SITE0,)), RecoveryConfig(site=SITE0), modes=("telepathy",))
    with pytest.raises(ToolkitError, match="site"):
        DiscoveryConfig(sites=())


def test_cli_defaults_and_overrides():
    from experiments.refusal.cli import DEFAULT, default_config
    from experiments.refusal.pipeline import with_overrides

    quick = default_config(quick=True)
    assert quick.n < DEFAULT.n and quick.recovery.steps < DEFAULT.recovery.steps and quick.sweep == ()
    assert len(DEFAULT.discovery.sites) >= 2 and DEFAULT.recovery.site == DEFAULT.discovery.sites[0]
    assert quick.discovery == DEFAULT.discovery and "cross_layer" in quick.modes
    changed = with_overrides(DEFAULT, n=10, steps=5, budget=None, n_latents=3)
    assert changed.n == 10 and changed.recovery.steps == 5 and changed.recovery.budget == DEFAULT.recovery.budget
    assert changed.discovery.n_latents == 3 and changed.discovery.sites == DEFAULT.discovery.sites
    reseeded = with_overrides(DEFAULT, seed=3)  # the data split and the attack alike
    assert reseeded.seed == 3 and reseeded.recovery.seed == 3
    with pytest.raises(ToolkitError, match="telepathy"):
        with_overrides(DEFAULT, telepathy=1)
