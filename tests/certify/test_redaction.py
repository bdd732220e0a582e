"""No model output in plain text in anything a run writes, unless asked for.

The demo suite and the runner are driven with records that carry a unique marker as their
completion; every file of the output folder is searched for it. The refusal results writer
is checked on a fabricated result dict (no model is loaded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import certify.demo
from certify.cli import run
from certify.config import SuiteConfig
from certify.records import RecordStore, read_records
from certify.redact import redact_text
from certify.report import write_report
from certify.runner import run_suite
from certify.summary import summarize

MARKER = "MARKER-7f3a9c2e-harmful-step-one"
MARKER_HASH = redact_text(MARKER)["sha256"]


def _files_holding(folder: Path, needle: str) -> list[str]:
    """Every file under ``folder`` (any depth, binary ones too) whose bytes contain ``needle``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and needle.encode() in p.read_bytes())


def test_demo_run_writes_no_completion_anywhere(tmp_path, monkeypatch):
    original = certify.demo.evaluate_demo_unit

    def with_marker(unit, device="cpu"):
        records = original(unit, device)
        for r in records:
            if "completion" in r:
                r["completion"] = MARKER
                r["attempts"] = [{"generation": MARKER, "stage": "adam"}]  # nested, in a list
        return records

    monkeypatch.setattr(certify.demo, "evaluate_demo_unit", with_marker)
    out = tmp_path / "demo"
    run(SuiteConfig(suite="demo", out=str(out), n=4, progress=False))
    names = {p.name for p in out.iterdir()}
    assert {"records.jsonl", "summary.json", "summary.csv", "table.md", "flags.json", "report.html",
            "run.json"} <= names
    assert _files_holding(out, MARKER) == []
    # the completions were there and were redacted, not dropped: hash and length are stored
    records = read_records(out / "records.jsonl")
    redacted = [r for r in records if "completion" in r]
    assert redacted and all(r["completion"] == {"sha256": MARKER_HASH, "length": len(MARKER)} for r in redacted)
    assert redacted[0]["attempts"][0]["generation"]["sha256"] == MARKER_HASH
    assert "records.jsonl" in _files_holding(out, MARKER_HASH)


@dataclass(frozen=True)
class FakeUnit:
    key: str


def _fake_records(unit: FakeUnit) -> list[dict]:
    return [{"defense": "clamp", "setting": "s", "budget": 1.0, "sample_id": unit.key, "attack": "pgd",
             "stage": "adam", "seed": 0, "valid": True, "recovered": True, "completion": MARKER,
             "detail": {"response": MARKER, "steps": 3}}]


def test_runner_redacts_before_storing_unless_told_not_to(tmp_path):
    units = [FakeUnit("a"), FakeUnit("b")]
    with RecordStore(tmp_path / "red" / "records.jsonl") as store:
        run_suite(units, _fake_records, store, progress=False)
        stored = store.records()
    assert MARKER not in json.dumps(stored) and stored[0]["detail"]["response"]["sha256"] == MARKER_HASH
    assert _files_holding(tmp_path / "red", MARKER) == []

    with RecordStore(tmp_path / "plain" / "records.jsonl") as store:
        run_suite(units, _fake_records, store, progress=False, redact=False)
        plain = store.records()
    assert plain[0]["completion"] == MARKER
    # redacted records still summarise the same way
    assert [r.k_recovered for r in summarize(stored)] == [r.k_recovered for r in summarize(plain)]


def test_report_shows_completions_only_when_asked(tmp_path):
    records = _fake_records(FakeUnit("a"))
    rows = summarize(records)
    hidden = write_report(tmp_path / "hidden.html", rows, records=records).read_text()
    assert MARKER not in hidden and MARKER_HASH in hidden
    shown = write_report(tmp_path / "shown.html", rows, records=records, show_completions=True).read_text()
    assert MARKER in shown


def _refusal_results() -> dict:
    rate = {"k": 1, "n": 2, "alpha": 0.05, "rate": 0.5, "ci_low": 0.01, "ci_high": 0.99, "abstain": False}
    summary = {"nonrefusal": rate, "nonrefusal_within_drift": rate, "base_like": rate, "objective_success": rate,
               "drift_mean": 0.1, "drift_max": 0.1, "floor_violation_mean": 0.0, "rel_delta_norm_mean": 0.1,
               "labels": {"comply": 1, "refusal": 1}}
    record = {"request": "how to do a bad thing", "mode": "cross_layer", "budget": 0.2, "text": MARKER,
              "objective_success": True, "drift": 0.1, "floor_violation": 0.0, "label": "comply",
              "matched": "", "nonrefusal": True, "base_like": True, "jaccard": 0.5}
    return {
        "setting": "refusal", "config": {"seed": 0, "recovery": {"site": "blocks.6.hook_resid_post", "budget": 0.2,
                                                                  "steps": 2, "drift_threshold": 0.13,
                                                                  "max_new_tokens": 8}},
        "defense": {"summary": "refusal latents set to 7"}, "n_evaluated": 2, "n_valid": 1,
        "undefended_complies": rate, "defended_refuses": rate, "over_refusal_harmless": rate,
        "over_refusal_harmless_undefended": rate,
        "samples": [{"request": "how to do a bad thing", "undefended": MARKER, "undefended_label": "comply",
                     "defended": "I can't help with that.", "defended_label": "refusal"}],
        "harmless_samples": [{"request": "a poem", "defended": MARKER, "defended_label": "comply"}],
        "recovery": {"cross_layer": summary}, "records": {"cross_layer": [record]},
        "sweep": [{"budget": 0.0, **summary}], "replay": {}, "seconds": 1.0,
    }


def test_refusal_results_writer_redacts_unless_show_completions(tmp_path):
    from experiments.refusal.pipeline import redact_results, write_results

    results = _refusal_results()
    out = write_results(tmp_path / "refusal", results)
    assert _files_holding(out, MARKER) == []
    written = json.loads((out / "results.json").read_text())
    assert written["records"]["cross_layer"][0]["text"] == redact_text(MARKER)
    assert written["samples"][0]["undefended"]["sha256"] == MARKER_HASH
    assert written["samples"][0]["defended_label"] == "refusal"  # labels and prompts are kept
    assert written["samples"][0]["request"] == "how to do a bad thing"
    assert written["over_refusal_harmless_undefended"] == results["over_refusal_harmless_undefended"]
    assert (out / "results.md").read_text().startswith("**refusal**")
    assert results["records"]["cross_layer"][0]["text"] == MARKER  # the caller's dict is not changed
    assert redact_results(written) == written  # idempotent

    shown = write_results(tmp_path / "shown", results, show_completions=True)
    assert "results.json" in _files_holding(shown, MARKER)


def test_demo_run_with_show_completions_keeps_them(tmp_path, monkeypatch):
    original = certify.demo.evaluate_demo_unit

    def with_marker(unit, device="cpu"):
        return [{**r, "completion": MARKER} if "completion" in r else r for r in original(unit, device)]

    monkeypatch.setattr(certify.demo, "evaluate_demo_unit", with_marker)
    out = tmp_path / "demo"
    run(SuiteConfig(suite="demo", out=str(out), n=4, progress=False, show_completions=True))
    assert "report.html" in _files_holding(out, MARKER)
