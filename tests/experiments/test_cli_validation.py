"""Every command line rejects bad input with one ``error: ...`` line and exit code 2, before any model loads.

The model loaders are replaced by ones that fail the test, so a check that comes after the
load (minutes on a real machine) shows up here as an AssertionError, not as a slow pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import certify.cli
import experiments.cli
import experiments.refusal.cli
import experiments.reproduce
import experiments.saes.__main__ as saes_cli
import experiments.subject
import experiments.subject.smollm2
import experiments.utility
from guard.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[2]
SITE = "blocks.6.hook_resid_post"


def _model_loaded(*args, **kwargs):
    raise AssertionError("model loaded")


def _replace_loaders(monkeypatch, loader, names=("load_subject", "load_model", "load_hf_model")) -> None:
    """Replace every binding of the model loaders in every loaded project module."""
    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] == "experiments":
            for name in names:
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, loader)


@pytest.fixture(autouse=True)
def no_model(monkeypatch, tmp_path):
    """No test here may load the subject; outputs default to folders under tmp_path."""
    _replace_loaders(monkeypatch, _model_loaded)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # experiments.cli rewrites it
    monkeypatch.chdir(tmp_path)


def _error_line(capsys, main, argv, match: str) -> str:
    """Run ``main(argv)``: exit code 2 and exactly one stderr line, ``error: ...`` matching ``match``."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _rows(path: Path, rows: list[dict], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + extra)
    return path


RECALL_ROWS = [{"prompt": f"The capital of country {i} is", "answer": "Paris"} for i in range(80)]
NOT_UTF8 = b'{"prompt": "caf\xe9"}\n'


# ---- python -m certify ------------------------------------------------------------------------

CERTIFY = certify.cli.main


@pytest.mark.parametrize("argv, match", [
    (["--budgets", "inf"], r"budgets must be .*finite"),
    (["--budgets", "1", "nan"], r"budgets must be .*finite"),
    (["--budgets", "-1"], r"budgets must be .*>= 0"),
    (["--budgets", "x"], r"budget 'x' is not a number"),
    (["--n", "-5"], r"n \(samples per setting\) must be >= 1, got -5"),
    (["--seed", "-1"], r"seed must be an integer >= 0"),
    (["--alpha", "nan"], r"alpha must lie in"),
    (["--device", "tpu"], r"device must be"),
    (["--suite", "standrd"], r"unknown suite 'standrd'.*standard"),
])
def test_certify_bad_numbers_and_names(capsys, argv, match):
    _error_line(capsys, CERTIFY, ["run", *argv], match)


