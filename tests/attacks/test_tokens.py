"""The token threat on the tiny model: a planted one-token trigger is found, and found suffixes replay as text."""

from __future__ import annotations

import pytest
import torch

from attacks.batch import AttackBatch
from attacks.objectives import LogitDifference
from attacks.runner import run_cascade
from attacks.suffix import SuffixSlot
from attacks.threat import ThreatModel
from attacks.tokens import (
    TokenConfig,
    TokenSearch,
    replay_tokens,
    retokenizes,
    suffix_token_ids,
    token_stages,
)
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import MERGED, WordTokenizer, tiny_model, tiny_sae

TRIGGER, GOAL, OTHER = 23, 7, 8
PROMPTS = [[3, 5, 9, 2], [6, 9, 10], [1, 2, 3, 5, 9]]
SLOT = SuffixSlot(n_tokens=3, keep=0, placeholder=1)


@pytest.fixture()
def planted():
    """A tiny model in which the last input token TRIGGER makes GOAL win over OTHER by a wide margin."""
    model = tiny_model()
    with torch.no_grad():
        u = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
        u = u / u.norm()
        model.embed.W_E[TRIGGER] = 40 * u
        model.unembed.W_U[:, GOAL] = 8 * u
        model.unembed.W_U[:, OTHER] = -8 * u
    model.tokenizer = WordTokenizer()
    site = "blocks.0.hook_resid_post"
    clamp = FeatureClamp(ClampConfig(features={site: (1, 2, 4)}, mode="multiply", value=3.0),
                         {site: tiny_sae("standard", seed=2)})
    seqs = [SLOT.insert(p) for p in PROMPTS]
    batch = AttackBatch.from_lists(seqs)
    objective = LogitDifference(torch.full((3,), GOAL), torch.full((3,), OTHER), threshold=3.0)
    return model, clamp, batch, objective


def test_token_attack_finds_a_planted_one_token_trigger(planted):
    model, clamp, batch, objective = planted
    threat = SLOT.threat(1.0)
    assert not run_cascade(model, clamp, threat, objective, batch, token_stages(0)).result.success.any()
    # two steps of 8 candidates: blind draws would hit the trigger's slot and token for all three
    # rows with probability ~1e-3; the gradient ranks it first
    result = TokenSearch(model, clamp, threat, objective, TokenConfig(steps=2, candidates=8, top_k=4)).run(batch)
    assert result.success.all() and (result.steps <= 2).all()
    ids, exact = suffix_token_ids(model, batch, result.perturbations[0])
    assert exact.all()
    assert ids[torch.arange(3), batch.lengths - 1].tolist() == [TRIGGER] * 3  # where the trigger acts
    assert replay_tokens(model, clamp, objective, batch, result.perturbations[0]).all()
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_candidates_that_would_not_retokenize_are_never_taken(planted):
    model, clamp, batch, _ = planted
    tok = model.tokenizer
    assert retokenizes(tok, [[3, 5], [3, 4], [MERGED]]) == [True, False, True]
    assert retokenizes(None, [[3, 4]]) == [True]
    # an objective that wants token 4 right after token 3 can only be met by a non-replaying suffix
    slot = SuffixSlot(n_tokens=2, keep=0, placeholder=3)
    b = AttackBatch.from_lists([slot.insert(p) for p in PROMPTS])
    attack = TokenSearch(model, clamp, slot.threat(1.0), LogitDifference(torch.full((3,), 4), torch.full((3,), 5)),
                         TokenConfig(steps=5, candidates=16, top_k=8))
    result = attack.run(b)
    ids, exact = suffix_token_ids(model, b, result.perturbations[0])
    seqs = [ids[i, : int(b.lengths[i])].tolist() for i in range(b.size)]
    assert exact.all() and all(retokenizes(tok, seqs))
    assert not any(tok.all_special_ids[0] in s[len(p):] for s, p in zip(seqs, PROMPTS, strict=True))


def test_token_attack_checks_its_threat_and_input(planted):
    model, clamp, batch, objective = planted
    with pytest.raises(ToolkitError, match="blocks.0.hook_resid_pre"):
        TokenSearch(model, clamp, ThreatModel.make("blocks.1.hook_resid_pre", constraint="none"), objective)
    with pytest.raises(ToolkitError, match="candidates"):
        TokenConfig(candidates=0)
    bad = AttackBatch.from_lists([SLOT.insert([3, 4, 9])] * 3)  # [3, 4] merges: this prompt is no text
    with pytest.raises(ToolkitError, match="decode/encode"):
        TokenSearch(model, clamp, SLOT.threat(1.0), objective, TokenConfig(steps=1)).run(bad)
