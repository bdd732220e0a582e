"""The IOI setting: template data, determinism, and user files with errors that name the row."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from experiments.data import ioi as data
from experiments.settings import IOIConfig, get_setting, ioi_prompts
from guard.errors import ToolkitError
from tests.settings_cases import WordTokenizer


@pytest.fixture
def tok():
    return WordTokenizer()


def test_prompts_are_well_formed(tok):
    samples = ioi_prompts(tok, n=96, seed=0)
    assert len(samples) == 96 and len({s.id for s in samples}) == 96
    for s in samples:
        assert s.io_name != s.s_name and s.io != s.s
        assert s.tokens == tuple(tok.encode(s.prompt))
        assert s.io == tok.encode(" " + s.io_name)[0] and s.s == tok.encode(" " + s.s_name)[0]
        words = s.prompt.replace(",", " ").replace(".", " ").split()
        assert words.count(s.s_name) == 2 and words.count(s.io_name) == 1  # S repeated, IO once
        first = s.prompt.index(s.io_name) < s.prompt.index(s.s_name)
        assert first == (s.order == "ABBA")
        assert s.prompt.endswith(" to")  # the IO name is the next token
    counts = Counter((s.template, s.order) for s in samples)
    assert len(data.TEMPLATES) >= 6
    assert set(counts) == {(t, o) for t in range(len(data.TEMPLATES)) for o in data.ORDERS}  # balanced
    assert len(set(counts.values())) == 1


def test_generation_is_deterministic_and_prefix_stable(tok):
    a = ioi_prompts(tok, n=40, seed=3)
    assert a == ioi_prompts(tok, n=40, seed=3)
    assert ioi_prompts(tok, n=15, seed=3) == a[:15]
    assert [s.id for s in ioi_prompts(tok, n=40, seed=4)] != [s.id for s in a]


def test_names_are_single_tokens_and_unambiguous(tok):
    names = data.single_token_names(tok, limit=None)
    assert names and all(len(tok.encode(" " + n)) == 1 for n in names)
    assert not set(names) & data.AMBIGUOUS_NAMES
    assert "Christopher" not in names  # two tokens for the word tokenizer
    assert len(data.single_token_names(tok, limit=10)) == 10


def test_config_restricts_templates_orders_and_names(tok):
    samples = ioi_prompts(tok, n=20, seed=0, config=IOIConfig(templates=(2, 5), orders=("BABA",), n_names=5))
    assert {s.template for s in samples} == {2, 5} and {s.order for s in samples} == {"BABA"}
    assert len({s.io_name for s in samples} | {s.s_name for s in samples}) <= 5
    with pytest.raises(ToolkitError, match="distinct"):
        ioi_prompts(tok, n=21, seed=0, config=IOIConfig(templates=(0,), orders=("ABBA",), n_names=5))
    for bad in (dict(templates=(99,)), dict(orders=("ABAB",)), dict(n_names=1), dict(n_latents=0)):
        with pytest.raises(ToolkitError):
            IOIConfig(**bad)


def test_setting_samples_from_generator_or_file(tok, tmp_path):
    setting = get_setting("ioi")
    assert setting.samples(tok, n=7, seed=1) == ioi_prompts(tok, 7, 1)
    path = tmp_path / "mine.jsonl"
    rows = [{"prompt": "When Anna and Tom met, Tom waved to", "io": "Anna", "s": "Tom"},
            {"prompt": "Then Bob and Eve left, and Eve called ", "io": "Bob", "s": " Eve", "id": "x7"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples = setting.samples(tok, prompts_file=path)
    assert [s.id for s in samples] == ["mine:1", "x7"]
    assert samples[0].io == tok.encode(" Anna")[0] and samples[0].s == tok.encode(" Tom")[0]
    assert samples[1].io == tok.encode("Bob")[0]  # prompt ends with a space: no space added
    assert samples[1].s == tok.encode(" Eve")[0]
    assert setting.samples(tok, n=1, prompts_file=path) == samples[:1]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "a b", "io": "X"', "line 2: not valid JSON"),
        ('["prompt"]', "line 2: expected a JSON object"),
        ('{"prompt": "a b", "io": "X"}', "line 2: missing key(s) ['s']"),
        ('{"prompt": "a b", "io": "Christopher", "s": "Tom"}', "line 2: 'io' = 'Christopher' is 2 tokens"),
        ('{"prompt": "a b", "io": "Tom", "s": "Tom"}', "line 2: io 'Tom' and s 'Tom' are the same token"),
        ('{"prompt": "a b", "io": 3, "s": "Tom"}', "line 2: 'io' must be a str"),
        ('{"prompt": "", "io": "Ann", "s": "Tom"}', "line 2: 'prompt' is empty"),
        ('{"prompt": "a b", "io": "Ann", "s": "Tom", "id": "same"}', "duplicate sample id 'same'"),
    ],
)
def test_user_file_errors_name_the_line(tok, tmp_path, line, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "c d", "io": "Ann", "s": "Tom", "id": "same"}) + "\n" + line + "\n")
    with pytest.raises(ToolkitError) as err:
        get_setting("ioi").samples(tok, prompts_file=path)
    assert message in str(err.value) and "ioi" in str(err.value)


def test_missing_or_empty_file(tok, tmp_path):
    with pytest.raises(ToolkitError, match="does not exist"):
        get_setting("ioi").samples(tok, prompts_file=tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ToolkitError, match="no rows"):
        get_setting("ioi").samples(tok, prompts_file=tmp_path / "empty.jsonl")
