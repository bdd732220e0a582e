"""Defenses are scoped hooks: none left attached, hook names stable, composition, ordering."""

from __future__ import annotations

import pytest
import torch

from guard.base import ComposedDefense
from guard.registry import DEFENSES
from tests.guard_cases import SITES, build_all, calibrations
from tests.helpers import tiny_sae, tiny_tokens


@pytest.fixture(scope="module")
def defenses():
    saes = {site: tiny_sae("jumprelu", seed=20 + i) for i, site in enumerate(SITES)}
    return build_all(saes, calibrations(saes))


def _attached(model) -> int:
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_no_hook_left_attached_even_when_the_body_raises(model, defenses, name):
    defense = defenses[name]
    names_before = list(model.hook_dict)
    tokens = tiny_tokens()
    clean = model(tokens)
    with defense.applied(model):
        assert _attached(model) == len(defense.sites)
        defended = model(tokens)
    assert _attached(model) == 0
    with pytest.raises(RuntimeError, match="boom"), defense.applied(model):
        model(tokens)
        raise RuntimeError("boom")
    assert _attached(model) == 0
    assert list(model.hook_dict) == names_before  # no module replaced, no hook renamed
    torch.testing.assert_close(model(tokens), clean)
    if name != "error_monitor":  # the monitor's forward is its clamp only; the others change the output
        assert not torch.allclose(defended, clean)


def test_composed_defense_runs_components_in_order(model, defenses):
    tokens = tiny_tokens()
    first, second = defenses["clamp"], defenses["splice"]
    composed = ComposedDefense([first, second])
    assert composed.name == "clamp+splice"
    assert set(composed.sites) == set(first.sites) | set(second.sites)
    resid = torch.randn(2, 3, 16)
    site = SITES[0]
    torch.testing.assert_close(composed.edit(resid, site), second.edit(first.edit(resid, site), site))
    with composed.applied(model):
        model(tokens)
    assert _attached(model) == 0
    assert len(composed.defended_latents()) == len(first.defended_latents()) + len(second.defended_latents())


def test_attack_hook_added_first_is_seen_by_the_defense(model, defenses):
    """Ordering contract: hooks at one site run in the order added, so the defense edits resid + delta."""
    splice = defenses["splice"]
    tokens = tiny_tokens()
    delta = torch.randn(16)

    def recorder(key, seen):
        def record(resid, hook):
            seen[key] = resid.clone()
            return resid
        return record

    attacked, clean = {}, {}
    hooks = [(SITES[1], lambda resid, hook: resid + delta), (SITES[1], recorder("in", attacked))]
    with model.hooks(fwd_hooks=hooks + splice.fwd_hooks() + [(SITES[1], recorder("out", attacked))]):
        model(tokens)
    with model.hooks(fwd_hooks=[(SITES[1], recorder("in", clean))] + splice.fwd_hooks()):
        model(tokens)
    torch.testing.assert_close(attacked["in"], clean["in"] + delta)
    torch.testing.assert_close(attacked["out"], splice.edit(attacked["in"], SITES[1]))


def test_composed_flags_or_over_components(model, defenses):
    monitor = defenses["error_monitor"]
    composed = ComposedDefense([defenses["clamp"], monitor])
    tokens = tiny_tokens()
    assert composed.flags() is None or composed.flags().shape == (len(tokens),)
    with composed.applied(model):
        model(tokens)
        flags = composed.flags()
    assert flags.dtype == torch.bool and flags.shape == (len(tokens),)
    assert torch.equal(flags, monitor.flags())
    composed.reset()
    assert monitor.flags() is None
