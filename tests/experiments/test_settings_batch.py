"""Batching and the shared behaviour score: padding is invisible, the margin means what it says."""

from __future__ import annotations

import pytest
import torch

from experiments.settings.batch import batches, collate, final_logits
from experiments.settings.sample import Sample, behaviour_score, present
from experiments.settings.validity import score_samples
from guard.errors import ToolkitError
from tests.helpers import tiny_model
from tests.settings_cases import random_samples


def _sample(i, length, target, foils=()):
    return Sample(id=f"s{i}", prompt="", tokens=tuple(range(1, length + 1)), target=target, foils=foils)


def test_collate_right_pads_and_records_lengths():
    batch = collate([_sample(0, 3, 5), _sample(1, 6, 7, (2, 3)), _sample(2, 1, 9, (4,))], pad_id=0)
    assert batch.tokens.shape == (3, 6)
    assert batch.lengths.tolist() == [3, 6, 1]
    assert batch.last.tolist() == [2, 5, 0]
    assert batch.tokens[0, 3:].eq(0).all() and batch.tokens[0, :3].tolist() == [1, 2, 3]
    assert batch.foils.tolist() == [[-1, -1], [2, 3], [4, -1]]
    assert batch.mask.sum(1).tolist() == [3, 6, 1]
    assert [len(b) for b in batches([_sample(i, 2, 5) for i in range(5)], 2)] == [2, 2, 1]


def test_sample_rejects_empty_prompt_and_target_among_foils():
    with pytest.raises(ToolkitError, match="no tokens"):
        Sample(id="x", prompt="", tokens=(), target=1)
    with pytest.raises(ToolkitError, match="also a foil"):
        Sample(id="x", prompt="", tokens=(1,), target=1, foils=(1, 2))


def test_final_logits_equal_a_full_forward_and_ignore_padding():
    model = tiny_model()
    samples = random_samples(model, n=5, seed=1)
    batch = collate(samples)
    got = final_logits(model, batch)
    with torch.no_grad():
        full = model(batch.tokens)
    expected = full[torch.arange(len(batch)), batch.last]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for i, s in enumerate(samples):  # each prompt alone, unpadded
        alone = model(torch.tensor([s.tokens]))[0, -1]
        torch.testing.assert_close(got[i], alone, rtol=1e-4, atol=1e-4)


def test_scores_do_not_depend_on_batch_size():
    model = tiny_model()
    samples = random_samples(model, n=5, seed=2)
    torch.testing.assert_close(score_samples(model, samples, batch_size=1),
                               score_samples(model, samples, batch_size=4), rtol=1e-4, atol=1e-4)
    assert (score_samples(model, samples) > 0).all()  # target = top-1 by construction


def test_out_of_vocabulary_tokens_are_a_clear_error():
    model = tiny_model()
    with pytest.raises(ToolkitError, match="vocabulary"):
        final_logits(model, collate([_sample(0, 3, 999)]))


def test_margin_matches_its_definition_per_kind_of_sample():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 20, generator=gen)
    samples = [
        _sample(0, 2, 3, (7,)),  # IOI: logit difference
        _sample(1, 2, 4, (5, 6, 8)),  # multiple choice
        _sample(2, 2, 9),  # free recall: against every other token
        _sample(3, 2, int(logits[3].argmax())),  # free recall, top-1 by construction
    ]
    batch = collate(samples)
    score = behaviour_score(logits, batch)
    assert score[0] == pytest.approx(float(logits[0, 3] - logits[0, 7]))
    assert score[1] == pytest.approx(float(logits[1, 4] - logits[1, [5, 6, 8]].max()))
    others = torch.cat([logits[2, :9], logits[2, 10:]])
    assert score[2] == pytest.approx(float(logits[2, 9] - others.max()))
    flags = present(score)
    assert flags[3] and bool(flags[2]) == (int(logits[2].argmax()) == 9)
    # Raising the target's logit above everything makes every behaviour present.
    boosted = logits.clone()
    boosted[torch.arange(4), batch.target] += 100
    assert present(behaviour_score(boosted, batch)).all()


def test_score_is_differentiable_in_the_logits():
    logits = torch.randn(2, 10, requires_grad=True)
    batch = collate([_sample(0, 2, 1, (2,)), _sample(1, 2, 3)])
    behaviour_score(logits, batch).sum().backward()
    assert logits.grad[0, 1] == 1 and logits.grad[0, 2] == -1
    assert logits.grad[1, 3] == 1 and logits.grad[1].abs().sum() == 2


def test_score_rejects_mismatched_logits():
    with pytest.raises(ToolkitError, match="batch"):
        behaviour_score(torch.zeros(3, 10), collate([_sample(0, 2, 1)]))
