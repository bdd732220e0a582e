"""Command line: ``python -m certify run --suite standard --out DIR`` and friends.

``run`` evaluates a suite into DIR (resumable: rerun the same command after an
interruption and it finishes the missing work units only), then writes
DIR/records.jsonl, DIR/summary.json, DIR/summary.csv, DIR/table.md, DIR/flags.json, the
plots and DIR/report.html, prints the markdown table and ends with one JSON line.
``report`` re-renders the outputs of DIR from its records; ``list`` shows the suites.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from certify.config import SuiteConfig, load_config_file, resolve_config
from guard.errors import ToolkitError

RUN_FILE = "run.json"


def _utility_to_json(utility: Mapping[Any, float | None]) -> list[dict[str, Any]]:
    out = []
    for key, value in utility.items():
        defense, setting = (key if isinstance(key, tuple) else (key, None))
        out.append({"defense": defense, "setting": setting, "delta_ce": value})
    return out


def _utility_from_json(items: Sequence[dict[str, Any]]) -> dict[Any, float | None]:
    return {(i["defense"], i["setting"]) if i.get("setting") is not None else i["defense"]: i["delta_ce"]
            for i in items}


def write_outputs(out: Path, records: list[dict[str, Any]], *, utility: Mapping[Any, float | None],
                  reference: str | None, alpha: float, notes: Sequence[str] = (),
                  config: Mapping[str, Any] | None = None, show_completions: bool = False,
                  run_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Summary, checks, plots and report of ``records`` into ``out``; returns what was written."""
    from certify.checks import run_checks
    from certify.files import write_json_atomic, write_text_atomic
    from certify.plots import plot_bypass_vs_budget, plot_utility_vs_bypass
    from certify.report import write_report
    from certify.summary import markdown_table, summarize, write_summary

    rows = summarize(records, utility, reference, alpha)
    flags = run_checks(records, rows)
    write_summary(rows, out)
    table = markdown_table(rows)
    write_text_atomic(out / "table.md", table + "\n")
    write_json_atomic(out / "flags.json", [f.to_dict() for f in flags])
    images = {
        "Bypass rate against budget (bands: 95% Clopper-Pearson)": plot_bypass_vs_budget(rows, out / "bypass_vs_budget.png"),
        "Utility cost against bypass rate": plot_utility_vs_bypass(rows, out / "utility_vs_bypass.png"),
    }
    write_report(out / "report.html", rows, flags, config=config, notes=notes, images=images, records=records,
                 show_completions=show_completions, run_info=run_info)
    return {"rows": rows, "flags": flags, "table": table}


def run(config: SuiteConfig) -> dict[str, Any]:
    """Evaluate ``config`` (resuming from its output directory) and write every output."""
    from certify.files import write_json_atomic
    from certify.records import RecordStore
    from certify.runner import run_suite, unit_key
    from certify.suites import get_suite

    plan = get_suite(config.suite).plan(config)
    config = plan.config
    out = Path(config.out)
    with RecordStore(out / "records.jsonl") as store:
        if store.truncated_bytes:
            print(f"resuming: dropped {store.truncated_bytes} bytes of an interrupted write", file=sys.stderr)
        stats = run_suite(plan.units, plan.evaluate_unit, store, progress=config.progress, desc=config.suite)
        records = store.records(units=[unit_key(u) for u in plan.units])
    utility = _utility_to_json(plan.utility)
    write_json_atomic(out / RUN_FILE, {"config": config.to_dict(), "utility": utility, "reference": plan.reference,
                                       "notes": list(plan.notes), "units": [unit_key(u) for u in plan.units]})
    written = write_outputs(out, records, utility=plan.utility, reference=plan.reference, alpha=config.alpha,
                            notes=plan.notes, config=config.to_dict(), show_completions=config.show_completions,
                            run_info=stats.to_dict())
    severities = [f.severity for f in written["flags"]]
    return {
        "table": written["table"],
        "result": {"out": str(out), "suite": config.suite, "n_units": stats.n_units, "evaluated": stats.n_evaluated,
                   "skipped": stats.n_skipped, "n_records": len(records), "n_rows": len(written["rows"]),
                   "flags": {s: severities.count(s) for s in ("error", "warning", "info")},
                   "report": str(out / "report.html")},
    }


