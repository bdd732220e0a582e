"""Soft-suffix baseline on the tiny model: planted objectives rise, early stop is per example."""

from __future__ import annotations

import pytest
import torch

from attacks.generate import generate
from attacks.perturbation import perturbation_hooks
from attacks.suffix import SoftSuffixAttack, SoftSuffixConfig, SuffixExample, build_batch, target_logprob
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae

EXAMPLES = [
    SuffixExample(before=(3, 4, 5), after=(9,), target=(11, 12)),
    SuffixExample(before=(6,), after=(9, 10), target=(13, 14, 15)),
    SuffixExample(before=(1, 2, 3, 4), after=(9,), target=(16,)),
]
GOAL = 7


def token_logit(logits, batch):
    """Planted objective: the logit of token GOAL at the last prompt position."""
    return logits[torch.arange(len(batch.rows)), batch.last(), GOAL]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def clamp():
    site = "blocks.0.hook_resid_post"
    return FeatureClamp(ClampConfig(features={site: (1, 2, 4)}, mode="multiply", value=3.0),
                        {site: tiny_sae("standard", seed=2)})


def test_planted_objective_increases_under_the_defense(model, clamp):
    cfg = SoftSuffixConfig(n_suffix=4, steps=25, lr=0.1, placeholder=0)
    attack = SoftSuffixAttack(cfg)
    batch = build_batch(EXAMPLES, cfg.n_suffix, cfg.placeholder, 0, "cpu")
    with torch.no_grad():
        start = token_logit(attack._forward(model, batch, attack._init(model, 3), clamp)[0], batch)
    result = attack.run(model, EXAMPLES, token_logit, defense=clamp)
    assert (result.scores > start + 1.0).all()
    assert result.history[-1] > result.history[0]
    assert result.embeddings.shape == (3, 4, 16) and not result.success.any()
    # hooks gone, and no gradient piled up on the model
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    assert all(p.grad is None for p in model.parameters())


def test_cached_prefix_gives_the_same_attack(clamp):
    # float64: the cached and the full forward then agree to rounding, step after step
    model64 = tiny_model(dtype=torch.float64)
    clamp64 = FeatureClamp(clamp.config, {s: sae.to(torch.float64) for s, sae in clamp.saes.items()})
    examples = [EXAMPLES[0], EXAMPLES[2]]  # the first 3 positions of both come from the cache
    results = [SoftSuffixAttack(SoftSuffixConfig(n_suffix=3, steps=6, lr=0.1, reuse_prefix=reuse))
               .run(model64, examples, target_logprob, defense=clamp64) for reuse in (False, True)]
    full, cached = results
    assert torch.allclose(full.embeddings, cached.embeddings, atol=1e-9)
    assert torch.allclose(full.scores, cached.scores, atol=1e-9)
    assert full.history == pytest.approx(cached.history, abs=1e-9)


def test_early_stop_is_per_example(model):
    thresholds = torch.tensor([float("-inf"), 0.0, float("inf")])
    cfg = SoftSuffixConfig(n_suffix=3, steps=15, lr=0.2)
    attack = SoftSuffixAttack(cfg)
    batch = build_batch(EXAMPLES, cfg.n_suffix, cfg.placeholder, 0, "cpu")
    with torch.no_grad():
        start = token_logit(attack._forward(model, batch, attack._init(model, 3), None)[0], batch)
    thresholds[1] = start[1] + 0.5  # reachable, but not at step 0
    result = attack.run(model, EXAMPLES, token_logit, success=lambda lg, b, s: s > thresholds[b.rows])
    assert result.success.tolist() == [True, True, False]
    assert result.steps[0] == 0 and 0 < result.steps[1] < 15 and result.steps[2] == 15
    assert result.scores[1] > thresholds[1]


def test_suffix_replays_as_an_embedding_perturbation(model, clamp):
    cfg = SoftSuffixConfig(n_suffix=4, steps=5, lr=0.1, init="random", seed=3)
    attack = SoftSuffixAttack(cfg)
    result = attack.run(model, EXAMPLES, token_logit, defense=clamp)
    prompts = result.prompt_tokens(EXAMPLES)
    pert = result.as_perturbation(model, EXAMPLES)
    batch = build_batch(EXAMPLES, cfg.n_suffix, cfg.placeholder, 0, "cpu")
    with torch.no_grad():
        direct, _ = attack._forward(model, batch, result.embeddings, clamp)
        for i, p in enumerate(prompts):
            with model.hooks(fwd_hooks=perturbation_hooks([pert.select(torch.tensor([i]))])), clamp.applied(model):
                replay = model(torch.tensor(p)[None])
            torch.testing.assert_close(replay[0], direct[i, : len(p)], rtol=1e-4, atol=1e-4)
    # and generation accepts it as a prompt-position perturbation
    g = generate(model, prompts, max_new_tokens=3, defense=clamp, perturbations=[pert])
    assert g.prompt_lengths == tuple(len(p) for p in prompts)


def test_target_logprob_matches_manual(model):
    batch = build_batch(EXAMPLES, 2, 0, 0, "cpu")
    with torch.no_grad():
        logits = model(batch.tokens)
    got = target_logprob(logits, batch)
    logp = logits.log_softmax(-1)
    for i, e in enumerate(EXAMPLES):
        start = int(batch.target_start[i])
        manual = [logp[i, start + k - 1, t] for k, t in enumerate(e.target)]
        assert torch.isclose(got[i], torch.stack(manual).mean(), atol=1e-5)


def test_max_norm_caps_each_vector(model):
    cfg = SoftSuffixConfig(n_suffix=2, steps=10, lr=1.0, max_norm=0.5)
    result = SoftSuffixAttack(cfg).run(model, EXAMPLES, token_logit)
    cap = 0.5 * model.W_E.norm(dim=-1).mean()
    assert (result.embeddings.norm(dim=-1) <= cap * (1 + 1e-5)).all()


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 for c in text]}


def test_from_prompt_splits_before_end_of_turn():
    tok = _CharTokenizer()
    e = SuffixExample.from_prompt(tok, "<u>hi<|im_end|>\n<a>", target="ok", insert_before="<|im_end|>")
    assert len(e.before) == len("<u>hi") and len(e.after) == len("<|im_end|>\n<a>") and len(e.target) == 2
    end = SuffixExample.from_prompt(tok, "abc", insert_before=None)
    assert end.after == () and len(end.before) == 3
    with pytest.raises(ToolkitError, match="marker"):
        SuffixExample.from_prompt(tok, "no marker here", insert_before="<|im_end|>")


def test_bad_config_and_objective_shape(model):
    with pytest.raises(ToolkitError):
        SoftSuffixAttack(SoftSuffixConfig(n_suffix=0))
    with pytest.raises(ToolkitError, match="shape"):
        SoftSuffixAttack(SoftSuffixConfig(n_suffix=2, steps=1)).run(model, EXAMPLES, lambda lg, b: lg.sum())
