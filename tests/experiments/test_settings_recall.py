"""The recall setting: fact data, the three formats, and user files with choices."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from experiments.data import recall_facts as data
from experiments.settings import RecallConfig, get_setting, recall_samples
from experiments.settings.recall import LETTERS
from guard.errors import ToolkitError
from tests.settings_cases import WordTokenizer

ALL = RecallConfig(formats=("free", "choice", "mc"))


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer()


@pytest.fixture(scope="module")
def everything(tok):
    return recall_samples(tok, None, 0, ALL)


def test_fact_tables_are_large_and_unambiguous():
    facts = data.facts()
    assert len(facts) >= 400
    keys = [(f.category, f.subject) for f in facts]
    assert len(keys) == len(set(keys))  # one answer per question
    assert all(f.answer.strip() and f.subject.strip() for f in facts)
    assert set(Counter(f.category for f in facts)) == set(data.CATEGORIES)


def test_every_fact_in_every_format_with_unique_ids(everything):
    assert len(everything) == 3 * len(data.facts())
    assert len({s.id for s in everything}) == len(everything)
    assert Counter(s.format for s in everything) == {f: len(data.facts()) for f in ("free", "choice", "mc")}


def test_free_recall_targets_the_answers_first_token(tok, everything):
    for s in (s for s in everything if s.format == "free"):
        assert s.foils == () and s.target == tok.encode(" " + s.answer)[0]
        assert s.tokens == tuple(tok.encode(s.prompt)) and not s.prompt.endswith(" ")


def test_choice_and_mc_list_four_distinct_options(tok, everything):
    for s in (s for s in everything if s.format in ("choice", "mc")):
        assert len(s.choices) == 4 and s.answer in s.choices and len(set(s.choices)) == 4
        assert len(set(s.choice_tokens)) == 4 and s.target in s.choice_tokens
        assert set(s.foils) == set(s.choice_tokens) - {s.target}
        if s.format == "mc":
            assert s.choice_tokens == tuple(tok.encode(" " + letter)[0] for letter in LETTERS)
            lines = s.prompt.split("\n")
            assert lines[0].startswith("Question: ") and lines[-1] == "Answer:"
            assert lines[1 + s.choices.index(s.answer)] == f"{LETTERS[s.choice_tokens.index(s.target)]}. {s.answer}"
        else:
            assert s.choice_tokens == tuple(tok.encode(" " + c)[0] for c in s.choices)


def test_deterministic_and_layout_independent_of_n(tok, everything):
    assert recall_samples(tok, 30, 0, ALL) == everything[:30]
    again = {s.id: s for s in recall_samples(tok, None, 0, ALL)}
    assert all(again[s.id] == s and again[s.id].choices == s.choices for s in everything)
    other = {s.id: s for s in recall_samples(tok, None, 1, ALL)}
    assert [s.id for s in everything[:30]] != [s.id for s in recall_samples(tok, 30, 1, ALL)]
    assert any(other[s.id].choices != s.choices for s in everything if s.format == "mc")


def test_config_topic_control_and_errors(tok):
    setting = get_setting("recall", categories=("capital",), control_categories=("language",))
    topic = setting.samples(tok)
    assert {s.category for s in topic} == {"capital"} and {s.format for s in topic} == {"free", "choice"}
    assert {s.category for s in setting.control_samples(tok, None, 0)} == {"language"}
    assert get_setting("recall").control_samples(tok, None, 0) == []
    for bad in (dict(categories=("capitols",)), dict(categories=()), dict(formats=("essay",)),
                dict(categories=("capital",), control_categories=("capital",))):
        with pytest.raises(ToolkitError):
            RecallConfig(**bad)


def test_user_file_free_and_choice_rows(tok, tmp_path):
    path = tmp_path / "facts.jsonl"
    rows = [{"prompt": "The capital of Peru is", "answer": "Lima"},
            {"prompt": "Pick: the largest planet is", "answer": "Jupiter", "choices": ["Mars", "Jupiter", "Venus"],
             "id": "planet"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    free, choice = get_setting("recall").samples(tok, prompts_file=path)
    assert free.id == "facts:1" and free.format == "free" and free.target == tok.encode(" Lima")[0]
    assert choice.id == "planet" and choice.target == tok.encode(" Jupiter")[0]
    assert set(choice.foils) == {tok.encode(" Mars")[0], tok.encode(" Venus")[0]}


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "p q"}, "line 1: missing key(s) ['answer']"),
        ({"prompt": "p q", "answer": "x", "choices": ["y", "z"]}, "line 1: 'answer' 'x' is not one of the choices"),
        ({"prompt": "p q", "answer": "x", "choices": "x y"}, "line 1: 'choices' must be a list"),
        ({"prompt": "p q", "answer": "x", "choices": ["x"]}, "at least 2 strings"),
        ({"prompt": "p q", "answer": "Washington", "choices": ["Washington", "Washingtonia"]},
         "do not all start with different tokens"),
        ({"prompt": "p q", "answer": "  "}, "line 1: 'answer' is empty"),
    ],
)
def test_user_file_errors_name_the_line(tok, tmp_path, row, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ToolkitError) as err:
        get_setting("recall").samples(tok, prompts_file=path)
    assert message in str(err.value) and "recall" in str(err.value)
