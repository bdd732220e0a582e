"""The embedding threat on the tiny model: tail positions, the slot, the engine's attack at the embedding."""

from __future__ import annotations

import pytest
import torch

from attacks.batch import AttackBatch
from attacks.engine import AttackConfig, GradientRecovery
from attacks.forward import full_forward
from attacks.generate import generate
from attacks.objectives import LogitDifference
from attacks.suffix import EMBED_SITE, SuffixSlot
from attacks.threat import Positions, ThreatModel
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae

PROMPTS = [[3, 4, 5, 9], [6, 9, 10], [1, 2, 3, 4, 9]]
SLOT = SuffixSlot(n_tokens=3, keep=1, placeholder=0)
GOAL, OTHER = 7, 8


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def clamp():
    site = "blocks.0.hook_resid_post"
    return FeatureClamp(ClampConfig(features={site: (1, 2, 4)}, mode="multiply", value=3.0),
                        {site: tiny_sae("standard", seed=2)})


def suffix_batch(answer: int = 0) -> AttackBatch:
    seqs = [SLOT.insert(p) for p in PROMPTS]
    return AttackBatch.from_lists([s + [11] * answer for s in seqs], prompt_lengths=[len(s) for s in seqs])


def test_slot_inserts_before_the_kept_tail_and_tail_positions_find_it():
    assert SLOT.insert([3, 4, 5, 9]) == [3, 4, 5, 0, 0, 0, 9]
    assert SuffixSlot(2).insert([1, 2]) == [1, 2, 0, 0]
    for answer in (0, 2):  # counted from the prompt's end, not the answer's
        batch = suffix_batch(answer)
        mask = SLOT.positions().resolve(batch)
        for row, prompt in enumerate(PROMPTS):
            start = len(prompt) - 1
            assert mask[row].nonzero().flatten().tolist() == [start, start + 1, start + 2]
    with pytest.raises(ToolkitError, match="keep=4"):
        SuffixSlot(2, keep=4).insert([1, 2, 3, 4])
    with pytest.raises(ToolkitError, match="needs counts"):
        Positions.make("tail")
    with pytest.raises(ToolkitError, match="n_tokens"):
        SuffixSlot(0)
    threat = SLOT.threat(1.5)
    assert ThreatModel.from_dict(threat.to_dict()) == threat
    assert threat.sites == (EMBED_SITE,) and threat.constraint.name == "none"


class _CharTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 50 for c in text]}


def test_slot_before_a_marker():
    slot = SuffixSlot.before_marker(_CharTokenizer(), "<u>hi<|im_end|>\n<a>", "<|im_end|>", n_tokens=4)
    assert slot.keep == len("<|im_end|>\n<a>") and slot.n_tokens == 4
    with pytest.raises(ToolkitError, match="marker"):
        SuffixSlot.before_marker(_CharTokenizer(), "no marker here", "<|im_end|>")


def test_attack_at_the_embedding_raises_a_planted_objective_within_budget(model, clamp):
    batch = suffix_batch()
    objective = LogitDifference(torch.full((3,), GOAL), torch.full((3,), OTHER), threshold=float("inf"))
    result = GradientRecovery(model, clamp, SLOT.threat(1.0), objective, AttackConfig(steps=15, step_size=0.2)).run(batch)
    assert (result.score > result.defended_score + 0.5).all()
    (pert,) = result.perturbations
    assert pert.site == EMBED_SITE
    # only the suffix moves, each position within the budget times the placeholder's embedding norm
    outside = pert.delta * (~SLOT.positions().resolve(batch))[..., None]
    assert outside.abs().max() == 0
    cap = model.W_E[SLOT.placeholder].norm()
    assert (pert.delta.norm(dim=-1) <= cap * (1 + 1e-5)).all() and (pert.delta.norm(dim=-1).amax(1) > 0.5 * cap).all()
    assert torch.isfinite(result.drift).all()  # the clamped site lies downstream: drift is measured there
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    assert all(p.grad is None for p in model.parameters())


def test_cached_prefix_gives_the_same_attack_from_layer_zero(clamp):
    # float64: the cached and the full forward then agree to rounding, step after step
    model64 = tiny_model(dtype=torch.float64)
    clamp64 = FeatureClamp(clamp.config, {s: sae.to(torch.float64) for s, sae in clamp.saes.items()})
    batch = suffix_batch()
    objective = LogitDifference(torch.full((3,), GOAL), torch.full((3,), OTHER), threshold=float("inf"))
    full, cached = (GradientRecovery(model64, clamp64, SLOT.threat(1.0), objective,
                                     AttackConfig(steps=6, reuse_prefix=reuse)).run(batch) for reuse in (False, True))
    torch.testing.assert_close(full.perturbations[0].delta, cached.perturbations[0].delta, atol=1e-9, rtol=0)
    torch.testing.assert_close(full.score, cached.score, atol=1e-9, rtol=0)


def test_found_suffix_replays_in_an_ordinary_forward_and_in_generation(model, clamp):
    batch = suffix_batch()
    objective = LogitDifference(torch.full((3,), GOAL), torch.full((3,), OTHER), threshold=float("inf"))
    result = GradientRecovery(model, clamp, SLOT.threat(1.0), objective, AttackConfig(steps=4)).run(batch)
    (pert,) = result.perturbations
    with torch.no_grad():
        logits, _ = full_forward(model, clamp, batch, [pert], readout=objective.readout(batch))
    torch.testing.assert_close(objective.score(logits, torch.arange(3)), result.score, rtol=1e-4, atol=1e-4)
    prompts = [SLOT.insert(p) for p in PROMPTS]
    g = generate(model, prompts, max_new_tokens=3, defense=clamp, perturbations=[pert])
    assert g.prompt_lengths == tuple(len(p) for p in prompts)
