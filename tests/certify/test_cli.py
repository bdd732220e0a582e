"""Config files, the demo suite end to end, and a run killed with SIGKILL then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from certify.cli import build_parser, config_from_args, main
from certify.config import SuiteConfig, load_config_file, resolve_config
from certify.records import read_records, strip_timing
from certify.schema import read_summary_file
from certify.suites import get_suite
from guard.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[2]
# small but complete: 2 settings x 3 defenses x 3 budgets = 18 units
ARGS = ["--suite", "demo", "--n", "4", "--budgets", "0", "1", "2", "--no-progress", "--option", "steps=15"]


def _records(out: Path) -> list[str]:
    return sorted(json.dumps(strip_timing(r), sort_keys=True) for r in read_records(out / "records.jsonl"))


def test_toml_and_yaml_configs_with_command_line_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('suite = "demo"\ndefenses = ["clamp", "none"]\nbudgets = [1, 2.5]\nn = 3\n'
                    'seed = 7\n[options]\nsteps = 5\nunit_delay_s = 0.5\n')
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("suite: demo\ndefenses: clamp,none\nbudgets: [1, 2.5]\nn: 3\nseed: 7\n"
                         "options: {steps: 5, unit_delay_s: 0.5}\n")
    for path in (toml, yaml_file):
        config = resolve_config(load_config_file(path))
        assert config == SuiteConfig(suite="demo", defenses=("clamp", "none"), budgets=(1.0, 2.5), n=3, seed=7,
                                     options=(("steps", 5), ("unit_delay_s", 0.5)))
    args = build_parser().parse_args(["run", "--config", str(toml), "--n", "9", "--defenses", "clamp",
                                      "--option", "steps=11", "--device", "cpu"])
    config = config_from_args(args)
    assert (config.n, config.defenses, config.seed) == (9, ("clamp",), 7)
    assert config.option_dict == {"steps": 11, "unit_delay_s": 0.5}  # one option replaced, not the table
    assert config.progress is True and config.show_completions is False


@pytest.mark.parametrize("data, match", [
    ({"budgest": [1]}, "unknown config key 'budgest'.*budgets"),
    ({"device": "tpu"}, "device"),
    ({"n": 0}, "n \\(samples"),
    ({"n": "many"}, "integer"),
    ({"budgets": [-1]}, "budgets"),
    ({"budgets": ["x"]}, "not a number"),
    ({"defenses": ["clamp", "clamp"]}, "distinct"),
    ({"show_completions": "yes"}, "true or false"),
])
def test_bad_config_is_named(data, match):
    with pytest.raises(ToolkitError, match=match):
        resolve_config(data)


def test_bad_files_and_suite_names(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("suite = \n")
    with pytest.raises(ToolkitError, match="cannot parse"):
        load_config_file(bad)
    with pytest.raises(ToolkitError, match="use a .toml"):
        load_config_file(_touch(tmp_path / "x.ini"))
    with pytest.raises(ToolkitError, match="unknown suite 'dem'.*demo"):
        get_suite("dem")
    with pytest.raises(ToolkitError, match="unknown defense 'clmap'.*clamp"):
        get_suite("demo").plan(SuiteConfig(suite="demo", defenses=("clmap",)))
    assert main(["run", "--suite", "demo", "--out", str(tmp_path / "o"), "--settings", "nope"]) == 2


@pytest.mark.parametrize("options, match", [
    ((("random_samples", 8),), "unknown option 'random_samples'"),  # random search is the cascade's last stage
    ((("steps", 0),), "'steps' must be >= 1"),
    ((("steps", "abc"),), "'steps' must be an integer"),
])
def test_demo_options_are_checked_before_any_work(options, match):
    with pytest.raises(ToolkitError, match=match):
        get_suite("demo").plan(SuiteConfig(suite="demo", options=options))


def _touch(path: Path) -> Path:
    path.write_text("")
    return path


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["run", "--out", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    result = json.loads(printed[-1])
    assert result["n_units"] == 18 and result["evaluated"] == 18 and result["flags"]["error"] == 0
    assert printed[0].startswith("| setting | defense |")
    for name in ("records.jsonl", "summary.json", "summary.csv", "table.md", "flags.json", "report.html",
                 "bypass_vs_budget.png", "utility_vs_bypass.png", "run.json"):
        assert (out / name).is_file(), name
    summary = read_summary_file(out / "summary.json")
    assert summary["schema_version"] == 2 and summary["provenance"]["subject"] == "demo-planted"
    rows = {(r["defense"], r["setting"], r["budget"]): r for r in summary["rows"]}
    # the planted clamp is recoverable with enough budget, never with none; clamp_wide is certified; none abstains
    assert rows[("clamp", "planted", 0.0)]["k_recovered"] == 0 and rows[("clamp", "planted", 0.0)]["n_valid"] > 0
    assert rows[("clamp", "planted", 2.0)]["rate"] > rows[("clamp", "planted", 0.0)]["rate"]
    assert rows[("clamp_wide", "planted", 2.0)]["k_recovered"] == 0
    assert rows[("clamp_wide", "planted", 2.0)]["k_certified"] == rows[("clamp_wide", "planted", 2.0)]["n_valid"]
    assert rows[("none", "planted", 1.0)]["rate"] is None
    attacked = [r for r in read_records(out / "records.jsonl") if r.get("valid")]
    assert attacked and all(r["attack"] == "cascade" and r["stage"] for r in attacked)  # attacks.runner's cascade
    html = (out / "report.html").read_text()
    shown = "completion&quot;: &quot;tok"  # the demo's completion text, as escaped in the HTML
    assert shown not in html  # completions are redacted (run_suite stores them as hash and length)
    # a second run finds everything done and changes nothing
    before = _records(out)
    assert main(["run", "--out", str(out), *ARGS]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["evaluated"] == 0
    assert _records(out) == before
    assert main(["report", "--out", str(out), "--show-completions"]) == 0
    assert _records(out) == before and read_summary_file(out / "summary.json")["rows"] == summary["rows"]


def test_killed_run_resumes_to_exactly_the_uninterrupted_records(tmp_path, capsys):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["run", "--out", str(full), *ARGS]) == 0
    expected = _records(full)

    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "certify", "run", "--out", str(killed), *ARGS, "--option", "unit_delay_s=0.3"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records_file = killed / "records.jsonl"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            if records_file.exists() and len({r["unit"] for r in read_records(records_file)}) >= 3:
                break
            if proc.poll() is not None:
                pytest.fail(f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no records written in time")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    partial = _records(killed)
    assert 0 < len(partial) < len(expected) and set(partial) <= set(expected)
    assert not (killed / "report.html").exists()
    with open(records_file, "ab") as fh:  # and as if the kill had landed in the middle of a write
        fh.write(b'{"attack": "pgd", "budget": 2.0, "defe')

    assert main(["run", "--out", str(killed), *ARGS]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["skipped"] >= 3 and result["skipped"] + result["evaluated"] == 18
    assert _records(killed) == expected
    killed_summary, full_summary = read_summary_file(killed / "summary.json"), read_summary_file(full / "summary.json")
    assert killed_summary["rows"] == full_summary["rows"]
    for key in ("config_sha256", "fingerprint_sha256"):  # the same run, by its hashes
        assert killed_summary["provenance"][key] == full_summary["provenance"][key]


def test_suites_of_other_packages_come_from_entry_points(monkeypatch):
    import certify.suites as suites_module
    from certify.suites import Suite, suites

    class Entry:
        def __init__(self, name, obj):
            self.name, self.value, self._obj = name, f"pkg:{name}", obj

        def load(self):
            return self._obj

    mine = Suite("mine", "certify.demo:build_demo", "a plugin suite")
    with suites_module.SUITES.scoped():
        monkeypatch.setattr(suites_module, "entry_points", lambda group: [Entry("mine", mine)])
        assert suites()["mine"] is mine and "demo" in suites()
        monkeypatch.setattr(suites_module, "entry_points", lambda group: [Entry("other", mine)])
        with pytest.raises(ToolkitError, match="must be a Suite named 'other'"):
            suites()
        monkeypatch.undo()
    assert "standard" in suites() and "mine" not in suites()  # the installed package's own entry points again


def test_utility_with_a_settings_own_fields_survives_the_meta_file():
    from certify.cli import _utility_from_json, _utility_to_json

    utility = {("clamp", "unlearning"): {"delta_ce": 0.02, "retain_acc": 0.6, "retain_drop": 0.03},
               ("clamp", "ioi"): 0.5, "splice": None}
    rows = json.loads(json.dumps(_utility_to_json(utility)))
    assert _utility_from_json(rows) == utility
