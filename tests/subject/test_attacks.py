"""On the real subject (grouped-query attention, rotary, 30 layers): the cached attack forward
matches an ordinary forward, and an attack stays feasible. Uses a seeded random SAE stand-in."""

from __future__ import annotations

import pytest
import torch

from attacks.batch import AttackBatch
from attacks.engine import AttackConfig, GradientRecovery
from attacks.forward import DefendedForward, full_forward
from attacks.objectives import LogitDifference
from attacks.perturbation import Perturbation
from attacks.threat import ThreatModel
from guard.clamp import ClampConfig, FeatureClamp
from tests.subject.shared import shared_subject

SITE = "blocks.12.hook_resid_post"
pytestmark = pytest.mark.subject


@pytest.fixture(scope="module")
def subject_parts():
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    model = shared_subject().model
    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=576, d_sae=2304, dtype="float32")).eval()
    defense = FeatureClamp(ClampConfig(features={SITE: tuple(range(0, 2304, 36))}), {SITE: sae})
    tok = model.tokenizer
    texts = ["When Mary and John went to the store, John gave a drink to",
             "After Anna and Paul arrived at the park, Anna handed a ball to"]
    batch = AttackBatch.from_lists([tok.encode(t, add_special_tokens=False) for t in texts])
    ids = [tok.encode(" " + n, add_special_tokens=False)[0] for n in ("Mary", "John", "Paul", "Anna")]
    objective = LogitDifference(torch.tensor(ids[0::2]), torch.tensor(ids[1::2]), threshold=1e6)
    return model, defense, batch, objective


def test_subject_cached_forward_and_feasible_attack(subject_parts):
    model, defense, batch, objective = subject_parts
    threat = ThreatModel.make(SITE, positions=[-2, -1], budget=0.2, constraint="encoder")
    bound = threat.bind(defense, model)
    fwd = DefendedForward(model, bound, batch, objective.readout(batch))
    rows = torch.arange(batch.size)
    delta = torch.randn(batch.size, batch.width, 576, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = fwd.run(rows, {SITE: delta})
        logits, _ = full_forward(model, defense, batch, [Perturbation(SITE, delta, fwd.masks[SITE])])
    want = logits.gather(1, objective.readout(batch)[..., None].expand(-1, -1, logits.shape[-1]))
    assert torch.equal(out.positions[:, 0], batch.last() - 1)  # each row's prefix came from the KV cache
    assert (out.logits - want).abs().max() < 1e-3

    res = GradientRecovery(model, defense, threat, objective, AttackConfig(steps=3)).run(batch)
    assert res.recovered == 0  # an unreachable goal is never reported
    assert res.orthogonality.max() < 1e-6
    assert (res.relative_norm <= 0.2 * (1 + 1e-5)).all()
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
