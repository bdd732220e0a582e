"""The standard certify suite's plan logic on the tiny model (no real subject)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest

import experiments.suites
from attacks.runner import STAGE_NAMES
from certify.config import SuiteConfig
from certify.suites import get_suite
from certify.summary import sample_outcomes, summarize
from experiments.settings import SETTINGS, IOIConfig, IOISetting, register_setting
from experiments.suites import (
    DEFAULTS,
    SETTING_DEFAULTS,
    StandardUnit,
    build_plan,
    buildable_defenses,
    check_config,
    setting_overrides,
    usable_defenses,
)
from guard.errors import ToolkitError
from guard.registry import DEFENSES
from tests.guard_cases import SITES
from tests.helpers import WordTokenizer, tiny_model, tiny_sae, tiny_tokens
from tests.settings_cases import random_samples

SITE = SITES[0]


@pytest.fixture(scope="module")
def tiny_plan():
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=20, seed=5)

    def samples(setting: str, n_select: int, n: int):
        return pool[:n_select], pool[n_select : n_select + n]

    config = SuiteConfig(suite="standard", settings=("ioi",), budgets=(0.0, 2.0), n=10,
                         options=(("attack_batch", 4), ("n_latents", 6), ("n_select", 8), ("site", SITE),
                                  ("steps", 8)))
    plan = build_plan(config, model, saes, samples, benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                      contrast=list(tiny_tokens(6, 5, seed=4)))
    return model, plan


def test_plan_covers_every_registered_defense(tiny_plan):
    _, plan = tiny_plan
    assert set(plan.config.defenses) == set(DEFENSES) and plan.config.defenses[0] == "clamp"
    assert buildable_defenses()[0] == "clamp" and plan.reference == "clamp"
    assert len(plan.units) == len(DEFENSES)  # one unit per defense and setting, every budget inside
    assert all(u.budgets == (0.0, 2.0) for u in plan.units)
    assert all(isinstance(u, StandardUnit) for u in plan.units)
    assert set(plan.utility) == {(d, "ioi") for d in DEFENSES}
    assert all(math.isfinite(v["delta_ce"]) for v in plan.utility.values())
    # a detector's cost is also the benign text it flags; the others have delta CE alone
    assert all(set(v) == ({"delta_ce", "flag_rate"} if d == "error_monitor" else {"delta_ce"})
               for (d, _), v in plan.utility.items())
    assert 0 <= plan.utility[("error_monitor", "ioi")]["flag_rate"] <= 1
    assert DEFAULTS["settings"] == ("ioi", "recall", "unlearning") and DEFAULTS["budgets"][0] == 0.0


def test_units_give_summary_ready_records(tiny_plan):
    model, plan = tiny_plan
    units = [u for u in plan.units if u.defense in ("clamp", "direction_ablation", "error_monitor")]
    records = [r for u in units for r in plan.evaluate_unit(u)]
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    assert any(r["valid"] and r["defense"] == "clamp" for r in records)
    assert any(r["recovered"] for r in records if r["budget"] > 0)
    outcomes = sample_outcomes(records)
    assert len(outcomes) == 10 * len(units) * 2  # every evaluated sample once per unit and budget
    for r in records:
        assert r["valid"] in (True, False)
        if r["valid"] and r["budget"] == 0.0:
            assert r["recovered"] is False  # valid = absent defended; nothing moves at budget 0
        if r["valid"] and r["defense"] == "clamp":
            assert r["constraint"] == "encoder"
            if r["recovered"]:
                assert r["drift"] < 1e-4
        if r["defense"] == "direction_ablation":
            assert r["constraint"] == "none"  # pins no latent at the site
        if r["valid"]:
            assert r["stage"] in (*STAGE_NAMES, "none") and (r["stage"] == "none") == (not r["recovered"])
            assert r["claim_refused"] is False
            if r["budget"] > 0:
                assert r["grad_norm"] is not None and r["grad_norm"] >= 0
            assert (r["binds"] is None) == (r["defense"] == "clamp")
        if r["valid"] and r["defense"] == "error_monitor":
            assert r["flagged"] in (True, False)
            assert not (r["recovered"] and r["flagged"])  # a flagged input is no recovery


def _clamp_plan(n: int):
    """The plain clamp alone on IOI at budget 2, over 12 tiny samples of which 8 select."""
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=12, seed=5)
    config = SuiteConfig(suite="standard", settings=("ioi",), defenses=("clamp",), budgets=(2.0,), n=n,
                         options=(("n_latents", 6), ("n_select", 8), ("site", SITE), ("steps", 2)))
    return build_plan(config, model, saes, lambda s, k, n: (pool[:k], pool[k : k + n]),
                      benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                      contrast=list(tiny_tokens(6, 5, seed=4)))


def test_budget_zero_is_always_on_the_grid():
    assert [u.budgets for u in _clamp_plan(4).units] == [(0.0, 2.0)]


def test_a_setting_with_fewer_samples_than_n_says_so(tiny_plan):
    plan = _clamp_plan(6)
    assert "ioi has 4 samples after the 8 kept for selection: it evaluates 4, not 6" in plan.notes
    assert not any("kept for selection: it evaluates" in note for note in tiny_plan[1].notes)


def test_the_clamp_choice_is_on_record_and_the_utility_rule_is_applied():
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=12, seed=5)

    def plan_with(*options):
        config = SuiteConfig(suite="standard", settings=("ioi",), defenses=("clamp",), budgets=(2.0,), n=4,
                             options=(("n_latents", 6), ("n_select", 8), ("site", SITE), ("steps", 2), *options))
        return build_plan(config, model, saes, lambda s, k, n: (pool[:k], pool[k : k + n]),
                          benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                          contrast=list(tiny_tokens(6, 5, seed=4)))

    plain = plan_with().provenance["clamp_selection"]["ioi"]
    assert plain["max_delta_ce"] is None and [p["n_latents"] for p in plain["points"]] == [6]
    assert len(plain["selection"]["density"]) == len(plain["selection"]["features"])  # measured anyway
    ruled = plan_with(("max_density", 0.5), ("max_delta_ce", 10.0))
    choice = ruled.provenance["clamp_selection"]["ioi"]
    assert [p["n_latents"] for p in choice["points"]] == [4, 6] and choice["meets_budget"]
    assert all(d <= 0.5 for d in choice["selection"]["density"])
    assert ruled.fingerprint["selected"]["ioi"] == choice["selection"]["features"]
    assert any(n.startswith("ioi clamp:") and "<= 0.5 of benign tokens" in n for n in ruled.notes)
    with pytest.raises(ToolkitError, match="max_density must be in"):
        plan_with(("max_density", 2.0))


def test_bad_options_and_registration():
    model = tiny_model()
    with pytest.raises(ToolkitError):
        build_plan(SuiteConfig(options=(("nope", 1),)), model, {}, lambda *a: ([], []))
    with pytest.raises(ToolkitError):
        build_plan(SuiteConfig(defenses=("splice",)), model, {}, lambda *a: ([], []))
    assert get_suite("standard").resolve().__name__ == "build_standard"


def test_a_defense_the_subject_cannot_carry_is_left_out_or_refused():
    model = tiny_model()
    one = {SITES[1]: tiny_sae("jumprelu", seed=3)}  # the last site: no SAE downstream for a closed loop
    config, _ = check_config(SuiteConfig(suite="standard", options=(("site", SITES[1]),)))
    kept, skipped = usable_defenses(config, model, one, [SITES[1]], requested=False)
    assert set(skipped) == {"closed_loop", "bottleneck"} and "no SAE site after" in skipped["closed_loop"]
    assert "no SAE site after" in skipped["bottleneck"]
    assert "closed_loop" not in kept.defenses and "clamp" in kept.defenses
    with pytest.raises(ToolkitError, match="'closed_loop' cannot run on this subject"):
        usable_defenses(dataclasses.replace(config, defenses=("clamp", "closed_loop")), model, one, [SITES[1]],
                        requested=True)
    both = {site: tiny_sae("jumprelu", seed=3 + i) for i, site in enumerate(SITES)}
    assert usable_defenses(config, model, both, [SITES[0]], requested=False)[1] == {}
    # a defense that cannot run at one setting's site is left out of the run
    assert set(usable_defenses(config, model, both, SITES, requested=False)[1]) == {"closed_loop", "bottleneck"}


def test_every_threat_rung_runs_on_the_tiny_plan(monkeypatch):
    model = tiny_model()
    model.tokenizer = WordTokenizer(merge=False)
    monkeypatch.setattr(experiments.suites, "PLACEHOLDERS", (" t1",))
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=20, seed=5)
    config = SuiteConfig(suite="standard", settings=("ioi",), defenses=("clamp",), budgets=(0.0, 2.0), n=10,
                         threats=("residual", "embedding", "tokens"),
                         options=(("attack_batch", 8), ("n_latents", 6), ("n_select", 8), ("site", SITE),
                                  ("steps", 4), ("suffix_tokens", 2), ("embedding_budget", 4.0),
                                  ("token_steps", 2), ("token_candidates", 8), ("token_top_k", 8)))
    plan = build_plan(config, model, saes, lambda s, k, n: (pool[:k], pool[k : k + n]),
                      benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                      contrast=list(tiny_tokens(6, 5, seed=4)))
    units = {u.threat: u for u in plan.units}
    assert set(units) == {"residual", "embedding", "tokens"}
    assert units["embedding"].budgets == (0.0, 4.0) and units["tokens"].budgets == (0.0, 1.0)
    assert '"threat"' not in units["residual"].key and '"threat"' in units["tokens"].key
    assert any(note.startswith("threat tokens: 2 suffix tokens, GCG 2 + 6 steps x 8 candidates") for note in plan.notes)
    records = {t: plan.evaluate_unit(u) for t, u in units.items()}
    for threat, recs in records.items():
        assert {r["threat"] for r in recs} == {threat}
        attacked = [r for r in recs if r["valid"]]
        assert attacked and not any(r["recovered"] for r in attacked if r["budget"] == 0)
        if threat != "residual":
            assert {r["site"] for r in recs} == {"blocks.0.hook_resid_pre"} and {r["constraint"] for r in recs} == {"none"}
    tokens = [r for r in records["tokens"] if r["valid"]]
    assert all(len(r["suffix_ids"]) == 2 for r in tokens)
    assert all(r["replay_verified"] for r in tokens if r["recovered"])
    assert any(r["recovered"] for r in records["embedding"])  # a free 4x-norm suffix moves a random tiny model
    rows = summarize([r for recs in records.values() for r in recs])
    assert {row.threat for row in rows} == {"residual", "embedding", "tokens"}


def test_bad_threat_options_are_refused_before_loading():
    with pytest.raises(ToolkitError, match="unknown threat 'gcg'"):
        check_config(SuiteConfig(threats=("gcg",)))
    with pytest.raises(ToolkitError, match="suffix_tokens"):
        check_config(SuiteConfig(threats=("embedding",), options=(("suffix_tokens", 0),)))


def test_threats_suite_presets_the_ladder():
    suite = get_suite("threats")
    config, _ = check_config(SuiteConfig(suite="threats").with_defaults(suite.defaults))
    assert config.threats == ("residual", "embedding", "tokens")
    assert config.defenses == ("clamp", "splice", "error_monitor") and config.settings == ("ioi", "recall")


@dataclass(frozen=True)
class ReversedConfig(IOIConfig):
    """A setting whose clamp reverses its latents, with a utility field of its own."""

    name = "reversed_for_test"
    clamp_mode: str = "multiply"
    clamp_value: float = -2.0


class ReversedSetting(IOISetting):
    config_cls = ReversedConfig

    def utility_fields(self, model, defenses):
        return {name: {"retain_drop": 0.25} for name in defenses}


@pytest.fixture
def reversed_setting():
    register_setting(ReversedConfig, ReversedSetting)
    yield ReversedConfig.name
    SETTINGS.remove(ReversedConfig.name)


def test_every_defense_composes_with_the_settings_clamp_mode_and_value(reversed_setting):
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=12, seed=5)
    config = SuiteConfig(suite="standard", settings=(reversed_setting,), defenses=("clamp", "splice", "closed_loop"),
                         budgets=(2.0,), n=4, options=(("n_latents", 6), ("n_select", 8), ("site", SITE), ("steps", 2)))
    # the closed loop is calibrated by running the clamp: a mode or value lost on the way would be refused
    plan = build_plan(config, model, saes, lambda s, k, n: (pool[:k], pool[k : k + n]),
                      benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                      contrast=list(tiny_tokens(6, 5, seed=4)))
    assert plan.fingerprint["clamp"][reversed_setting] == {"mode": "multiply", "value": -2.0}
    assert all(plan.utility[(d, reversed_setting)]["retain_drop"] == 0.25 for d in config.defenses)
    assert any(n.startswith(f"{reversed_setting} clamp: 6 latents") and "multiply -2" in n for n in plan.notes)


def test_a_settings_own_clamp_options_hold_unless_given():
    _, opts = check_config(SuiteConfig(suite="standard"))
    assert setting_overrides("ioi", opts) == SETTING_DEFAULTS["ioi"]
    assert setting_overrides("unlearning", opts) == {}  # its config's own site, size and budgets
    _, given = check_config(SuiteConfig(suite="standard", options=(("max_density", 0.05), ("n_latents", 4))))
    assert setting_overrides("unlearning", given) == {"max_density": 0.05, "n_latents": 4}
    assert setting_overrides("ioi", given) == {**SETTING_DEFAULTS["ioi"], "max_density": 0.05, "n_latents": 4}
    with pytest.raises(ToolkitError, match="max_density must be in"):
        check_config(SuiteConfig(suite="standard", settings=("unlearning",), options=(("max_density", 2.0),)))
