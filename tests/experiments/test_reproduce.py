"""experiments.reproduce on the tiny random model: the pipeline's invariants, README markers."""

from __future__ import annotations

import json

import pytest
import torch

from experiments import reproduce as cli
from experiments.reproduce_core import (
    ReproduceConfig,
    SettingObjective,
    headline,
    replace_block,
    reproduce,
    results_table,
)
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae
from tests.settings_cases import random_samples

SITE = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_run():
    model = tiny_model()
    saes = {SITE: tiny_sae("jumprelu", seed=1)}
    samples = random_samples(model, n=24, seed=3)
    config = ReproduceConfig(setting="ioi", site=SITE, n_latents=8, n_select=8, n=16, budget=2.0,
                             sweep=(0.0, 2.0), steps=15, attack_batch=8)
    benign = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    results = reproduce(model, saes, config, samples=(samples[:8], samples[8:]), benign=benign, log=lambda m: None)
    return model, results


def test_pipeline_counts_and_invariants(tiny_run):
    model, results = tiny_run
    assert results["n_evaluated"] == 16
    assert isinstance(results["clamp_delta_ce"], float) and results["clamp_delta_ce"] == results["clamp_delta_ce"]
    assert results["n_valid"] == sum(results["validity"]["valid"])
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    if results["n_valid"] == 0:
        pytest.skip("no valid sample on this tiny model")
    enc, none = results["recovery"]["encoder"], results["recovery"]["none"]
    for r in (enc, none):
        rate = r["rate"]
        assert rate["n"] == results["n_valid"]
        assert rate["ci_low"] <= rate["rate"] <= rate["ci_high"]
    if enc["rate"]["k"]:
        assert enc["drift_max"] < 1e-4  # encoder-orthogonal: the clamped latents' inputs do not move
        assert enc["orthogonality_max"] < 1e-4
    # budget 0 recovers nothing (every evaluated sample is valid: absent when defended)
    for rows in results["sweep"].values():
        assert rows[0]["budget"] == 0.0 and rows[0]["rate"]["k"] == 0
    line = headline(results)
    assert set(line) == {"setting", "n_valid", "recovery_encoder", "ci_low", "ci_high", "recovery_none",
                         "drift_encoder", "error_replay_recovery", "seconds"}
    json.dumps(line)
    assert "| encoder |" in results_table(results)


def test_replay_parts_are_rates_over_recovered(tiny_run):
    _, results = tiny_run
    for constraint, rep in results["replay"].items():
        k = results["recovery"][constraint]["rate"]["k"]
        if rep:
            assert rep["full"]["n"] == k
            assert rep["full"]["k"] == k  # the full delta replays its own success


def test_setting_objective_matches_behaviour_score():
    model = tiny_model()
    samples = random_samples(model, n=4)
    obj = SettingObjective(samples)
    logits = torch.randn(4, 1, 50)
    rows = torch.tensor([2, 0])
    score = obj.score(logits[rows], rows)
    for j, i in enumerate(rows.tolist()):
        s = samples[i]
        assert score[j] == pytest.approx(float(logits[i, 0, s.target] - logits[i, 0, s.foils[0]]))
    assert obj.success(logits[rows], rows).tolist() == (score > 0).tolist()


def test_replace_block_inserts_then_replaces(tmp_path):
    text = "# title\n\nintro\n"
    once = replace_block(text, "ioi", "table one")
    assert once.startswith(text.rstrip("\n"))
    assert "<!-- results:ioi:start -->\ntable one\n<!-- results:ioi:end -->" in once
    twice = replace_block(once, "ioi", "table two")
    assert "table one" not in twice and twice.count("results:ioi:start") == 1
    both = replace_block(twice, "recall", "r")
    assert "table two" in both and "<!-- results:recall:start -->\nr\n" in both
    with pytest.raises(ToolkitError):
        replace_block("<!-- results:ioi:start --> only", "ioi", "x")
    readme = tmp_path / "README.md"
    readme.write_text(text)
    cli.update_readme(readme, "ioi", "abc")
    cli.update_readme(readme, "ioi", "def")
    assert readme.read_text().count("def") == 1 and "abc" not in readme.read_text()


def test_cli_defaults_and_quick():
    full, quick = cli.default_config("ioi"), cli.default_config("ioi", quick=True)
    assert quick.n < full.n and quick.steps <= full.steps and 0.0 in quick.sweep and 0.0 in full.sweep
    args = cli.build_parser().parse_args(["recall", "--quick", "--n", "7"])
    assert args.setting == "recall" and args.quick and args.n == 7
