"""Randomized defenses: the attacker's gradient is the mean over its draws (EOT), the judge is the
majority of the defense's own draws, and the error dropout is the splice at scale ``keep`` on average."""

from __future__ import annotations

import pytest
import torch

from attacks.batch import AttackBatch
from attacks.engine import AttackConfig, GradientRecovery
from attacks.forward import full_forward
from attacks.objectives import LogitDifference
from attacks.runner import default_stages, run_cascade
from attacks.threat import ThreatModel
from certify.selftest import verify_defense
from guard.base import Defense, DefenseConfig
from guard.error_dropout import ErrorDropout, ErrorDropoutConfig
from guard.errors import ToolkitError
from guard.splice import ReconstructionSplice, SpliceConfig
from tests.helpers import D_MODEL, tiny_model, tiny_sae, tiny_tokens

LAST = "blocks.1.hook_resid_post"


class ScriptedGain(Defense):
    """``resid * gain``, the gains of stream i given in order (one per call, cycling; 1 in a stream not
    given): a randomized defense whose every draw is known."""

    def __init__(self, streams: dict[int, list[float]], draws: int) -> None:
        self.config, self.streams, self._draws = DefenseConfig(), streams, draws
        self.stream, self.calls = 0, 0

    @property
    def sites(self) -> tuple[str, ...]:
        return (LAST,)

    @property
    def draws(self) -> int:
        return self._draws

    def draw(self, index: int) -> None:
        self.stream, self.calls = index, 0

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        gains = self.streams.get(self.stream, [1.0])
        gain, self.calls = gains[self.calls % len(gains)], self.calls + 1
        return resid * gain


def _case(n: int = 4):
    model = tiny_model(seed=0)
    batch = AttackBatch.from_lists(tiny_tokens(n, 6, seed=1).tolist())
    threat = ThreatModel.make(LAST, budget=0.5, constraint="none")
    return model, batch, threat


def _first_grad_norm(model, defense, batch, threat) -> torch.Tensor:
    objective = LogitDifference(torch.full((batch.size,), 3), torch.full((batch.size,), 7), threshold=1e9)
    return GradientRecovery(model, defense, threat, objective, AttackConfig(steps=1)).run(batch).grad_norm


def test_the_attack_gradient_is_the_mean_over_its_draws():
    model, batch, threat = _case()
    plain = _first_grad_norm(model, ScriptedGain({-1: [1.0]}, draws=1), batch, threat)
    # stream -1 (the seed-0 attacker's): gains +1, -1, -1 on the first step's three forwards. The final
    # LayerNorm makes the logits' gradient odd in the gain's sign, so the mean is -1/3 of the plain one.
    eot = _first_grad_norm(model, ScriptedGain({-1: [1.0, -1.0, -1.0]}, draws=3),
                           batch, threat)
    assert plain.min() > 0
    torch.testing.assert_close(eot, plain / 3, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("judged, recovered", [((1.0, -1.0, -1.0), False), ((1.0, -1.0, 1.0), True)])
def test_the_judge_is_the_majority_of_the_defense_draws(judged, recovered):
    model, batch, threat = _case()
    with torch.no_grad():
        up, _ = full_forward(model, ScriptedGain({0: [1.0]}, 1), batch, [], readout=batch.last()[:, None])
        down, _ = full_forward(model, ScriptedGain({0: [-1.0]}, 1), batch, [], readout=batch.last()[:, None])
    gain = (up - down)[:, 0]
    target, other = gain.argmax(-1), gain.argmin(-1)
    rows = torch.arange(batch.size)
    score = {g: x[:, 0][rows, target] - x[:, 0][rows, other] for g, x in ((1.0, up), (-1.0, down))}
    objective = LogitDifference(target, other, threshold=(score[1.0] + score[-1.0]) / 2)  # +1 passes, -1 blocks
    defense = ScriptedGain({i: [g] for i, g in enumerate(judged)}, draws=3)
    zero = ThreatModel.make(LAST, budget=0.0, constraint="none")
    outcome = run_cascade(model, defense, zero, objective, batch, default_stages(steps=2))
    assert outcome.result.success.tolist() == [recovered] * batch.size
    assert "verification_disagrees" not in outcome.result.flags


def _dropout(keep: float, **kw) -> tuple[ErrorDropout, dict]:
    saes = {LAST: tiny_sae("jumprelu", seed=3)}
    return ErrorDropout(ErrorDropoutConfig(features={LAST: (1, 4)}, keep=keep, **kw), saes), saes


def test_error_dropout_draws_are_reproducible_and_average_to_the_splice():
    defense, saes = _dropout(0.5)
    resid = torch.randn(64, 8, D_MODEL, generator=torch.Generator().manual_seed(0))
    defense.draw(0)
    first = defense.edit(resid, LAST)
    again = defense.edit(resid, LAST)  # the stream goes on: a new mask
    defense.draw(0)
    torch.testing.assert_close(defense.edit(resid, LAST), first, rtol=0, atol=0)
    assert not torch.allclose(again, first)
    defense.draw(-1)  # an attacker's stream differs from the judge's
    assert not torch.allclose(defense.edit(resid, LAST), first)
    splice = ReconstructionSplice(SpliceConfig(features={LAST: (1, 4)}, error_scale=0.5), saes)
    draws = torch.stack([defense.edit(resid, LAST) for _ in range(200)])
    error = resid - splice.edit(resid, LAST)  # half the error: the part a mask of mean 1/2 drops on average
    torch.testing.assert_close(draws.mean(0), splice.edit(resid, LAST), atol=0.15 * float(error.abs().max()), rtol=0)
    assert defense.draws == 3


def test_error_dropout_keep_one_is_the_clamp_and_bad_settings_are_refused():
    defense, saes = _dropout(1.0)
    resid = torch.randn(2, 3, D_MODEL, generator=torch.Generator().manual_seed(1))
    clamp_only = ReconstructionSplice(SpliceConfig(features={LAST: (1, 4)}, error_scale=1.0), saes)
    torch.testing.assert_close(defense.edit(resid, LAST), clamp_only.edit(resid, LAST))
    with pytest.raises(ToolkitError, match="keep"):
        _dropout(1.5)
    with pytest.raises(ToolkitError, match="odd"):
        _dropout(0.5, draws=2)


def test_the_cascade_finds_the_planted_recovery_against_the_randomized_defense():
    result = verify_defense("error_dropout")
    assert result.status == "verified", result.detail