def rerender(out: Path, show_completions: bool = False) -> dict[str, Any]:
    """Rebuild summary, plots and report from ``out``'s records and run file."""
    from certify.records import RecordStore

    run_file = out / RUN_FILE
    if not run_file.is_file():
        raise ToolkitError(f"certify report: {run_file} not found; run 'python -m certify run --out {out}' first")
    meta = json.loads(run_file.read_text())
    with RecordStore(out / "records.jsonl") as store:
        records = store.records(units=meta["units"])
    written = write_outputs(out, records, utility=_utility_from_json(meta["utility"]), reference=meta["reference"],
                            alpha=meta["config"]["alpha"], notes=meta["notes"], config=meta["config"],
                            show_completions=show_completions)
    return {"table": written["table"], "result": {"out": str(out), "n_records": len(records),
                                                  "report": str(out / "report.html")}}


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    import yaml

    return key.strip(), yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m certify",
        description="Adaptive evaluation of latent-space defenses: bypass rates with exact intervals, paired "
                    "tests, sanity flags and a self-contained HTML report.")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="evaluate a suite (resumable) and write records, summary and report",
                           description="Evaluate a suite into --out. Rerunning the same command after an "
                                       "interruption finishes only the missing work. Options given here override "
                                       "the --config file.")
    run_p.add_argument("--config", type=Path, help="YAML (.yaml/.yml), TOML (.toml) or JSON config file")
    run_p.add_argument("--suite", help="suite name (see 'python -m certify list'); default 'standard'")
    run_p.add_argument("--out", help="output directory (default ./certify-out)")
    run_p.add_argument("--subject", help="model + SAEs to evaluate (default 'default')")
    run_p.add_argument("--settings", nargs="+", metavar="NAME", help="settings, space- or comma-separated")
    run_p.add_argument("--defenses", nargs="+", metavar="NAME", help="defenses, space- or comma-separated")
    run_p.add_argument("--budgets", nargs="+", metavar="B", help="perturbation budgets (L2), e.g. 2 5 10 20 40")
    run_p.add_argument("--n", type=int, help="samples per setting")
    run_p.add_argument("--device", help="cpu or cuda (cuda:<index>)")
    run_p.add_argument("--seed", type=int, help="base seed (default 0)")
    run_p.add_argument("--alpha", type=float, help="1 - confidence level of the intervals (default 0.05)")
    run_p.add_argument("--option", action="append", type=_option, metavar="KEY=VALUE",
                       help="suite-specific option (repeatable), e.g. --option steps=200")
    run_p.add_argument("--show-completions", action="store_true", default=None,
                       help="include model completions in the report (redacted by default)")
    run_p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bars")
    rep_p = sub.add_parser("report", help="re-render summary, plots and report from an output directory")
    rep_p.add_argument("--out", type=Path, required=True, help="output directory of an earlier run")
    rep_p.add_argument("--show-completions", action="store_true", help="include model completions")
    sub.add_parser("list", help="list the registered suites")
    return parser


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    file_data = load_config_file(args.config) if args.config else {}
    overrides = {k: getattr(args, k) for k in ("suite", "out", "subject", "settings", "defenses", "budgets", "n",
                                               "device", "seed", "alpha", "show_completions", "progress")}
    if args.option:
        overrides["options"] = dict(args.option)
    return resolve_config(file_data, overrides, where=f"config file {args.config}" if args.config else "config")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            from certify.suites import SUITES

            for suite in SUITES.values():
                print(f"{suite.name}: {suite.description}")
            print(json.dumps({"suites": sorted(SUITES)}))
            return 0
        outcome = run(config_from_args(args)) if args.command == "run" else rerender(args.out, args.show_completions)
    except ToolkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(outcome["table"])
    print(json.dumps(outcome["result"]))
    return 0
