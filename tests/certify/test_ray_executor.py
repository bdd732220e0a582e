"""The Ray executor: the demo suite's records equal the serial run's, and a killed worker loses nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from certify.cli import main

pytest.importorskip("ray")  # the ray extra, which scripts/install.sh installs

KILLER = '''
import dataclasses, os, signal
from pathlib import Path

from certify.demo import build_demo
from certify.suites import Suite, register_suite

MARKER = Path({marker!r})


def build(config):
    plan = build_demo(config)
    first = plan.units[0]

    def evaluate(unit):
        records = plan.evaluate_unit(unit)
        if unit == first and not MARKER.exists():  # the unit's work is done, its result not yet returned
            MARKER.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return records

    return dataclasses.replace(plan, evaluate_unit=evaluate)


register_suite(Suite("demo_kill_once", build, option_defaults="certify.demo:OPTION_DEFAULTS"), replace=True)
'''

BROKEN = '''
import dataclasses

from certify.demo import build_demo
from certify.suites import Suite, register_suite
from guard.errors import ToolkitError


def build(config):
    def evaluate(unit):
        raise ToolkitError("demo_broken: this unit cannot be evaluated")

    return dataclasses.replace(build_demo(config), evaluate_unit=evaluate)


register_suite(Suite("demo_broken", build, option_defaults="certify.demo:OPTION_DEFAULTS"), replace=True)
'''


def records_of(out: Path) -> list[str]:
    """The run's records without their timing, one JSON text each, sorted."""
    lines = (json.loads(line) for line in (out / "records.jsonl").read_text().splitlines())
    return sorted(json.dumps({k: v for k, v in r.items() if k != "timing"}, sort_keys=True) for r in lines)


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial")
    assert main(["run", "--suite", "demo", "--out", str(out), "--no-progress"]) == 0
    return out


def test_ray_run_gives_the_serial_runs_records(serial_run, tmp_path, capsys):
    out = tmp_path / "ray"
    assert main(["run", "--suite", "demo", "--out", str(out), "--no-progress", "--executor", "ray",
                 "--workers", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["evaluated"] == result["n_units"] == 36
    assert records_of(out) == records_of(serial_run)
    assert (out / "summary.csv").read_text() == (serial_run / "summary.csv").read_text()
    # the run is resumable like a serial one: the same command finds every unit done
    assert main(["run", "--suite", "demo", "--out", str(out), "--no-progress", "--executor", "ray",
                 "--workers", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 36


def test_a_killed_worker_has_its_unit_retried_with_no_record_lost_or_duplicated(serial_run, tmp_path, capsys):
    marker = tmp_path / "killed"
    plugin = tmp_path / "kill_once.py"
    plugin.write_text(KILLER.format(marker=str(marker)))
    out = tmp_path / "ray"
    assert main(["run", "--suite", "demo_kill_once", "--plugin", str(plugin), "--out", str(out), "--no-progress",
                 "--executor", "ray", "--workers", "2"]) == 0
    killed = int(marker.read_text())
    assert killed != os.getpid()
    with pytest.raises(ProcessLookupError):  # the worker process is gone
        os.kill(killed, 0)
    assert records_of(out) == records_of(serial_run)
    lines = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    units = [r["unit"] for r in lines]
    assert len(set(units)) == 36 and len(units) == len(records_of(serial_run))


def test_a_units_own_error_ends_the_run_in_one_line(tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN)
    assert main(["run", "--suite", "demo_broken", "--plugin", str(plugin), "--out", str(tmp_path / "out"),
                 "--no-progress", "--executor", "ray", "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: demo_broken: this unit cannot be evaluated"


def test_bad_executor_options_fail_before_any_work(tmp_path, capsys):
    for argv, message in ((["--executor", "dask"], "executor must be one of serial, ray"),
                          (["--executor", "ray", "--workers", "0"], "workers must be an integer >= 1"),
                          (["--ray-address", "auto"], "ray_address is for the ray executor")):
        assert main(["run", "--suite", "demo", "--out", str(tmp_path / "x"), *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "records.jsonl").exists()
