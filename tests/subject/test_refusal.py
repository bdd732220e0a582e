"""Smoke tests of refusal recovery on the real subject with the shipped SAEs: a two-site set clamp,
two AdvBench requests, a few steps of each residual mode, generation with the optimised delta;
and the whole pipeline end to end at a tiny size."""

from __future__ import annotations

import math

import pytest

from experiments.refusal.recovery import RecoveryConfig, RefusalExample, complies, residual_recovery
from guard.clamp import ClampConfig, FeatureClamp
from tests.subject.shared import shared_subject

SITES = ("blocks.6.hook_resid_post", "blocks.12.hook_resid_post")
pytestmark = pytest.mark.subject


@pytest.fixture(scope="module")
def setup():
    from attacks.generate import generate
    from experiments.data.refusal import load_advbench
    from experiments.subject.chat import chat_prompt

    subject = shared_subject()
    model = subject.model
    defense = FeatureClamp(ClampConfig(features={s: (1, 2, 3) for s in SITES}, mode="set", value=4.0), subject.saes)
    requests = list(load_advbench().prompts[:2])
    prompts = [chat_prompt(r) for r in requests]
    gen = generate(model, prompts, max_new_tokens=5)
    examples = [RefusalExample(r, p, tuple(gen.tokens[i, : gen.prompt_lengths[i]].tolist()),
                               tuple(gen.answer_tokens(i)), gen.texts[i])
                for i, (r, p) in enumerate(zip(requests, prompts, strict=True))]
    return model, defense, examples


@pytest.mark.parametrize("mode", ["cross_layer", "encoder", "none"])
def test_residual_recovery_records(setup, mode):
    model, defense, examples = setup
    config = RecoveryConfig(site=SITES[0], steps=2, answer_tokens=4, max_new_tokens=5, drift_threshold=0.1)
    records = residual_recovery(model, defense, examples, mode, config, replay=mode == "cross_layer")
    assert len(records) == 2 and all(not hp.fwd_hooks for hp in model.hook_dict.values())
    for r in records:
        assert r["mode"] == mode and isinstance(r["text"], str)
        assert math.isfinite(r["drift"]) and r["drift"] >= 0 and 0 <= r["rel_delta_norm"] <= 0.2 + 1e-4
        assert r["label"] in ("refusal", "off_topic", "hedge", "degenerate", "comply")
        if mode == "cross_layer":
            assert set(r["replay"]) == {"clamped", "other", "error"}


def test_pipeline_end_to_end_at_a_tiny_size(setup):
    from experiments.data.harmless import load_harmless
    from experiments.refusal.cli import DEFAULT, load_requests
    from experiments.refusal.pipeline import headline, results_table, run_refusal, with_overrides

    model, defense, _ = setup
    config = with_overrides(DEFAULT, n_select=2, n=4, n_harmless=2, n_gradient=2, value=7.0, steps=2,
                            answer_tokens=4, max_new_tokens=8, modes=("cross_layer",), sweep=(0.0, 0.05),
                            sweep_n=2, replay=False)
    out = run_refusal(model, defense.saes, config, load_requests(None), list(load_harmless().prompts),
                      log=lambda m: None)
    valid = [s for s in out["samples"] if complies(s["undefended_label"]) and s["defended_label"] == "refusal"]
    assert out["n_evaluated"] == 4 and out["n_valid"] == len(valid) > 0
    assert len(out["records"]["cross_layer"]) == out["n_valid"]
    sweep = out["sweep"]
    assert [r["budget"] for r in sweep] == [0.0, 0.05, 0.2]
    assert sweep[0]["nonrefusal"]["k"] == 0 and sweep[0]["nonrefusal"]["n"] == min(2, out["n_valid"])
    assert headline(out)["n_valid"] == out["n_valid"] and "cross_layer" in results_table(out)
