"""Plots and the self-contained HTML report (redaction included)."""

from __future__ import annotations

import base64
import hashlib
import re

from certify.checks import run_checks
from certify.plots import plot_bypass_vs_budget, plot_utility_vs_bypass
from certify.redact import redact_record, redact_text
from certify.report import render_report, write_report
from certify.summary import markdown_table, summarize

SECRET = "step one: the harmful text"


def _records():
    out = []
    for defense in ("clamp", "shield"):
        for budget in (0.0, 1.0, 2.0):
            for i in range(5):
                hit = defense == "clamp" and budget > 0 and i < 2 * budget
                out.append({"defense": defense, "setting": "s", "budget": budget, "sample_id": f"x{i}",
                            "attack": "pgd", "seed": 0, "valid": True, "recovered": hit,
                            "completion": SECRET if hit else "I can't help", "timing": {"unit_seconds": 0.1}})
    out.append({"defense": "none", "setting": "s", "budget": 1.0, "sample_id": "x0", "attack": "-", "seed": 0,
                "valid": False, "recovered": None})
    return out


def test_plots_write_pngs_and_skip_when_nothing_to_draw(tmp_path):
    rows = summarize(_records(), utility={"clamp": 0.0, "shield": 0.2, "none": 0.0})
    for fn, name in ((plot_bypass_vs_budget, "a.png"), (plot_utility_vs_bypass, "b.png")):
        path = fn(rows, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    abstain_only = [r for r in rows if r.rate is None]
    assert abstain_only and plot_bypass_vs_budget(abstain_only, tmp_path / "c.png") is None
    assert plot_utility_vs_bypass(summarize(_records()), tmp_path / "d.png") is None  # no utility given
    assert not (tmp_path / "c.png").exists()


def test_report_is_self_contained_and_redacts_completions(tmp_path):
    records = _records()
    rows = summarize(records, utility={"clamp": 0.0, "shield": 0.2})
    png = plot_bypass_vs_budget(rows, tmp_path / "bypass.png")
    path = write_report(tmp_path / "report.html", rows, run_checks(records, rows), config={"suite": "t"},
                        notes=["a <note>"], images={"Bypass": png}, records=records)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", text)  # nothing fetched from outside
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 1 and base64.b64decode(images[0]) == png.read_bytes()
    assert SECRET not in text and redact_text(SECRET)["sha256"] in text
    assert "abstain (n=0)" in text and "a &lt;note&gt;" in text
    shown = render_report(rows, records=records, show_completions=True)
    assert SECRET in shown


def test_redact_record_nested_and_opt_in():
    record = {"completion": "x", "base_completion": "y", "generations": ["a", "b"], "score": 1.0,
              "attack": {"response_text": "z", "steps": 3}, "prompt": "kept",
              "attempts": [{"completion": "w", "stage": "adam"}], "generation_seconds": 2.0}
    red = redact_record(record)
    assert red["completion"] == redact_text("x") and red["base_completion"] == redact_text("y")
    assert red["generations"] == [redact_text("a"), redact_text("b")]
    assert red["attack"] == {"response_text": redact_text("z"), "steps": 3}
    assert red["attempts"] == [{"completion": redact_text("w"), "stage": "adam"}]  # inside lists too
    assert red["score"] == 1.0 and red["prompt"] == "kept" and red["generation_seconds"] == 2.0
    assert record["completion"] == "x"  # the input is not modified
    assert redact_record(red) == red  # redacting twice changes nothing
    assert redact_record(record, show_completions=True) == record
    assert redact_record({"text": "t", "context": "c"}, exact=("text",)) == {"text": redact_text("t"), "context": "c"}


def test_redact_text_is_the_sha256_of_the_utf8_text_and_its_length_in_characters():
    assert redact_text("Grüße") == {"sha256": hashlib.sha256("Grüße".encode()).hexdigest(), "length": 5}
    assert redact_text("") == {"sha256": hashlib.sha256(b"").hexdigest(), "length": 0}


def test_labels_follow_alpha(tmp_path, monkeypatch):
    records = _records()
    rows = summarize(records, utility={"clamp": 0.0, "shield": 0.2}, alpha=0.1)
    text = render_report(rows, run_checks(records, rows), records=records)
    assert "90% CI" in text and "exact 90% Clopper-Pearson" in text and "95%" not in text
    table = markdown_table(rows)
    assert "rate [90% CI]" in table.splitlines()[0] and "95%" not in table
    assert "rate [95% CI]" in markdown_table(summarize(records)).splitlines()[0]
    from matplotlib.axes import Axes

    drawn: list[str] = []

    def spy(original):
        def wrapped(ax, label, *args, **kwargs):
            drawn.append(label)
            return original(ax, label, *args, **kwargs)
        return wrapped

    for name in ("set_title", "set_ylabel"):
        monkeypatch.setattr(Axes, name, spy(getattr(Axes, name)))
    assert plot_bypass_vs_budget(rows, tmp_path / "a.png") is not None
    assert plot_utility_vs_bypass(rows, tmp_path / "b.png") is not None
    assert any("90%" in t for t in drawn) and not any("95%" in t for t in drawn)
    drawn.clear()
    plot_bypass_vs_budget(rows, tmp_path / "c.png", alpha=0.01)
    assert any("99%" in t for t in drawn)
