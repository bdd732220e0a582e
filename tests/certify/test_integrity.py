"""Results are never silently stale: a run resumes only into its own output directory.

Changed config fields, options, data or units are refused (before planning where the
command line shows the change), ``fresh`` keeps the old run aside, two runs never share a
directory, ``report`` never replaces outputs with empty or partial ones, every output is
written atomically, and summary.json is a versioned object with provenance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import certify.demo
import experiments.suites
from certify.cli import build_parser, config_from_args, main, run
from certify.config import SuiteConfig
from certify.files import OutLock, remove_stale_temps, write_bytes_atomic
from certify.provenance import (
    NON_RECORD_FIELDS,
    build_provenance,
    config_sha256,
    differences,
    git_commit,
    package_versions,
    record_config,
    sha256_file,
    sha256_tensors,
)
from certify.records import read_records, strip_timing
from certify.schema import SCHEMA_VERSION, read_summary_file
from certify.suites import get_suite
from guard.errors import ToolkitError

ROOT = Path(__file__).resolve().parents[2]
# 2 settings x 3 defenses x 3 budgets = 18 units
ARGS = ["--suite", "demo", "--n", "4", "--budgets", "0", "1", "2", "--no-progress", "--option", "steps=15"]
OUTPUTS = ("summary.json", "summary.csv", "table.md", "flags.json", "report.html", "bypass_vs_budget.png",
           "utility_vs_bypass.png")
STATE = ("records.jsonl", "run.json", *OUTPUTS)
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "OMP_WAIT_POLICY": "PASSIVE"}

# every SuiteConfig field that shapes records, with command-line arguments that change it
FIELD_CHANGES = {
    "suite": ["--suite", "standard"],
    "subject": ["--subject", "demo"],
    "settings": ["--settings", "planted"],
    "defenses": ["--defenses", "clamp", "none"],
    "budgets": ["--budgets", "0", "1"],
    "n": ["--n", "5"],
    "device": ["--device", "cuda"],
    "dtype": ["--dtype", "bfloat16"],
    "seed": ["--seed", "1"],
    "show_completions": ["--show-completions"],
    "plugins": ["--plugin", "certify.redact"],  # an importable module that registers nothing
    "threats": ["--threats", "residual", "embedding"],
}
DEMO_SUITE = get_suite("demo")
DEMO_OPTIONS = sorted(set(certify.demo.OPTION_DEFAULTS) - set(DEMO_SUITE.volatile_options))


def _changed(value):
    """A different value of the same type, as a command-line option text."""
    if isinstance(value, bool):
        return str(not value).lower()
    if isinstance(value, int):
        return str(value + 1)
    if isinstance(value, float):
        return str(value * 2 + 1)
    if isinstance(value, str):
        return value.replace("blocks.6.", "blocks.12.") if "blocks.6." in value else value + "_changed"
    if value is None:  # an optional number that is off: turn it on
        return "0.5"
    raise AssertionError(f"no changed value for {value!r}")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """One complete demo run, copied by each test that changes it."""
    out = tmp_path_factory.mktemp("base") / "out"
    assert main(["run", "--out", str(out), *ARGS]) == 0
    return out


@pytest.fixture
def done(base_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(base_run, out)
    return out


@pytest.fixture
def no_planning(monkeypatch):
    """Planning any suite fails the test: a refusal must come before any model is built."""
    def refuse(config):
        raise AssertionError("planned although the run should have been refused before planning")

    monkeypatch.setattr(certify.demo, "build_demo", refuse)
    monkeypatch.setattr(experiments.suites, "build_standard", refuse)


def _state(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in STATE if (out / name).exists()}


def _err(capsys) -> str:
    return capsys.readouterr().err


def _result(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _records(out: Path) -> list[str]:
    return sorted(json.dumps(strip_timing(r), sort_keys=True) for r in read_records(out / "records.jsonl"))


# ---- changed config: refused ------------------------------------------------------------

def test_every_record_field_has_a_change_case():
    fields = {f.name for f in dataclasses.fields(SuiteConfig)} - NON_RECORD_FIELDS
    assert fields == set(FIELD_CHANGES) | {"options"}, "add a case for the new config field to FIELD_CHANGES"


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_changed_config_field_is_refused_before_planning(done, field, no_planning, capsys):
    before = _state(done)
    assert main(["run", "--out", str(done), *ARGS, *FIELD_CHANGES[field]]) == 2
    err = _err(capsys)
    assert "holds a run with a different config" in err and f"{field}:" in err and "--fresh" in err
    assert _state(done) == before


@pytest.mark.parametrize("key", DEMO_OPTIONS)
def test_changed_demo_option_is_refused_before_planning(done, key, no_planning, capsys):
    before = _state(done)
    current = {"steps": 15}.get(key, certify.demo.OPTION_DEFAULTS[key])
    assert main(["run", "--out", str(done), *ARGS, "--option", f"{key}={_changed(current)}"]) == 2
    err = _err(capsys)
    assert f"options.{key}:" in err and "--fresh" in err
    assert _state(done) == before


@pytest.mark.parametrize("key", sorted(experiments.suites.OPTION_DEFAULTS))
def test_changed_standard_option_is_refused_before_planning(tmp_path, key, no_planning, capsys):
    out = tmp_path / "standard"
    out.mkdir()
    config = SuiteConfig(suite="standard", out=str(out), settings=("ioi", "recall"),
                         defenses=experiments.suites.buildable_defenses(), budgets=(0.02, 0.05, 0.2), n=24)
    (out / "run.json").write_text(json.dumps({"config": config.to_dict(), "units": [], "utility": [],
                                              "reference": "clamp", "notes": [], "fingerprint": {}}))
    changed = _changed(experiments.suites.OPTION_DEFAULTS[key])
    assert main(["run", "--suite", "standard", "--out", str(out), "--option", f"{key}={changed}"]) == 2
    err = _err(capsys)
    assert f"options.{key}:" in err and "different config" in err
    # the same option at its default value is no change: the run goes on to plan
    default = experiments.suites.OPTION_DEFAULTS[key]
    with pytest.raises(AssertionError, match="planned"):
        main(["run", "--suite", "standard", "--out", str(out), "--option",
              f"{key}={'null' if default is None else repr('') if default == '' else default}"])


def test_changed_default_is_refused_after_planning_before_any_unit(done, capsys):
    before = _state(done)
    # no --n now: the demo default (12) differs from the stored run's 4
    args = [a for a in ARGS if a not in ("--n", "4")]
    assert main(["run", "--out", str(done), *args]) == 2
    assert "n: 4 -> 12" in _err(capsys)
    assert _state(done) == before


def test_changed_fingerprint_is_refused(done, monkeypatch, capsys):
    before = _state(done)
    monkeypatch.setattr(certify.demo, "sha256_tensors", lambda tensors: "other-weights")
    assert main(["run", "--out", str(done), *ARGS]) == 2
    err = _err(capsys)
    assert "different plan fingerprint" in err and "fingerprint.world.planted:" in err
    assert _state(done) == before


def test_changed_units_and_foreign_records_are_refused(done, capsys):
    run_file = done / "run.json"
    meta = json.loads(run_file.read_text())
    run_file.write_text(json.dumps({**meta, "units": meta["units"][1:]}))
    assert main(["run", "--out", str(done), *ARGS]) == 2
    assert "different work units (0 of its 17 are not in this plan, 1 of this plan's 18 are new)" in _err(capsys)
    run_file.write_text(json.dumps(meta))
    foreign = {"defense": "clamp", "setting": "elsewhere", "budget": 0.0, "sample_id": "q", "attack": "-", "seed": 9,
               "unit": "from-another-run", "unit_size": 1}
    with open(done / "records.jsonl", "a") as fh:
        fh.write(json.dumps(foreign) + "\n")
    before = _state(done)
    assert main(["run", "--out", str(done), *ARGS]) == 2
    assert "1 work units that are not in this run's plan" in _err(capsys)
    assert _state(done) == before


def test_records_without_run_file_or_fingerprint_are_refused(done, capsys):
    meta = json.loads((done / "run.json").read_text())
    (done / "run.json").write_text(json.dumps({k: meta[k] for k in ("config", "utility", "reference", "notes",
                                                                    "units")}))  # an older toolkit's run file
    assert main(["run", "--out", str(done), *ARGS]) == 2
    assert "without a fingerprint" in _err(capsys)
    (done / "run.json").unlink()
    assert main(["run", "--out", str(done), *ARGS]) == 2
    assert "no run.json" in _err(capsys)
    assert main(["report", "--out", str(done)]) == 2


@pytest.mark.parametrize("extra", [
    ["--option", "unit_delay_s=0.001"],  # volatile
    # every other option at its default, given explicitly
    [a for k, v in certify.demo.OPTION_DEFAULTS.items() if k != "steps" for a in ("--option", f"{k}={v}")],
    ["--budgets", "2", "0", "1"],  # the same budgets in another order
    ["--alpha", "0.1"],
])
def test_changes_that_shape_no_record_resume(done, extra, capsys):
    records = _records(done)
    assert main(["run", "--out", str(done), *ARGS, *extra]) == 0
    assert _result(capsys)["evaluated"] == 0
    assert _records(done) == records
    if "--alpha" in extra:
        assert {r["alpha"] for r in read_summary_file(done / "summary.json")["rows"]} == {0.1}


def test_fresh_starts_over_and_keeps_the_old_run_aside(done, capsys):
    old = _state(done)
    config = config_from_args(build_parser().parse_args(["run", "--out", str(done), *ARGS, "--seed", "3"]))
    outcome = run(config, fresh=True)
    assert outcome["result"]["evaluated"] == 18 and outcome["result"]["skipped"] == 0
    (aside,) = done.glob("previous-*")
    assert "moved the earlier run's files" in _err(capsys)
    assert {name: (aside / name).read_bytes() for name in STATE if (aside / name).exists()} == old
    assert {r["seed"] for r in read_records(done / "records.jsonl")} == {3}
    meta = json.loads((done / "run.json").read_text())
    assert meta["status"] == "complete" and meta["config"]["seed"] == 3
    # a fresh run on an empty folder just runs; a second fresh run keeps both earlier ones
    run(config, fresh=True)
    assert len(list(done.glob("previous-*"))) == 2


# ---- one run at a time ------------------------------------------------------------------

def test_concurrent_runs_on_one_out_second_fails_at_once(tmp_path):
    out = tmp_path / "shared"
    args = ["--suite", "demo", "--n", "3", "--budgets", "0", "1", "--no-progress", "--option", "steps=5",
            "--option", "unit_delay_s=0.3"]
    procs = [subprocess.Popen([sys.executable, "-m", "certify", "run", "--out", str(out), *args, "--seed", str(seed)],
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for seed in (1, 2)]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        results.append((proc.returncode, err.decode()))
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "is in use by another run (pid" in loser, loser
    winner_seed = json.loads((out / "run.json").read_text())["config"]["seed"]
    assert {r["seed"] for r in read_records(out / "records.jsonl")} == {winner_seed}  # no mixed seeds


def test_locked_out_refuses_run_and_report(done, no_planning, capsys):
    before = _state(done)
    with OutLock(done):
        assert main(["run", "--out", str(done), *ARGS]) == 2
        assert f"in use by another run (pid {os.getpid()})" in _err(capsys)
        assert main(["report", "--out", str(done)]) == 2
        assert "in use by another run" in _err(capsys)
    assert _state(done) == before


# ---- report never replaces outputs with empty or partial ones ----------------------------

def test_report_without_records_is_refused_and_leaves_outputs(done, capsys):
    (done / "records.jsonl").unlink()
    before = _state(done)
    assert main(["report", "--out", str(done)]) == 2
    assert "records.jsonl not found" in _err(capsys)
    assert _state(done) == before and not (done / "records.jsonl").exists()


def test_report_with_fewer_units_than_the_run_is_refused(done, capsys):
    lines = (done / "records.jsonl").read_bytes().splitlines(keepends=True)
    units = []
    for line in lines:
        unit = json.loads(line)["unit"]
        if unit not in units:
            units.append(unit)
    kept = [line for line in lines if json.loads(line)["unit"] in units[:5]]
    (done / "records.jsonl").write_bytes(b"".join(kept) + b'{"torn": ')
    before = _state(done)
    assert main(["report", "--out", str(done)]) == 2
    assert "holds 5 of the 18 work units" in _err(capsys)
    assert _state(done) == before  # records.jsonl not repaired either: report changes nothing it reads


def test_report_skips_a_torn_tail_without_repairing_it(done, capsys):
    with open(done / "records.jsonl", "ab") as fh:
        fh.write(b'{"attack": "pgd", "bud')
    records = (done / "records.jsonl").read_bytes()
    assert main(["report", "--out", str(done), "--show-completions"]) == 0
    assert (done / "records.jsonl").read_bytes() == records
    assert _result(capsys)["n_records"] == len(read_records(done / "records.jsonl"))


def test_report_on_a_folder_without_a_run_is_refused(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path)]) == 2
    assert "run.json not found" in _err(capsys)
    assert not (tmp_path / "summary.json").exists()


# ---- atomic outputs ------------------------------------------------------------------------

def _temps(out: Path) -> list[Path]:
    return sorted(out.glob(".*.tmp"))


@pytest.mark.parametrize("name", OUTPUTS)
@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failed_write_leaves_the_old_complete_file(done, monkeypatch, name, failing):
    for output in OUTPUTS:  # old files that differ from anything the report writes
        (done / output).write_bytes(f"old complete {output}".encode())
    before = _state(done)
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, *a, **k):
        if Path(dst).name == name:
            raise OSError("disk full (simulated)")
        return real_replace(src, dst, *a, **k)

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rpartition("/")[2].startswith(f".{name}."):
            raise OSError("I/O error (simulated)")
        return real_fsync(fd)

    if failing == "replace":
        monkeypatch.setattr(os, "replace", replace)
    else:
        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="simulated"):
        main(["report", "--out", str(done), "--show-completions"])
    assert (done / name).read_bytes() == before[name]  # the old file, complete
    assert _temps(done) == []  # and no partial one left beside it
    for output in OUTPUTS:  # every other file is the old one or a complete new one
        data = (done / output).read_bytes()
        if data != before[output] and output.endswith(".json"):
            json.loads(data)
        elif data != before[output] and output.endswith(".png"):
            assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")
    monkeypatch.undo()
    assert main(["report", "--out", str(done), "--show-completions"]) == 0
    read_summary_file(done / "summary.json")


def test_killed_while_writing_outputs_old_files_stay_whole(done):
    meta = json.loads((done / "run.json").read_text())
    note = "re-rendered after a kill"
    (done / "run.json").write_text(json.dumps({**meta, "notes": [*meta["notes"], note]}))
    before = _state(done)
    script = textwrap.dedent(f"""
        import os, sys, time
        real = os.replace
        def slow(src, dst, *a, **k):
            if os.path.basename(dst) == "report.html":
                print("writing", flush=True)
                time.sleep(120)
            return real(src, dst, *a, **k)
        os.replace = slow
        from certify.cli import main
        sys.exit(main(["report", "--out", {str(done)!r}, "--show-completions"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"writing", proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert (done / "report.html").read_bytes() == before["report.html"]  # the complete old report
    assert [p.name.split(".")[1] for p in _temps(done)] == ["report"]  # the new one never got its name
    read_summary_file(done / "summary.json")
    assert main(["report", "--out", str(done), "--show-completions"]) == 0
    assert _temps(done) == [] and note.encode() in (done / "report.html").read_bytes()
    assert note.encode() not in before["report.html"]


def test_write_bytes_atomic_and_stale_temps(tmp_path):
    path = write_bytes_atomic(tmp_path / "a.bin", b"one")
    assert path.read_bytes() == b"one" and oct(path.stat().st_mode & 0o777) == "0o644"
    write_bytes_atomic(path, b"two")
    assert path.read_bytes() == b"two" and _temps(tmp_path) == []
    (tmp_path / ".a.bin.xyz.tmp").write_bytes(b"half")
    assert [p.name for p in remove_stale_temps(tmp_path)] == [".a.bin.xyz.tmp"]
    assert path.read_bytes() == b"two"


# ---- summary.json schema and provenance ------------------------------------------------------

def test_summary_has_schema_version_and_provenance(done):
    summary = read_summary_file(done / "summary.json")
    meta = json.loads((done / "run.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION == 2
    prov = summary["provenance"]
    assert set(prov) == {"latentguard_version", "git_commit", "packages", "subject", "saes", "config_sha256",
                         "fingerprint_sha256", "started", "finished", "device"}
    assert prov["subject"] == "demo-planted" and prov["device"] == "cpu"
    assert prov["config_sha256"] == meta["config_sha256"] == config_sha256(meta["record_config"])
    assert prov["fingerprint_sha256"] == meta["fingerprint_sha256"] == config_sha256(meta["fingerprint"])
    assert set(prov["packages"]) == {"torch", "transformer-lens", "sae-lens", "numpy", "scipy"}
    assert prov["started"] <= prov["finished"] and meta["status"] == "complete"
    assert len(summary["rows"]) == 18 and {"defense", "setting", "budget"} <= set(summary["rows"][0])
    assert prov == meta["provenance"]


def test_old_summary_versions_are_refused_by_name(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps([{"defense": "clamp"}]))
    with pytest.raises(ToolkitError, match=r"schema version 1 \(a list of rows\); this toolkit reads version 2"):
        read_summary_file(path)
    path.write_text(json.dumps({"schema_version": 3, "rows": [], "provenance": {}}))
    with pytest.raises(ToolkitError, match="schema version 3"):
        read_summary_file(path)
    path.write_text("{not json")
    with pytest.raises(ToolkitError, match="cannot read"):
        read_summary_file(path)
    with pytest.raises(ToolkitError, match="not found"):
        read_summary_file(tmp_path / "none.json")


def test_provenance_helpers(tmp_path):
    assert config_sha256({"a": 1, "b": [1, 2]}) == config_sha256({"b": (1, 2), "a": 1})
    assert config_sha256({"a": 1}) != config_sha256({"a": 2})
    t = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    base = sha256_tensors(t)
    assert base == sha256_tensors(dict(reversed(list(t.items()))))
    for other in ({**t, "w": t["w"].reshape(3, 2)}, {**t, "w": t["w"].double()}, {"v": t["w"], "b": t["b"]},
                  {**t, "w": t["w"] + 1e-6}):
        assert sha256_tensors(other) != base
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert git_commit(tmp_path) is None  # not a checkout: None, not an error
    assert git_commit(tmp_path / "missing") is None
    assert set(package_versions()) == {"torch", "transformer-lens", "sae-lens", "numpy", "scipy"}
    prov = build_provenance({"suite": "x", "subject": "s"}, {}, "t0", None, "cpu")
    assert prov["subject"] == "s" and prov["saes"] is None and prov["finished"] is None and "setup" not in prov
    measured = build_provenance({"suite": "x"}, {}, "t0", None, "cpu", {"clamp_selection": {"ioi": {"x": 0.5}}})
    assert measured["setup"] == {"clamp_selection": {"ioi": {"x": 0.5}}}
    assert measured["fingerprint_sha256"] == prov["fingerprint_sha256"]  # recorded, never compared
    cfg = {"suite": "demo", "out": "a", "alpha": 0.1, "progress": True, "show_completions": True, "budgets": [2, 1],
           "device": "cuda:1", "options": {"unit_delay_s": 1, "steps": 40}}
    assert record_config(cfg, {"steps": 40, "random_samples": 64}, ["unit_delay_s"]) == {
        "suite": "demo", "budgets": [1, 2], "device": "cuda", "show_completions": True,
        "options": {"random_samples": 64, "steps": 40}}
    assert differences({"a": {"b": 1}, "c": 1}, {"a": {"b": 2}, "d": 1}) == [
        "a.b: 1 -> 2", "c: 1 -> (absent)", "d: (absent) -> 1"]
