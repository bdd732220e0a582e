"""Smoke test of refusal recovery on the real subject with the shipped SAEs: a two-site set clamp,
two AdvBench requests, a few steps of each residual mode, generation with the optimised delta."""

from __future__ import annotations

import math

import pytest

from experiments.refusal.recovery import RecoveryConfig, RefusalExample, residual_recovery
from guard.clamp import ClampConfig, FeatureClamp

SITES = ("blocks.6.hook_resid_post", "blocks.12.hook_resid_post")
pytestmark = pytest.mark.subject


@pytest.fixture(scope="module")
def setup():
    from attacks.generate import generate
    from experiments.data.refusal import load_advbench
    from experiments.subject import load_subject
    from experiments.subject.chat import chat_prompt

    subject = load_subject()
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
