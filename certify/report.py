"""One self-contained HTML report: inline CSS, images embedded as base64, no external links.

Shows the run configuration, the summary table (rates with exact intervals at the run's
confidence level, McNemar tests against the reference defense raw and Holm-adjusted, drift,
utility cost), the sanity flags, the plots, notes and a few example records. Completion
texts in the examples are replaced by their hash and length (``certify.redact``) unless
``show_completions=True``.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from certify.checks import CheckResult, Flag
from certify.files import write_text_atomic
from certify.records import TIMING_FIELD, UNIT_FIELD, UNIT_SIZE_FIELD
from certify.redact import redact_record
from certify.stats import confidence_label
from certify.summary import SummaryRow, rows_alpha, show_threats

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.abstain td { color: #888; font-style: italic; }
.error { color: #a00; font-weight: 600; } .warning { color: #a60; } .info { color: #555; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
pre { background: #f7f7f7; padding: .5em; overflow-x: auto; font-size: .8em; }
.muted { color: #777; font-size: .9em; }
"""

_COLUMNS = (
    ("setting", "setting"), ("defense", "defense"), ("threat", "threat"), ("budget", "budget"),
    ("n_present", "present"), ("n_valid", "valid"), ("k_recovered", "recovered"), ("rate", "rate"),
    ("ci", "{level} CI"), ("mcnemar", "McNemar p vs ref (b, c)"), ("p_holm", "Holm p"),
    ("k_certified", "certified"), ("n_first_recovered", "first recovered here"), ("stages", "recovered by stage"),
    ("drift", "drift med / max"), ("rel_delta_norm_median", "rel. delta norm"), ("delta_ce", "delta CE"),
    ("utility", "other utility"), ("verified", "verified"), ("n_abstain", "abstain"),
)
_LEFT = ("setting", "defense", "threat", "stages", "utility")


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def _cell(row: SummaryRow, key: str) -> str:
    if key == "rate":
        return "abstain (n=0)" if row.rate is None else f"{row.rate:.3f}"
    if key == "ci":
        return "-" if row.rate is None else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
    if key == "mcnemar":
        if row.mcnemar_p is None:
            return "-"
        return f"{row.mcnemar_p:.3g} vs {html.escape(str(row.reference))} ({row.mcnemar_b}, {row.mcnemar_c})"
    if key == "drift":
        return f"{_num(row.drift_median)} / {_num(row.drift_max)}"
    if key == "budget":
        return f"{row.budget:g}"
    if key == "stages":
        return ", ".join(f"{html.escape(str(s))}: {n}" for s, n in row.stage_counts.items()) or "-"
    if key == "utility":
        other = {k: v for k, v in row.utility.items() if k != "delta_ce"}
        return ", ".join(f"{html.escape(str(k))} {_num(v)}" for k, v in other.items()) or "-"
    if key == "verified":
        return "-" if row.verified is None else ("yes" if row.verified else "no")
    return _num(getattr(row, key))


def _columns(rows: Sequence[SummaryRow]) -> list[tuple[str, str]]:
    """The table's columns: the threat, utility and verified ones only when some row has them."""
    keep = []
    for key, title in _COLUMNS:
        if key == "threat" and not show_threats(rows):
            continue
        if key == "n_present" and all(r.n_present is None for r in rows):
            continue
        if key == "utility" and not any(set(r.utility) - {"delta_ce"} for r in rows):
            continue
        if key == "verified" and all(r.verified is None for r in rows):
            continue
        keep.append((key, title))
    return keep


