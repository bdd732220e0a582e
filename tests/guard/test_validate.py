"""guard.validate: each check accepts good input and rejects bad input with one line naming it."""

from __future__ import annotations

import json
import math

import pytest

from certify.config import check_options
from guard import validate
from guard.errors import ToolkitError


@pytest.mark.parametrize("value, expected", [(0, 0.0), (2.5, 2.5), ("0.2", 0.2), ("1e-3", 0.001)])
def test_finite_number_accepts(value, expected):
    assert validate.finite_number(value, "--budget", low=0) == expected


@pytest.mark.parametrize("value, match", [
    (math.inf, "finite"), (math.nan, "finite"), ("inf", "finite"), ("abc", "finite"), (None, "finite"),
    (True, "finite"), (-0.1, ">= 0"), (1.5, "<= 1"),
])
def test_finite_number_rejects(value, match):
    with pytest.raises(ToolkitError, match=f"--budget must be .*{match}"):
        validate.finite_number(value, "--budget", low=0, high=1)


@pytest.mark.parametrize("value, expected", [(5, 5), (5.0, 5), ("7", 7), (0, 0)])
def test_integer_accepts(value, expected):
    out = validate.integer(value, "--n", minimum=0)
    assert out == expected and type(out) is int


@pytest.mark.parametrize("value, match", [
    (2.5, "an integer"), ("abc", "an integer"), (True, "an integer"), (math.inf, "an integer"),
    (math.nan, "an integer"), (None, "an integer"), (-5, ">= 0"),
])
def test_integer_rejects(value, match):
    with pytest.raises(ToolkitError, match=f"--n must be {match}"):
        validate.integer(value, "--n", minimum=0)


def test_device():
    assert validate.device("cpu") == "cpu"
    for bad in ("tpu", "cuda:x", "", "CPU"):
        with pytest.raises(ToolkitError, match="'cpu', 'cuda' or 'cuda:<index>'"):
            validate.device(bad)
    with pytest.raises(ToolkitError, match="not available"):
        validate.device("cuda:99")


