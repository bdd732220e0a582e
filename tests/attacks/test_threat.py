"""Threat models: normalisation at the boundary, positions, budgets, binding, registries."""

from __future__ import annotations

import pytest
import torch

from attacks.batch import AttackBatch
from attacks.engine import AttackConfig
from attacks.registry import ATTACKS, attack_config_from_dict
from attacks.threat import (
    CONSTRAINTS,
    CrossLayer,
    CrossLayerMethod,
    EncoderOrthogonal,
    NoConstraint,
    Norm,
    PositionKind,
    Positions,
    Scope,
    ThreatModel,
    make_constraint,
)
from guard.base import NoDefense
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae

SITE = "blocks.0.hook_resid_post"


def _batch() -> AttackBatch:
    # rows of length 5, 3, 6; answers start at 3, 2, 4
    return AttackBatch.from_lists([[1, 2, 3, 4, 5], [6, 7, 8], [1, 1, 1, 1, 1, 1]], prompt_lengths=[3, 2, 4])


def test_strings_normalised_once():
    t = ThreatModel.make(SITE, positions="LAST", norm="Linf", budget=2, relative=False, scope="example",
                         constraint="Encoder")
    assert t.norm is Norm.LINF and t.scope is Scope.EXAMPLE and t.positions.kind is PositionKind.LAST
    assert isinstance(t.constraint, EncoderOrthogonal) and t.budget == 2.0 and t.sites == (SITE,)
    c = make_constraint({"name": "cross_layer", "method": "lagrangian", "drift_threshold": 0.1})
    assert isinstance(c, CrossLayer) and c.method is CrossLayerMethod.LAGRANGIAN


@pytest.mark.parametrize(
    "kwargs, word",
    [({"norm": "l3"}, "l2"), ({"constraint": "encoder_orth"}, "encoder"), ({"positions": "lst"}, "last"),
     ({"constraint": {"name": "cross_layer", "method": "jacobean"}}, "jacobian")],
)
def test_unknown_names_list_closest(kwargs, word):
    with pytest.raises(ToolkitError, match=word):
        ThreatModel.make(SITE, **kwargs)


@pytest.mark.parametrize("constraint", ["none", "encoder", "cross_layer", {"name": "cross_layer", "method": "lagrangian"}])
def test_threat_round_trip(constraint):
    t = ThreatModel.make([SITE, "blocks.1.hook_resid_pre"], positions=[-1, 2], norm="linf", budget=0.3,
                         constraint=constraint)
    assert ThreatModel.from_dict(t.to_dict()) == t


def test_constraint_registry_round_trip():
    for name, cls in CONSTRAINTS.items():
        c = cls()
        assert make_constraint(c.to_dict()) == c and c.name == name


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_registry_round_trip(name):
    cfg = ATTACKS[name].config(steps=7, step_size=0.3, restarts=1, seed=4)
    assert attack_config_from_dict(cfg.to_dict()) == cfg


def test_bad_configs_raise():
    with pytest.raises(ToolkitError):
        AttackConfig(optimizer="lbfgs")
    with pytest.raises(ToolkitError):
        ThreatModel.make(SITE, budget=-1)
    with pytest.raises(ToolkitError):
        ThreatModel.make([SITE, SITE])


def test_positions_resolve_never_touch_pads():
    b = _batch()
    last = Positions.make("last").resolve(b)
    assert last.nonzero().tolist() == [[0, 4], [1, 2], [2, 5]]
    allp = Positions.make("all").resolve(b)
    assert torch.equal(allp, b.valid())
    ans = Positions.make("answer").resolve(b)  # [prompt_len - 1, length - 1)
    assert ans.nonzero().tolist() == [[0, 2], [0, 3], [1, 1], [2, 3], [2, 4]]
    prompt = Positions.make("prompt").resolve(b)  # [1, prompt_len)
    assert prompt.nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [2, 1], [2, 2], [2, 3]]
    s = Positions.make([0, -1]).resolve(b)
    assert s.nonzero().tolist() == [[0, 0], [0, 4], [1, 0], [1, 2], [2, 0], [2, 5]]
    with pytest.raises(ToolkitError, match="no token"):
        Positions.make([5]).resolve(b)  # row 1 has 3 tokens
    with pytest.raises(ToolkitError, match="answer"):
        Positions.make("answer").resolve(AttackBatch.from_lists([[1, 2]]))


def test_relative_and_absolute_radius():
    model, sae = tiny_model(), tiny_sae("jumprelu")
    defense = FeatureClamp(ClampConfig(features={SITE: (1, 2)}), {SITE: sae})
    resid = torch.randn(3, 6, 16)
    mask = _batch().valid()
    rel = ThreatModel.make(SITE, budget=0.5).bind(defense, model)
    assert torch.allclose(rel.radius(SITE, resid, mask), 0.5 * resid.norm(dim=-1))
    per_ex = ThreatModel.make(SITE, budget=0.5, scope="example").bind(defense, model)
    want = 0.5 * (resid.norm(dim=-1).square() * mask).sum(1).sqrt()
    assert torch.allclose(per_ex.radius(SITE, resid, mask), want)
    absolute = ThreatModel.make(SITE, budget=3.0, relative=False).bind(defense, model)
    assert absolute.radius(SITE, resid, mask).eq(3.0).all()
    override = absolute.radius(SITE, resid, mask, budget=torch.tensor([1.0, 2.0, 3.0]))
    assert override[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_bind_checks_sites_and_constraint():
    model, sae = tiny_model(), tiny_sae("jumprelu")
    defense = FeatureClamp(ClampConfig(features={SITE: (1, 2)}), {SITE: sae})
    with pytest.raises(ToolkitError, match="hook_resid_psot"):
        ThreatModel.make("blocks.0.hook_resid_psot").bind(defense, model)
    with pytest.raises(ToolkitError, match="residual-stream"):
        ThreatModel.make("blocks.0.attn.hook_z").bind(defense, model)
    with pytest.raises(ToolkitError, match="pins no latents"):
        ThreatModel.make("blocks.1.hook_resid_post", constraint="encoder").bind(defense, model)
    bound = ThreatModel.make("blocks.1.hook_resid_post", constraint="none").bind(NoDefense(), model)
    assert bound.projectors["blocks.1.hook_resid_post"] is None
    assert isinstance(bound.constraint, NoConstraint)
    # only latents at or after the first perturbed site are monitored
    two = FeatureClamp(ClampConfig(features={SITE: (1,), "blocks.1.hook_resid_post": (2,)}),
                       {SITE: sae, "blocks.1.hook_resid_post": tiny_sae("standard", seed=1)})
    late = ThreatModel.make("blocks.1.hook_resid_pre", constraint="none").bind(two, model)
    assert [d.site for d in late.monitored] == ["blocks.1.hook_resid_post"]
