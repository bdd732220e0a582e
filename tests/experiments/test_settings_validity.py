"""Valid samples: present undefended and absent defended, with the defense scoped to the run."""

from __future__ import annotations

import json

import torch

from experiments.settings import evaluate_validity, score_samples, select_latents, validity
from guard.base import NoDefense
from guard.clamp import ClampConfig, FeatureClamp
from tests.helpers import tiny_model, tiny_sae
from tests.settings_cases import random_samples

SITE = "blocks.1.hook_resid_post"


def _no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_no_defense_makes_nothing_valid():
    model = tiny_model()
    samples = random_samples(model, n=5)
    assert evaluate_validity(model, NoDefense(), samples) == [False] * 5


def test_valid_means_present_then_absent():
    model, sae = tiny_model(), tiny_sae("jumprelu")
    samples = random_samples(model, n=10, seed=3)
    # Half the samples flipped to a target the model does not predict: never present, never valid.
    samples = [s if i % 2 else type(s)(id=s.id, prompt="", tokens=s.tokens, target=s.foils[0], foils=(s.target,))
               for i, s in enumerate(samples)]
    selection = select_latents(model, sae, SITE, samples, k=8)
    clamp = FeatureClamp(selection.clamp_config(), {SITE: sae})
    result = validity(model, clamp, samples, batch_size=3)
    clean = score_samples(model, samples)
    defended = score_samples(model, samples, defense=clamp)
    expected = [bool(c > 0 and d <= 0) for c, d in zip(clean, defended, strict=True)]
    assert list(result.valid) == expected == evaluate_validity(model, clamp, samples)
    assert result.n_present == 5 and not any(result.valid[0::2])
    assert result.n_valid == sum(expected) > 0  # the strongest latents do flip some samples
    torch.testing.assert_close(torch.tensor(result.score_defended), defended)
    assert json.loads(json.dumps(result.to_dict()))["n_valid"] == result.n_valid
    assert _no_hooks_left(model)


def test_defense_that_breaks_every_sample():
    model, sae = tiny_model(), tiny_sae()
    samples = random_samples(model, n=4)
    # Multiplying every latent by -50 swamps the residual: whatever the model showed is gone.
    everything = FeatureClamp(ClampConfig(features={SITE: tuple(range(32))}, mode="multiply", value=-50.0),
                              {SITE: sae})
    defended = score_samples(model, samples, defense=everything)
    assert evaluate_validity(model, everything, samples) == [bool(d <= 0) for d in defended]
    assert _no_hooks_left(model)
