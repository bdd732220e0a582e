"""The one guard test on the real subject (no SAEs needed): sinks left out, a dense direction defense."""

from __future__ import annotations

import math

import pytest
import torch

from tests.subject.shared import shared_subject

pytestmark = pytest.mark.subject

SITE = "blocks.12.hook_resid_post"


@pytest.fixture(scope="module")
def subject():
    return shared_subject()


def test_sinks_left_out_and_direction_ablation_on_the_subject(subject):
    from experiments.subject.chat import chat_prompt
    from guard.calibration import collect_resid, last_token_resid
    from guard.direction import DirectionAblation, DirectionConfig, calibrate_directions
    from guard.texts import BEHAVIOUR_REQUESTS, BENIGN_PARAGRAPHS, CONTRAST_REQUESTS
    from guard.utility import measure_utility

    model = subject.model
    tokens = model.to_tokens(BENIGN_PARAGRAPHS[0], prepend_bos=False)[:, :48]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=SITE)
    norms = cache[SITE][0].norm(dim=-1)
    assert norms[0] > 20 * norms[1:].median()  # position 0 is the attention sink at this depth
    benign = collect_resid(model, tokens, [SITE])[SITE]
    assert benign.shape[0] == tokens.shape[1] - 1 and benign.norm(dim=-1).max() < 5 * norms[1:].median()

    def prompts(requests):
        return [model.to_tokens(chat_prompt(r), prepend_bos=False)[0] for r in requests[:4]]

    calib = calibrate_directions(last_token_resid(model, prompts(BEHAVIOUR_REQUESTS), [SITE]),
                                 last_token_resid(model, prompts(CONTRAST_REQUESTS), [SITE]))
    ablate = DirectionAblation(DirectionConfig(), calibration=calib)
    seen = {}
    hooks = ablate.fwd_hooks() + [(SITE, lambda resid, hook: seen.setdefault("out", resid.detach()))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens, return_type=None)
    direction = ablate.basis[SITE][:, 0]
    along = seen["out"][0] @ direction
    assert along[1:].abs().max() < 1e-3 * norms[1:].median()  # removed from every ordinary token
    torch.testing.assert_close(seen["out"][0, 0], cache[SITE][0, 0])  # the sink passes through
    result = measure_utility(model, ablate, tokens)
    assert math.isfinite(result.delta_ce) and result.kl >= 0
