"""``certify merge`` keeps every record of comparable runs or refuses; ``certify leaderboard`` renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certify.cli import main
from certify.compare import compare_runs
from certify.merge import merge_runs
from certify.records import read_records, strip_timing
from certify.schema import read_summary_file
from certify.stats import mcnemar
from guard.errors import ToolkitError

BASE = ["--suite", "demo", "--n", "3", "--budgets", "0", "2", "--no-progress", "--option", "steps=10"]


def _run(out: Path, *extra: str) -> Path:
    assert main(["run", "--out", str(out), *BASE, *extra]) == 0
    return out


def _records(out: Path) -> list[str]:
    return sorted(json.dumps(strip_timing(r), sort_keys=True) for r in read_records(out / "records.jsonl"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "clamp": _run(root / "clamp", "--defenses", "clamp"),
        "both": _run(root / "both", "--defenses", "clamp", "clamp_wide"),  # shares clamp's units with "clamp"
        "wide": _run(root / "wide", "--defenses", "clamp_wide"),
        "seed": _run(root / "seed", "--defenses", "clamp_wide", "--seed", "3"),
    }


def _keys(out: Path) -> set[str]:
    return {json.dumps([r["defense"], r["setting"], r["budget"], r["sample_id"]]) for r in read_records(out / "records.jsonl")}


def test_merge_keeps_every_record_once_and_renders(runs, tmp_path, capsys):
    merged = tmp_path / "merged"
    assert main(["merge", str(runs["clamp"]), str(runs["both"]), "--out", str(merged)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the union of both runs, each shared unit once: exactly the records of the larger run
    assert _keys(merged) == _keys(runs["clamp"]) | _keys(runs["both"]) == _keys(runs["both"])
    assert len(read_records(merged / "records.jsonl")) == len(read_records(runs["both"] / "records.jsonl"))
    assert result["n_records"] == len(read_records(merged / "records.jsonl"))
    rows = {(r["defense"], r["setting"], r["budget"]) for r in read_summary_file(merged / "summary.json")["rows"]}
    assert {d for d, _, _ in rows} == {"clamp", "clamp_wide"} and (merged / "report.html").is_file()
    meta = json.loads((merged / "run.json").read_text())
    assert meta["merged_from"] == [str(runs["clamp"]), str(runs["both"])]
    # disjoint defenses of the same samples merge too; certify report re-renders the merged run unchanged
    other = tmp_path / "other"
    merge_runs([runs["clamp"], runs["wide"]], other)
    assert _keys(other) == _keys(runs["clamp"]) | _keys(runs["wide"])
    before = _records(other)
    assert main(["report", "--out", str(other)]) == 0 and _records(other) == before


def test_merge_refuses_incomparable_runs_and_writes_nothing(runs, tmp_path):
    # another seed draws other samples: the same setting's samples differ
    with pytest.raises(ToolkitError, match="differ in"):
        merge_runs([runs["wide"], runs["seed"]], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ToolkitError, match="at least two"):
        merge_runs([runs["wide"]], tmp_path / "one")
    with pytest.raises(ToolkitError, match="already holds a run"):
        merge_runs([runs["clamp"], runs["wide"]], runs["both"])
    with pytest.raises(ToolkitError, match="not found"):
        merge_runs([runs["clamp"], tmp_path / "missing"], tmp_path / "m")
    assert main(["merge", str(runs["wide"]), str(runs["seed"]), "--out", str(tmp_path / "cli")]) == 2


def test_a_conflicting_shared_unit_is_refused(runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["clamp"], copy)
    lines = (copy / "records.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["stage"] = "tampered"
    (copy / "records.jsonl").write_text("\n".join([json.dumps(first, sort_keys=True), *lines[1:]]) + "\n")
    with pytest.raises(ToolkitError, match="records of work unit"):
        merge_runs([runs["both"], copy], tmp_path / "m")


def test_a_field_keyed_by_setting_must_agree_on_shared_settings_only(runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["wide"], copy)
    meta = json.loads((copy / "run.json").read_text())
    setting = sorted(meta["fingerprint"]["world"])[0]
    meta["fingerprint"]["world"][setting] = "another world"  # e.g. other samples of that setting
    (copy / "run.json").write_text(json.dumps(meta))
    with pytest.raises(ToolkitError, match=f"world of setting '{setting}'"):
        merge_runs([runs["clamp"], copy], tmp_path / "m")


def test_leaderboard_renders_every_run_and_defense(runs, tmp_path, capsys):
    table_file = tmp_path / "board.md"
    assert main(["leaderboard", str(runs["clamp"]), str(runs["wide"]), "--out", str(table_file)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    table = table_file.read_text()
    assert table in printed
    summary = read_summary_file(runs["clamp"] / "summary.json")["rows"]
    settings = {r["setting"] for r in summary}
    assert result["rows"] == 2 * len(settings) and result["runs"] == 2
    for setting in settings:
        assert f"### {setting}" in table
        row = next(r for r in summary if r["setting"] == setting and r["defense"] == "clamp" and r["budget"] == 2.0)
        if row["rate"] is not None:
            assert f"| clamp | {runs['clamp']} |" in table and f"{row['k_recovered']}/{row['n_valid']}" in table
    assert main(["leaderboard", str(tmp_path / "nothing")]) == 2


def _recovered(out: Path) -> dict[tuple, dict[str, bool]]:
    cells: dict[tuple, dict[str, bool]] = {}
    for r in read_records(out / "records.jsonl"):
        if r["valid"] and r["budget"] > 0:
            cells.setdefault((r["setting"], r["defense"], r["budget"]), {})[r["sample_id"]] = r["recovered"]
    return cells


def test_compare_pairs_samples_and_tests_them(runs, tmp_path, capsys):
    out = tmp_path / "compare.md"
    assert main(["compare", str(runs["wide"]), str(runs["seed"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed.strip().splitlines()[-1])
    compared = compare_runs(runs["wide"], runs["seed"])
    assert result["rows"] == len(compared["rows"]) > 0 and out.read_text() in printed
    a, b = _recovered(runs["wide"]), _recovered(runs["seed"])
    for row in compared["rows"]:
        key = (row["setting"], row["defense"], row["budget"])
        shared = set(a[key]) & set(b[key])
        assert row["a"]["k_recovered"] == sum(a[key].values()) and row["a"]["n_valid"] == len(a[key])
        assert row["b"]["k_recovered"] == sum(b[key].values()) and row["n_paired"] == len(shared)
        assert row["a_only"] == sum(a[key][s] and not b[key][s] for s in shared)
        assert row["b_only"] == sum(b[key][s] and not a[key][s] for s in shared)
        assert row["p_value"] == mcnemar(row["a_only"], row["b_only"]).p_value
    same = compare_runs(runs["wide"], runs["wide"])
    assert same["differences"] == [] and all(r["a_only"] == r["b_only"] == 0 and r["p_value"] == 1 for r in same["rows"])
    with pytest.raises(ToolkitError, match="share no"):  # different defenses: nothing to pair
        compare_runs(runs["clamp"], runs["wide"])
