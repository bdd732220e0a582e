"""The reference-style loop the bench compares against, with and without the engine's stopping rule."""

from __future__ import annotations

import torch

from attacks.batch import AttackBatch
from attacks.objectives import LogitDifference
from attacks.reference import reference_attack
from guard.clamp import ClampConfig, FeatureClamp
from tests.helpers import tiny_model, tiny_sae

SITE = "blocks.0.hook_resid_post"


def run(threshold: float, stop_margin: float | None, steps: int = 6):
    model = tiny_model()
    for p in model.parameters():
        p.requires_grad_(False)
    sae = tiny_sae("jumprelu", seed=3)
    features = (0, 1, 2)
    defense = FeatureClamp(ClampConfig(features={SITE: features}), {SITE: sae})
    batch = AttackBatch.from_lists([[1, 2, 3, 4], [5, 6, 7]], pad_id=0)
    objective = LogitDifference(torch.tensor([3, 4]), torch.tensor([5, 6]), threshold=threshold)
    return reference_attack(model, defense, SITE, sae.W_enc[:, list(features)].detach(), objective, batch,
                            budget=2.0, steps=steps, lr=0.1, stop_margin=stop_margin)


def test_without_a_stop_every_example_takes_every_step():
    result = run(threshold=-1e9, stop_margin=None)
    assert result.steps.tolist() == [6, 6] and result.success.all()


def test_the_stop_rule_ends_an_example_at_its_first_success():
    done = run(threshold=-1e9, stop_margin=1e-2)  # already succeeds before any step
    assert done.steps.tolist() == [0, 0] and done.success.all()
    never = run(threshold=1e9, stop_margin=1e-2)  # cannot succeed: runs to the end as without a stop
    assert never.steps.tolist() == [6, 6] and not never.success.any()