@pytest.mark.parametrize("name, content", [
    ("run.yaml", ""), ("run.yml", "\n  \n"), ("run.toml", "# only a comment\n"), ("run.json", "{}"),
    ("run.yaml", "# nothing\n"),
])
def test_certify_empty_config_file(capsys, tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    _error_line(capsys, CERTIFY, ["run", "--config", str(path)], rf"config file {re.escape(str(path))} is empty")


def test_certify_config_file_not_utf8_or_missing(capsys, tmp_path):
    path = _bytes(tmp_path / "run.yaml", b"suite: d\xe9mo\n")
    _error_line(capsys, CERTIFY, ["run", "--config", str(path)], r"run.yaml is not UTF-8 text \(byte 8\)")
    _error_line(capsys, CERTIFY, ["run", "--config", str(tmp_path / "no.toml")], r"no.toml does not exist")


def test_certify_out_must_be_creatable(capsys, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    _error_line(capsys, CERTIFY, ["run", "--suite", "demo", "--out", str(afile / "sub")],
                r"--out .* cannot be created")
    _error_line(capsys, CERTIFY, ["run", "--suite", "demo", "--out", str(afile)], r"--out .* is not a folder")


def test_certify_option_value_not_yaml_is_kept_as_text():
    args = certify.cli.build_parser().parse_args(["run", "--option", "site=[x", "--option", "steps=abc"])
    assert certify.cli.config_from_args(args).option_dict == {"site": "[x", "steps": "abc"}


def _suite_checks_options(module: str) -> bool:
    return "check_options" in (ROOT / module).read_text()


@pytest.mark.skipif(not _suite_checks_options("certify/demo.py"),
                    reason="certify/demo.py does not call certify.config.check_options yet")
@pytest.mark.parametrize("option, match", [
    ("steps=abc", r"option 'steps' must be an integer, got 'abc'"),
    ("steps=-5", r"option 'steps' must be >= [01], got -5"),
    ("stepz=5", r"unknown option 'stepz'.*steps"),
])
def test_certify_demo_options(capsys, monkeypatch, tmp_path, option, match):
    import certify.demo

    monkeypatch.setattr(certify.demo, "_world", _model_loaded)
    _error_line(capsys, CERTIFY, ["run", "--suite", "demo", "--out", str(tmp_path / "o"), "--option", option], match)


@pytest.mark.skipif(not _suite_checks_options("experiments/suites.py"),
                    reason="experiments/suites.py does not call certify.config.check_options yet")
@pytest.mark.parametrize("argv, match", [
    (["--option", "steps=abc"], r"option 'steps' must be an integer, got 'abc'"),
    (["--option", "steps=-5"], r"option 'steps' must be >= [01], got -5"),
    (["--option", "n_latents=-1"], r"option 'n_latents' must be >= 0"),
    (["--defenses", "clampx"], r"unknown defense 'clampx'.*clamp"),
])
def test_certify_standard_options_and_names_before_the_model(capsys, tmp_path, argv, match):
    _error_line(capsys, CERTIFY, ["run", "--suite", "standard", "--out", str(tmp_path / "o"), *argv], match)


def test_certify_debug_shows_the_traceback_and_unexpected_errors_keep_theirs(monkeypatch):
    for argv in (["run", "--debug", "--budgets", "inf"], ["--debug", "run", "--budgets", "inf"]):
        with pytest.raises(ToolkitError, match="finite"):
            CERTIFY(argv)

    def boom(config, **kwargs):
        raise RuntimeError("a bug, not an input error")

    monkeypatch.setattr(certify.cli, "run", boom)
    with pytest.raises(RuntimeError, match="a bug"):
        CERTIFY(["run", "--suite", "demo"])


def test_certify_process_exit_code_and_one_line(tmp_path):
    """The real process: exit code 2, one stderr line, no traceback (nothing is loaded for this)."""
    proc = subprocess.run([sys.executable, "-m", "certify", "run", "--budgets", "inf"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


# ---- python -m experiments.reproduce ----------------------------------------------------------

REPRODUCE = experiments.reproduce.main


@pytest.mark.parametrize("argv, match", [
    (["recall", "--n", "-5"], r"--n must be >= 1, got -5"),
    (["recall", "--n", "0"], r"--n must be >= 1"),
    (["ioi", "--steps", "-1"], r"--steps must be >= 0"),
    (["recall", "--budget", "inf"], r"--budget must be a finite number"),
    (["recall", "--budget", "nan"], r"--budget must be a finite number"),
    (["recall", "--budget", "-0.1"], r"--budget must be >= 0"),
    (["ioi", "--n-latents", "0"], r"--n-latents must be >= 1"),
    (["ioi", "--seed", "-3"], r"--seed must be >= 0"),
    (["ioi", "--site", "blocks.7.hook_resid_post"], r"unknown SAE site 'blocks.7.hook_resid_post'.*blocks"),
    (["ioi", "--device", "gpu"], r"--device must be"),
    (["refusal", "--n", "-5"], r"--n must be >= 1"),
    (["refusal", "--budget", "inf"], r"--budget must be a finite number"),
])
def test_reproduce_bad_numbers(capsys, argv, match):
    _error_line(capsys, REPRODUCE, argv, match)


@pytest.mark.parametrize("setting", ["ioi", "recall", "refusal"])
def test_reproduce_prompt_file_missing_empty_or_not_utf8(capsys, tmp_path, setting):
    _error_line(capsys, REPRODUCE, [setting, "--prompts", "missing.jsonl"], r"missing.jsonl does not exist")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    _error_line(capsys, REPRODUCE, [setting, "--prompts", "empty.jsonl"], r"empty.jsonl has no rows")
    _bytes(tmp_path / "latin1.jsonl", NOT_UTF8)
    _error_line(capsys, REPRODUCE, [setting, "--prompts", "latin1.jsonl"],
                r"latin1.jsonl is not UTF-8 text \(byte 15\)")


@pytest.mark.parametrize("setting, rows, extra, match", [
    ("recall", RECALL_ROWS[:2], "{not json\n", r"line 3: not valid JSON"),
    ("recall", [{"prompt": "x"}], "", r"line 1: missing key\(s\) \['answer'\]"),
    ("recall", [{"prompt": "x", "answer": 3}], "", r"line 1: 'answer' must be a str"),
    ("ioi", [{"prompt": "x", "io": "Mary"}], "", r"line 1: missing key\(s\) \['s'\]"),
    ("refusal", [{"text": "x"}], "", r"line 1: missing key\(s\) \['prompt'\]"),
    ("recall", RECALL_ROWS[:64], "", r"64 rows, but the first 64 only select"),
    ("refusal", [{"prompt": f"request {i}"} for i in range(10)], "", r"10 distinct requests .* first 48"),
])
def test_reproduce_prompt_rows(capsys, tmp_path, setting, rows, extra, match):
    path = _rows(tmp_path / "p.jsonl", rows, extra)
    _error_line(capsys, REPRODUCE, [setting, "--prompts", str(path)], match)


def test_reproduce_out_and_readme_must_be_writable(capsys, tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    _error_line(capsys, REPRODUCE, ["ioi", "--out", str(afile)], r"--out .* exists and is not a folder")
    _error_line(capsys, REPRODUCE, ["refusal", "--out", str(afile / "x")], r"--out .* cannot be created")
    _error_line(capsys, REPRODUCE, ["ioi", "--readme", str(tmp_path)], r"--readme .* exists and is not a file")
    _bytes(tmp_path / "README.md", b"caf\xe9")
    _error_line(capsys, REPRODUCE, ["ioi", "--readme", "README.md"], r"README.md is not UTF-8 text \(byte 3\)")


class _WordTokenizer:
    """One token per word: enough to count prompt lengths without the real tokenizer."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(range(len(text.split())))


def _fake_subject(n_ctx: int):
    model = SimpleNamespace(cfg=SimpleNamespace(n_ctx=n_ctx), tokenizer=_WordTokenizer())
    return SimpleNamespace(model=model, tokenizer=model.tokenizer, saes={SITE: object()}, sites=[SITE])


def _no_work(*args, **kwargs):
    raise AssertionError("attack or calibration started")


def test_reproduce_prompt_longer_than_context(capsys, monkeypatch, tmp_path):
    rows = [*RECALL_ROWS[:70], {"prompt": "word " * 40, "answer": "x"}]
    path = _rows(tmp_path / "long.jsonl", rows)
    _replace_loaders(monkeypatch, lambda **kw: _fake_subject(32), ("load_subject",))
    monkeypatch.setattr(experiments.reproduce, "reproduce", _no_work)
    _error_line(capsys, REPRODUCE, ["recall", "--prompts", str(path)],
                r"long.jsonl line 71: the prompt is 40 tokens, longer than the model's context window of 32 tokens")


def test_refusal_prompt_longer_than_context(capsys, monkeypatch, tmp_path):
    rows = [{"prompt": f"request number {i}"} for i in range(60)] + [{"prompt": "word " * 30}]
    path = _rows(tmp_path / "long.jsonl", rows)
    rc = experiments.refusal.cli.DEFAULT.recovery
    reserve = rc.suffix_tokens + max(rc.max_new_tokens, rc.answer_tokens)
    n_ctx = reserve + 20  # the short requests fit in their chat template (18 words), the long one does not
    _replace_loaders(monkeypatch, lambda **kw: _fake_subject(n_ctx), ("load_subject",))
    monkeypatch.setattr(experiments.refusal.cli, "run_refusal", _no_work)
    _error_line(capsys, REPRODUCE, ["refusal", "--prompts", str(path)],
                rf"long.jsonl line 61: the prompt is 46 tokens \(\+ {reserve} generated\), longer than the "
                rf"model's context window of {n_ctx} tokens")


def test_reproduce_debug_shows_the_traceback():
    with pytest.raises(ToolkitError, match="--n must be >= 1"):
        REPRODUCE(["recall", "--n", "-5", "--debug"])


# ---- python -m experiments.utility ------------------------------------------------------------------

UTILITY = experiments.utility.main


@pytest.mark.parametrize("argv, match", [
    (["--defenses", "clampx"], r"--defenses: unknown defense 'clampx'. Closest valid names: clamp"),
    (["--defenses", "clamp,splcie"], r"unknown defense 'splcie'.*splice"),
    (["--calib-fraction", "1.5"], r"--calib-fraction must lie in \(0, 1\)"),
    (["--calib-fraction", "nan"], r"--calib-fraction must lie in \(0, 1\)"),
    (["--seq-len", "1"], r"--seq-len must be >= 2"),
    (["--n-features", "0"], r"--n-features must be >= 1"),
    (["--batch-size", "-1"], r"--batch-size must be >= 1"),
    (["--seed", "-1"], r"--seed must be >= 0"),
    (["--device", "tpu"], r"--device must be"),
    (["--text-file", "missing.txt"], r"--text-file missing.txt does not exist"),
    (["--sae-dir", "nowhere"], r"--sae-dir nowhere does not exist"),
])
def test_utility_bad_arguments(capsys, argv, match):
    _error_line(capsys, UTILITY, argv, match)


def test_utility_files_and_folders(capsys, tmp_path):
    _bytes(tmp_path / "latin1.txt", b"benign caf\xe9 text")
    _error_line(capsys, UTILITY, ["--text-file", "latin1.txt"], r"latin1.txt is not UTF-8 text \(byte 10\)")
    (tmp_path / "blank.txt").write_text("\n \n")
    _error_line(capsys, UTILITY, ["--text-file", "blank.txt"], r"blank.txt is empty")
    (tmp_path / "empty_saes").mkdir()
    _error_line(capsys, UTILITY, ["--sae-dir", "empty_saes"], r"no SAEs found under empty_saes")
    _error_line(capsys, UTILITY, ["--save-calibrations", "blank.txt/x"], r"--save-calibrations .* cannot be created")


def test_utility_seq_len_longer_than_context(capsys, monkeypatch):
    _replace_loaders(monkeypatch, lambda **kw: _fake_subject(128), ("load_subject",))
    monkeypatch.setattr(experiments.utility, "utility_report", _no_work)
    _error_line(capsys, UTILITY, ["--seq-len", "4096"],
                r"--seq-len 4096 is longer than the model's context window of 128 tokens")


def test_utility_debug_shows_the_traceback():
    with pytest.raises(ToolkitError, match="unknown defense"):
        UTILITY(["--defenses", "clampx", "--debug"])


# ---- python -m experiments.saes ---------------------------------------------------------------

SAES = saes_cli.main


@pytest.mark.parametrize("argv, match", [
    (["evaluate", "--text-file", "missing.txt"], r"--text-file missing.txt does not exist"),
    (["evaluate", "--max-tokens", "0"], r"--max-tokens must be >= 1"),
    (["evaluate", "--sae-dir", "nowhere"], r"--sae-dir nowhere does not exist"),
    (["evaluate", "--device", "tpu"], r"--device must be"),
    (["build", "--train-tokens", "5"], r"--train-tokens must be >= 127"),
    (["build", "--k", "0"], r"--k must be >= 1"),
    (["build", "--d-sae", "64", "--k", "65"], r"--k 65 must not exceed --d-sae 64"),
    (["build", "--epochs", "0"], r"--epochs must be >= 1"),
    (["build", "--seed", "-1"], r"--seed must be >= 0"),
])
def test_saes_bad_arguments(capsys, argv, match):
    _error_line(capsys, SAES, argv, match)


def test_saes_files_and_folders(capsys, tmp_path):
    _bytes(tmp_path / "latin1.txt", b"caf\xe9")
    _error_line(capsys, SAES, ["evaluate", "--text-file", "latin1.txt"], r"latin1.txt is not UTF-8 text \(byte 3\)")
    (tmp_path / "blank.txt").write_text("")
    _error_line(capsys, SAES, ["evaluate", "--text-file", "blank.txt"], r"blank.txt is empty")
    (tmp_path / "empty_saes").mkdir()
    _error_line(capsys, SAES, ["evaluate", "--sae-dir", "empty_saes"], r"no shipped SAEs found under empty_saes")
    _error_line(capsys, SAES, ["build", "--sae-dir", "blank.txt"], r"--sae-dir .* exists and is not a folder")
    with pytest.raises(ToolkitError, match="does not exist"):
        SAES(["evaluate", "--text-file", "missing.txt", "--debug"])


# ---- latentguard (experiments.cli) ------------------------------------------------------------

LATENTGUARD = experiments.cli.main


@pytest.mark.parametrize("argv, match", [
    (["utility", "--defenses", "clampx"], r"unknown defense 'clampx'.*clamp"),
    (["reproduce", "recall", "--n", "-5"], r"--n must be >= 1"),
    (["reproduce", "recall", "--prompts", "missing.jsonl"], r"missing.jsonl does not exist"),
    (["certify", "run", "--budgets", "inf"], r"budgets must be .*finite"),
    (["certify", "run", "--option", "steps=1", "--config", "missing.toml"], r"missing.toml does not exist"),
    (["saes", "evaluate", "--text-file", "missing.txt"], r"missing.txt does not exist"),
])
def test_latentguard_forwards_and_fails_early(capsys, argv, match):
    _error_line(capsys, LATENTGUARD, argv, match)


def test_latentguard_unknown_command_and_debug(capsys):
    with pytest.raises(SystemExit) as exit_info:
        LATENTGUARD(["certfy"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: latentguard: unknown command 'certfy'") and "certify" in captured.err
    assert captured.err.count("\n") == 1 and "usage: latentguard" in captured.out
    with pytest.raises(ToolkitError, match="unknown defense"):
        LATENTGUARD(["--debug", "utility", "--defenses", "clampx"])