def summary_table_html(rows: Sequence[SummaryRow], alpha: float | None = None) -> str:
    rows = list(rows)
    level = confidence_label(rows_alpha(rows, alpha))
    columns = _columns(rows)
    head = "".join(f'<th class="{"l" if k in _LEFT else ""}">{html.escape(t.format(level=level))}</th>'
                   for k, t in columns)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{"l" if k in _LEFT else ""}">{_cell(row, k)}</td>' for k, _ in columns)
        body.append(f'<tr class="{"abstain" if row.rate is None else ""}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def flags_html(flags: Sequence[Flag]) -> str:
    if not flags:
        return "<p>No sanity flags raised.</p>"
    items = []
    for f in flags:
        threat = None if f.threat == "residual" else f"{f.threat} threat"
        where = ", ".join(x for x in (f.defense, f.setting, threat, None if f.budget is None else f"budget {f.budget:g}")
                          if x)
        examples = "".join(f"<li>{html.escape(e)}</li>" for e in f.examples)
        items.append(
            f'<li><span class="{html.escape(f.severity)}">[{html.escape(f.severity)}] {html.escape(f.kind)}</span>'
            f" ({html.escape(where)}): {html.escape(f.message)}"
            + (f'<ul class="muted">{examples}</ul>' if examples else "") + "</li>"
        )
    return f"<ul>{''.join(items)}</ul>"


def checks_html(checks: Sequence[CheckResult]) -> str:
    """One row per check: its status, and why where it could not be evaluated."""
    rows = "".join(f'<tr><td class="l">{html.escape(c.check)}</td><td class="l">{html.escape(c.status)}</td>'
                   f'<td class="l">{len(c.flags)}</td><td class="l">{html.escape(c.reason)}</td></tr>' for c in checks)
    return ('<table><thead><tr><th class="l">check</th><th class="l">status</th><th class="l">flags</th>'
            f'<th class="l">why not applicable</th></tr></thead><tbody>{rows}</tbody></table>')


def _image_html(title: str, path: str | os.PathLike[str]) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"><figcaption>' \
           f"{html.escape(title)}</figcaption></figure>"


def _examples_html(records: Sequence[dict[str, Any]], show_completions: bool, limit: int) -> str:
    hidden = {TIMING_FIELD, UNIT_FIELD, UNIT_SIZE_FIELD}
    chosen = [r for r in records if r.get("recovered")][:limit]
    if not chosen:
        return "<p>No recovered samples.</p>"
    blocks = []
    for r in chosen:
        shown = redact_record({k: v for k, v in r.items() if k not in hidden}, show_completions)
        blocks.append(f"<pre>{html.escape(json.dumps(shown, indent=1, sort_keys=True))}</pre>")
    note = "" if show_completions else '<p class="muted">Completion texts are redacted to their SHA-256 ' \
                                        "hash and length (run with --show-completions to include them).</p>"
    return note + "".join(blocks)


def render_report(
    rows: Sequence[SummaryRow],
    flags: Sequence[Flag] = (),
    *,
    title: str = "latentguard: adaptive evaluation",
    config: Mapping[str, Any] | None = None,
    notes: Iterable[str] = (),
    images: Mapping[str, str | os.PathLike[str] | None] | None = None,
    records: Sequence[dict[str, Any]] = (),
    show_completions: bool = False,
    max_examples: int = 10,
    run_info: Mapping[str, Any] | None = None,
    alpha: float | None = None,
    checks: Sequence[CheckResult] = (),
) -> str:
    """The report as one HTML string (everything inline).

    ``alpha`` sets the confidence level named in the texts; None: the rows' own alpha.
    ``checks``: every sanity check's status (``certify.checks.evaluate_checks``).
    """
    level = confidence_label(rows_alpha(rows, alpha))
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if config:
        config = redact_record(dict(config), show_completions)
        cfg = "".join(f'<tr><td class="l">{html.escape(str(k))}</td><td class="l">{html.escape(json.dumps(v))}</td></tr>'
                      for k, v in config.items())
        parts.append(f"<h2>Configuration</h2><table>{cfg}</table>")
    if run_info:
        shown_info = redact_record(dict(run_info), show_completions)
        parts.append(f'<p class="muted">{html.escape(json.dumps(shown_info))}</p>')
    parts.append("<h2>Bypass rates</h2>")
    parts.append('<p class="muted">rate = recovered / valid (valid: behaviour present undefended, absent '
                 f"defended), exact {level} Clopper-Pearson interval; abstain when no sample is valid. McNemar: exact "
                 "two-sided test against the reference defense on samples valid under both; b = this defense "
                 "recovered and the reference not, c = the reverse. Holm p: the McNemar p-value Holm-Bonferroni "
                 f"adjusted over all {sum(r.p_vs_reference is not None for r in rows)} tests of this run; only it "
                 "may be read against alpha.</p>")
    parts.append(summary_table_html(rows, alpha))
    if checks:
        parts.append("<h2>Sanity checks</h2>" + checks_html(checks))
    parts.append("<h2>Sanity flags</h2>" + flags_html(flags))
    figures = [_image_html(t, p) for t, p in (images or {}).items() if p is not None and Path(p).exists()]
    if figures:
        parts.append("<h2>Plots</h2>" + "".join(figures))
    notes = list(notes)
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    if records:
        parts.append("<h2>Example recovered samples</h2>" + _examples_html(records, show_completions, max_examples))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | os.PathLike[str], rows: Sequence[SummaryRow], flags: Sequence[Flag] = (),
                 **kwargs: Any) -> Path:
    """Write ``render_report(...)`` to ``path`` atomically; returns the path."""
    return write_text_atomic(path, render_report(rows, flags, **kwargs))
