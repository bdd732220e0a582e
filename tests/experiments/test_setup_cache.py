"""The standard suite's set-up from the cache: nothing recomputed when nothing changed, exactly the
products of a changed input recomputed, and the same plan and records as an uncached set-up."""

from __future__ import annotations

import json

import pytest

import experiments.suites
from certify.cache import SetupCache
from certify.config import SuiteConfig
from experiments.settings import IOISetting
from experiments.suites import build_plan
from tests.guard_cases import SITES
from tests.helpers import tiny_model, tiny_sae, tiny_tokens
from tests.settings_cases import random_samples

DEFENSES = ("clamp", "error_norm", "error_monitor", "direction_ablation")  # three of them calibrate
# the clamp, the calibrations, utility, validity and the attack unit tests' verdict per defense
N_PRODUCTS = 1 + 3 + 3 * len(DEFENSES)


@pytest.fixture(scope="module")
def world():
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    return model, saes, random_samples(model, n=20, seed=5)


def plan(world, cache, held_out_seed: int = 2):
    model, saes, pool = world
    config = SuiteConfig(suite="standard", settings=("ioi",), defenses=DEFENSES, budgets=(0.0, 2.0), n=8,
                         options=(("attack_batch", 4), ("n_latents", 6), ("n_select", 8), ("site", SITES[0]),
                                  ("steps", 4)))
    return build_plan(config, model, saes, lambda s, k, n: (pool[:k], pool[k : k + n]),
                      benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=held_out_seed)),
                      contrast=list(tiny_tokens(6, 5, seed=4)), cache=cache)


def records(plan):
    out = []
    for unit in plan.units:
        out += [json.dumps({k: v for k, v in r.items() if k != "timing"}, sort_keys=True)
                for r in plan.evaluate_unit(unit)]
    return out


def test_a_second_set_up_reads_everything_back_and_runs_the_same(world, tmp_path, monkeypatch):
    uncached = plan(world, None)
    first_cache = SetupCache(tmp_path)
    first = plan(world, first_cache)
    assert (first_cache.hits, first_cache.misses) == (0, N_PRODUCTS)

    def never(*args, **kwargs):
        raise AssertionError("the clamp was searched again although nothing changed")

    monkeypatch.setattr(IOISetting, "choose_clamp", never)
    again_cache = SetupCache(tmp_path)
    again = plan(world, again_cache)
    assert (again_cache.hits, again_cache.misses) == (N_PRODUCTS, 0)
    for p in (first, again):
        assert p.utility == uncached.utility and p.fingerprint == uncached.fingerprint
        assert p.units == uncached.units and p.verified == uncached.verified
        assert {k: v for k, v in p.provenance.items() if k != "setup"} == {
            k: v for k, v in uncached.provenance.items() if k != "setup"}
    assert again.provenance["setup"]["read_back"] == N_PRODUCTS and again.provenance["setup"]["computed"] == 0
    assert records(again) == records(uncached)


def test_a_changed_input_recomputes_only_what_depends_on_it(world, tmp_path):
    plan(world, SetupCache(tmp_path))
    cache = SetupCache(tmp_path)
    changed = plan(world, cache, held_out_seed=3)  # other held-out benign text: utility alone depends on it
    assert (cache.hits, cache.misses) == (N_PRODUCTS - len(DEFENSES), len(DEFENSES))  # the utilities
    assert changed.utility != plan(world, None).utility
    assert changed.utility == plan(world, None, held_out_seed=3).utility


def test_a_change_of_the_toolkits_source_recomputes_everything(world, tmp_path, monkeypatch):
    plan(world, SetupCache(tmp_path))
    monkeypatch.setattr(experiments.suites, "toolkit_source", lambda: "edited source")
    cache = SetupCache(tmp_path)
    plan(world, cache)
    assert (cache.hits, cache.misses) == (0, N_PRODUCTS)