def test_text_file(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("\ufeffhello ü\n", encoding="utf-8")
    assert validate.text_file(good, "--text-file") == "hello ü\n"
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe")
    (tmp_path / "blank.txt").write_text(" \n\n")
    cases = {
        tmp_path / "missing.txt": r"--text-file .*missing.txt does not exist",
        tmp_path: r"is not a file",
        tmp_path / "bad.txt": r"--text-file .*bad.txt is not UTF-8 text \(byte 3\)",
        tmp_path / "blank.txt": r"--text-file .*blank.txt is empty",
    }
    for path, match in cases.items():
        with pytest.raises(ToolkitError, match=match):
            validate.text_file(path, "--text-file")
    assert validate.text_file(tmp_path / "blank.txt", "x", empty_ok=True) == " \n\n"


def test_jsonl_rows_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n\n" + json.dumps({"prompt": "c", "answer": "d"}))
    assert validate.jsonl_rows(path, ("prompt", "answer"), "--prompts file") == [
        {"prompt": "a", "answer": "b"}, {"prompt": "c", "answer": "d"}]
    assert [n for n, _ in validate.numbered_jsonl_rows(path, ("prompt",), "f")] == [1, 3]
    good = json.dumps({"prompt": "a", "answer": "b"})
    cases = {
        good + "\n{bad": r"p.jsonl line 2: not valid JSON",
        good + "\n[1]": r"line 2: expected a JSON object, got list",
        json.dumps({"prompt": "a"}): r"line 1: missing key\(s\) \['answer'\]; the row has \['prompt'\]",
        json.dumps({"prompt": 3, "answer": "b"}): r"line 1: 'prompt' must be a str, got 3",
        "\n \n": r"p.jsonl has no rows",
    }
    for content, match in cases.items():
        path.write_text(content)
        with pytest.raises(ToolkitError, match=match) as err:
            validate.jsonl_rows(path, ("prompt", "answer"), "--prompts file", {"prompt": str})
        assert "\n" not in str(err.value) and str(err.value).startswith("--prompts file")
    path.write_bytes(b'{"prompt": "\xe9"}\n')
    with pytest.raises(ToolkitError, match=r"is not UTF-8 text \(byte 12\)"):
        validate.jsonl_rows(path, ("prompt",), "--prompts file")


def test_folders(tmp_path):
    afile = tmp_path / "f"
    afile.write_text("x")
    assert validate.writable_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    with pytest.raises(ToolkitError, match="--out .* exists and is not a folder"):
        validate.writable_dir(afile, "--out")
    with pytest.raises(ToolkitError, match="--out .* cannot be created: .*f is not a folder"):
        validate.writable_dir(afile / "sub", "--out")
    assert validate.existing_dir(tmp_path, "--sae-dir") == tmp_path
    with pytest.raises(ToolkitError, match="--sae-dir .* does not exist"):
        validate.existing_dir(tmp_path / "nope", "--sae-dir")
    with pytest.raises(ToolkitError, match="--sae-dir .* is not a folder"):
        validate.existing_dir(afile, "--sae-dir")
    assert validate.writable_file(afile, "--readme") == afile
    assert validate.writable_file(tmp_path / "new.md", "--readme") == tmp_path / "new.md"
    with pytest.raises(ToolkitError, match="--readme .* exists and is not a file"):
        validate.writable_file(tmp_path, "--readme")
    with pytest.raises(ToolkitError, match="--readme .*: folder .* exists and is not a folder"):
        validate.writable_file(afile / "README.md", "--readme")


def test_cli_errors_one_line_exit_2_or_traceback_with_debug(capsys):
    with pytest.raises(SystemExit) as exit_info, validate.cli_errors():
        raise ToolkitError("bad thing\nin two lines")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: bad thing in two lines\n"
    with pytest.raises(ToolkitError), validate.cli_errors(debug=True):
        raise ToolkitError("shown with its traceback")
    with pytest.raises(KeyError), validate.cli_errors():  # unexpected errors keep their traceback
        raise KeyError("x")
    assert capsys.readouterr().err == ""


DEFAULTS = {"steps": 20, "n_select": 48, "n_latents": 32, "site": "blocks.6.hook_resid_post",
            "attack_batch": 32, "seq_len": 64}
POSITIVE = ("n_select", "n_latents", "attack_batch", "seq_len")


def test_check_options_merges_and_coerces():
    assert check_options({}, DEFAULTS, "standard suite") == DEFAULTS
    out = check_options({"steps": "7", "n_latents": 16.0, "site": "blocks.12.hook_resid_post"},
                        DEFAULTS, "standard suite", positive=POSITIVE)
    assert out == {**DEFAULTS, "steps": 7, "n_latents": 16, "site": "blocks.12.hook_resid_post"}
    assert type(out["n_latents"]) is int
    assert check_options({"steps": 0}, DEFAULTS, "s", positive=POSITIVE)["steps"] == 0  # 0 steps: allowed
    mixed = {"delay": 0.0, "flag": False, "sweep": (0.0, 0.05)}
    assert check_options({"delay": 2, "flag": True, "sweep": [0.1, 1]}, mixed, "demo suite") == {
        "delay": 2.0, "flag": True, "sweep": (0.1, 1.0)}


@pytest.mark.parametrize("options, match", [
    ({"stepz": 5}, r"standard suite: unknown option 'stepz'. Closest valid names: steps"),
    ({"steps": "abc"}, r"standard suite: option 'steps' must be an integer, got 'abc'"),
    ({"steps": -5}, r"option 'steps' must be >= 0, got -5"),
    ({"steps": 2.5}, r"option 'steps' must be an integer"),
    ({"steps": True}, r"option 'steps' must be an integer"),
    ({"n_latents": 0}, r"option 'n_latents' must be >= 1, got 0"),
    ({"site": 6}, r"option 'site' must be a string, got 6"),
    ({"site": None}, r"option 'site' must be a string"),
])
def test_check_options_rejects(options, match):
    with pytest.raises(ToolkitError, match=match):
        check_options(options, DEFAULTS, "standard suite", positive=POSITIVE)


@pytest.mark.parametrize("options, match", [
    ({"delay": float("inf")}, "finite"), ({"delay": -1.0}, ">= 0"), ({"flag": "yes"}, "true or false"),
    ({"sweep": "0.1"}, "must be a list"), ({"sweep": [0.1, -1]}, r"sweep'\[1\] must be >= 0"),
])
def test_check_options_rejects_other_types(options, match):
    with pytest.raises(ToolkitError, match=match):
        check_options(options, {"delay": 0.0, "flag": False, "sweep": (0.0,)}, "demo suite")
