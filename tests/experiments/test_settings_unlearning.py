"""The unlearning setting: forget and retain domains, the retain split, and its utility fields."""

from __future__ import annotations

import pytest

from experiments.data import recall_facts as data
from experiments.settings import UnlearningConfig, get_setting
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae
from tests.settings_cases import WordTokenizer, random_samples


def _facts(samples) -> set[tuple[str, str]]:
    return {(s.category, s.id.split("/")[-1]) for s in samples}


def test_forget_samples_are_the_forget_domain_and_retain_halves_split_the_rest_by_fact():
    tok = WordTokenizer()
    setting = get_setting("unlearning")
    forget = setting.samples(tok, None, 0)
    assert {s.category for s in forget} == {"currency"}
    assert len(forget) == 2 * len(data.facts(("currency",)))  # free and cloze choice per fact
    select, evaluate = setting.retain_samples(tok, "select"), setting.retain_samples(tok, "evaluate")
    retain = set(data.CATEGORIES) - {"currency"}
    assert {s.category for s in select} == {s.category for s in evaluate} == retain
    assert not _facts(select) & _facts(evaluate)  # a fact's formats stay on one side
    assert len(_facts(select) | _facts(evaluate)) == len(data.facts(tuple(sorted(retain))))
    assert [s.id for s in setting.control_samples(tok, None, 0)] == [s.id for s in select]
    with pytest.raises(ToolkitError, match="retain split must be one of"):
        setting.retain_samples(tok, "train")


def test_retain_categories_can_be_chosen_and_bad_configs_fail_in_one_line():
    tok = WordTokenizer()
    setting = get_setting("unlearning", categories=["capital"], control_categories=["language"])
    assert {s.category for s in setting.retain_samples(tok, "evaluate")} == {"language"}
    with pytest.raises(ToolkitError, match="no retain category left"):
        UnlearningConfig(categories=data.CATEGORIES)
    with pytest.raises(ToolkitError, match="setting 'unlearning': unknown categories"):
        UnlearningConfig(categories=("chemistry",))
    with pytest.raises(ToolkitError, match="max_retain_drop must be in"):
        UnlearningConfig(max_retain_drop=2.0)
    with pytest.raises(ToolkitError, match="clamp_mode must be one of"):
        UnlearningConfig(clamp_mode="scale")


def test_utility_fields_are_the_retain_accuracy_and_its_drop(monkeypatch):
    model, sae = tiny_model(seed=1), tiny_sae("jumprelu", seed=1)
    site = "blocks.1.hook_resid_post"
    retain = random_samples(model, n=10, seed=3)  # present undefended by construction
    setting = get_setting("unlearning")
    monkeypatch.setattr(setting, "retain_samples", lambda tokenizer, split="select": retain)
    nothing = FeatureClamp(ClampConfig(features={site: (0,)}, mode="multiply", value=1.0), {site: sae})
    strong = FeatureClamp(ClampConfig(features={site: tuple(range(int(sae.cfg.d_sae)))}, mode="multiply",
                                      value=-50.0), {site: sae})
    both = setting.utility_fields(model, {"nothing": nothing, "strong": strong})
    assert both["nothing"] == {"retain_acc": 1.0, "retain_drop": 0.0}
    fields = both["strong"]
    assert fields["retain_drop"] == pytest.approx(1.0 - fields["retain_acc"]) and fields["retain_drop"] > 0
