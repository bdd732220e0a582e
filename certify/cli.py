"""Command line: ``python -m certify run --suite standard --out DIR`` and friends.

``run`` evaluates a suite into DIR (resumable: rerun the same command after an
interruption and it finishes the missing work units only), then writes
DIR/records.jsonl, DIR/summary.json, DIR/summary.csv, DIR/table.md, DIR/flags.json, the
plots and DIR/report.html, prints the markdown table and ends with one JSON line.
``frontier`` does the same for the frontier suite and adds DIR/frontier.json, DIR/frontier.png and
DIR/leaderboard.md (``certify.frontier``); ``report`` re-renders the outputs of DIR from its records;
``merge`` joins comparable finished runs (``certify.merge``); ``leaderboard`` tabulates finished runs
side by side (``certify.leaderboard``); ``compare`` sets two runs side by side with paired tests
(``certify.compare``); ``list`` shows the suites.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from certify.checks import evaluate_checks, sorted_flags
from certify.compare import compare_runs, compare_table
from certify.config import SuiteConfig, load_config_file, resolve_config
from certify.executors import RayExecutor, plan_digest, require_ray
from certify.files import OutLock, move_aside, remove_stale_temps, write_json_atomic, write_text_atomic
from certify.frontier import frontier_data, frontier_points, leaderboard
from certify.leaderboard import leaderboard_rows, leaderboard_table
from certify.merge import merge_runs
from certify.plots import plot_bypass_vs_budget, plot_frontier, plot_utility_vs_bypass
from certify.plugins import load_plugins
from certify.provenance import (
    build_provenance,
    config_sha256,
    describe_device,
    json_data,
    now_iso,
    require_same,
)
from certify.records import RecordStore
from certify.report import write_report
from certify.runner import run_suite, serial, unit_key
from certify.schema import (
    FRONTIER_FILE,
    RECORDS_FILE,
    RUN_FILE,
    SCHEMA_VERSION,
    SUMMARY_CSV,
    SUMMARY_JSON,
    read_run_file,
    write_summary_file,
)
from certify.stats import confidence_label
from certify.suites import get_suite, suites
from certify.summary import markdown_table, summarize
from guard.errors import ToolkitError
from guard.validate import one_line, writable_dir

# what write_outputs writes besides summary.json / summary.csv (moved aside by a fresh run)
OUTPUT_FILES = ("table.md", "flags.json", "bypass_vs_budget.png", "utility_vs_bypass.png", "report.html",
                FRONTIER_FILE, "frontier.png", "leaderboard.md")
FRONTIER_SUITE = "frontier"


def _utility_to_json(utility: Mapping[Any, float | Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """One row per (defense, setting): its delta_ce, or every utility number it has."""
    out = []
    for key, value in utility.items():
        defense, setting = (key if isinstance(key, tuple) else (key, None))
        numbers = dict(value) if isinstance(value, Mapping) else {"delta_ce": value}
        out.append({"defense": defense, "setting": setting, **numbers})
    return out


def _utility_from_json(items: Sequence[dict[str, Any]]) -> dict[Any, float | dict[str, Any] | None]:
    out: dict[Any, float | dict[str, Any] | None] = {}
    for item in items:
        key = (item["defense"], item["setting"]) if item.get("setting") is not None else item["defense"]
        numbers = {k: v for k, v in item.items() if k not in ("defense", "setting")}
        out[key] = numbers if set(numbers) - {"delta_ce"} else numbers.get("delta_ce")
    return out


def write_outputs(out: Path, records: list[dict[str, Any]], *, utility: Mapping[Any, Any],
                  reference: str | None, alpha: float, notes: Sequence[str] = (),
                  config: Mapping[str, Any] | None = None, show_completions: bool = False,
                  run_info: Mapping[str, Any] | None = None,
                  provenance: Mapping[str, Any] | None = None, required_checks: Sequence[str] = (),
                  verified: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Summary, checks, plots and report of ``records`` into ``out``; returns what was written.

    Every file is written atomically (a reader sees the old file or the new one). No records:
    a ToolkitError, and the outputs stay as they were rather than being replaced by empty ones.
    ``provenance`` goes into summary.json (default: one built from ``config`` alone).
    flags.json lists every check with its status (``required_checks`` that cannot be evaluated
    are errors); ``verified`` maps a defense to its attack-unit-test status (certify.selftest).
    """
    if not records:
        raise ToolkitError(f"{out}: the run has no records; the outputs there were left as they are")
    rows = summarize(records, utility, reference, alpha,
                     verified=None if not verified else {d: s == "verified" for d, s in verified.items()})
    checks = evaluate_checks(records, rows, required_checks)
    flags = sorted_flags(checks)
    if provenance is None:
        provenance = build_provenance(config or {}, {}, None, None, (config or {}).get("device"))
    write_summary_file(out, rows, provenance)
    table = markdown_table(rows)
    write_text_atomic(out / "table.md", table + "\n")
    write_json_atomic(out / "flags.json", {"checks": [c.to_dict() for c in checks],
                                           "flags": [f.to_dict() for f in flags],
                                           "verified": dict(verified or {})})
    images = {
        f"Bypass rate against budget (bands: {confidence_label(alpha)} Clopper-Pearson)":
            plot_bypass_vs_budget(rows, out / "bypass_vs_budget.png"),
        "Utility cost against bypass rate": plot_utility_vs_bypass(rows, out / "utility_vs_bypass.png"),
    }
    write_report(out / "report.html", rows, flags, config=config, notes=notes, images=images, records=records,
                 show_completions=show_completions, run_info=run_info, checks=checks)
    return {"rows": rows, "flags": flags, "checks": checks, "table": table}


def run(config: SuiteConfig, fresh: bool = False) -> dict[str, Any]:
    """Evaluate ``config`` (resuming from its output directory) and write every output.

    OUT is locked (``OUT/.lock``) from before planning until the last output is written: a
    second run there fails at once. A run already in OUT is resumed only if it is this run:
    the config fields that shape records are compared before planning (a changed option costs
    nothing, no model is loaded), the resolved config, the plan's fingerprint and its work units
    after planning, before any unit runs. Anything else is refused, naming what differs.
    ``fresh``: move the earlier run's files into ``OUT/previous-<UTC time>/`` and start over.
    """
    plugins = load_plugins(config.plugins)  # before the suite: a plugin may register defenses or suites
    if config.executor == "ray":
        require_ray()
    suite = get_suite(config.suite)
    out = Path(config.out)
    records_path = out / RECORDS_FILE
    with OutLock(out):
        remove_stale_temps(out)
        previous = None if fresh else read_run_file(out / RUN_FILE)
        if previous is None and not fresh and records_path.is_file() and records_path.stat().st_size:
            raise ToolkitError(f"{out} holds {RECORDS_FILE} but no {RUN_FILE}, so which run wrote those records "
                               "cannot be checked; use --fresh to start a new run there or choose another --out")
        if previous is not None:  # before planning: only the fields given, the rest are the suite's defaults
            given = {k: v for k, v in suite.record_config(config).items() if getattr(config, k, None) is not None}
            stored = suite.record_config(previous["config"])
            require_same(out, "config", {k: stored[k] for k in given if k in stored}, given)

        plan = suite.plan(config)
        config = plan.config
        keys = [unit_key(u) for u in plan.units]
        record_config = suite.record_config(config)
        fingerprint = json_data(plan.fingerprint, f"suite {suite.name!r}: the plan's fingerprint")
        if plugins:
            fingerprint["plugins_sha256"] = plugins
        if previous is not None:
            require_same(out, "config", suite.record_config(previous["config"]), record_config)
            if "fingerprint" not in previous:
                raise ToolkitError(f"{out} holds a run from an earlier toolkit version, without a fingerprint of its "
                                   "data and weights; use --fresh to start a new run there or choose another --out")
            require_same(out, "plan fingerprint (data, weights, selected latents or attack)",
                         {"fingerprint": previous["fingerprint"]}, {"fingerprint": fingerprint})
            if previous["units"] != keys:
                gone, new = set(previous["units"]) - set(keys), set(keys) - set(previous["units"])
                raise ToolkitError(f"{out} holds a run with different work units ({len(gone)} of its "
                                   f"{len(previous['units'])} are not in this plan, {len(new)} of this plan's "
                                   f"{len(keys)} are new); use --fresh to start a new run there or choose another --out")
        elif fresh:
            aside = move_aside(out, (RUN_FILE, RECORDS_FILE, SUMMARY_JSON, SUMMARY_CSV, *OUTPUT_FILES))
            if aside is not None:
                print(f"fresh run: moved the earlier run's files to {aside}", file=sys.stderr)

        started = (previous or {}).get("started") or now_iso()
        meta = {"schema_version": SCHEMA_VERSION, "status": "running", "config": config.to_dict(),
                "record_config": record_config, "config_sha256": config_sha256(record_config),
                "fingerprint": fingerprint, "fingerprint_sha256": config_sha256(fingerprint), "units": keys,
                "utility": _utility_to_json(plan.utility), "reference": plan.reference, "notes": list(plan.notes),
                "required_checks": list(plan.required_checks), "verified": dict(plan.verified),
                "started": started, "finished": None}
        with RecordStore(records_path) as store:
            if store.truncated_bytes:
                print(f"resuming: dropped {store.truncated_bytes} bytes of an interrupted write", file=sys.stderr)
            foreign = store.done_units - set(keys)
            if foreign:
                raise ToolkitError(f"{records_path} holds {len(foreign)} work units that are not in this run's plan "
                                   f"(e.g. {sorted(foreign)[0]}); use --fresh to start a new run there or choose "
                                   "another --out")
            write_json_atomic(out / RUN_FILE, meta)  # before the first unit: the records always have their run file
            executor = serial if config.executor == "serial" else RayExecutor(
                config, plan_digest(plan), workers=config.workers, address=config.ray_address)
            stats = run_suite(plan.units, plan.evaluate_unit, store, progress=config.progress, desc=config.suite,
                              redact=not config.show_completions, executor=executor)
            records = store.records(units=keys)
        finished = now_iso()
        provenance = build_provenance(record_config, fingerprint, started, finished, describe_device(config.device),
                                      plan.provenance)
        written = write_outputs(out, records, utility=plan.utility, reference=plan.reference, alpha=config.alpha,
                                notes=plan.notes, config=config.to_dict(), show_completions=config.show_completions,
                                run_info=stats.to_dict(), provenance=provenance,
                                required_checks=plan.required_checks, verified=plan.verified)
        write_json_atomic(out / RUN_FILE, {**meta, "status": "complete", "finished": finished,
                                           "empty_units": list(stats.empty_units), "provenance": provenance,
                                           "run_info": stats.to_dict()})
    severities = [f.severity for f in written["flags"]]
    return {
        "table": written["table"], "rows": written["rows"], "flags": written["flags"],
        "result": {"out": str(out), "suite": config.suite, "n_units": stats.n_units, "evaluated": stats.n_evaluated,
                   "skipped": stats.n_skipped, "n_records": len(records), "n_rows": len(written["rows"]),
                   "flags": {s: severities.count(s) for s in ("error", "warning", "info")},
                   "checks": {s: [c.status for c in written["checks"]].count(s) for s in ("ok", "raised", "not_applicable")},
                   "report": str(out / "report.html")},
    }


def run_frontier(config: SuiteConfig, fresh: bool = False, long_check: bool = False) -> dict[str, Any]:
    """``run`` the frontier suite, then write OUT/frontier.json, OUT/frontier.png and OUT/leaderboard.md.

    ``long_check``: rerun the non-dominated points with 10x the steps per stage (no bisection) into
    OUT/long, the same samples and seed, so each can be judged by the holding rule.
    """
    outcome = run(config, fresh=fresh)
    out = Path(outcome["result"]["out"])
    meta = read_run_file(out / RUN_FILE)
    with OutLock(out), RecordStore(out / RECORDS_FILE, readonly=True) as store:
        records = store.records(units=meta["units"])
    reference, alpha = meta["reference"], meta["config"]["alpha"]
    long_bypass = None
    if long_check:
        points = frontier_points(records, outcome["rows"], outcome["flags"], reference=reference, alpha=alpha)
        chosen = sorted(p.name for p in points if p.non_dominated and p.n_valid)
        options = dict(meta["record_config"]["options"])
        long_options = {**config.option_dict, "steps": 10 * int(options["steps"]), "rounds": 0, "points": chosen}
        long = run(dataclasses.replace(config, out=str(out / "long"), options=tuple(sorted(long_options.items()))),
                   fresh=fresh)
        long_bypass = {}
        for row in long["rows"]:
            if row.rate is not None:
                long_bypass.setdefault((row.defense, row.setting), {})[row.budget] = row.rate
    with OutLock(out):
        points = frontier_points(records, outcome["rows"], outcome["flags"], reference=reference, alpha=alpha,
                                 long_bypass=long_bypass)
        write_json_atomic(out / FRONTIER_FILE, frontier_data(points, meta.get("provenance") or {}, reference))
        budgets = [float(b) for b in meta["config"]["budgets"] or ()]
        plot_frontier(points, out / "frontier.png", max_budget=max(budgets) if budgets else None)
        board = leaderboard(points)
        write_text_atomic(out / "leaderboard.md", board + "\n")
    result = {**outcome["result"], "n_points": len(points), "non_dominated": sum(p.non_dominated for p in points),
              "frontier": str(out / FRONTIER_FILE)}
    return {**outcome, "table": board, "result": result}


def rerender(out: Path, show_completions: bool = False) -> dict[str, Any]:
    """Rebuild summary, plots and report from ``out``'s records and run file.

    Holds OUT's lock, reads the records without changing them, and refuses (outputs left as
    they are) when records.jsonl is missing or holds fewer complete units than run.json lists.
    """
    out = Path(out)
    run_file = out / RUN_FILE
    if not run_file.is_file():
        raise ToolkitError(f"certify report: {run_file} not found; run 'python -m certify run --out {out}' first")
    with OutLock(out):
        remove_stale_temps(out)
        meta = read_run_file(run_file)
        records_path = out / RECORDS_FILE
        if not records_path.is_file():
            raise ToolkitError(f"certify report: {records_path} not found, so there is nothing to report; the "
                               f"outputs in {out} were left as they are")
        units = meta["units"]
        with RecordStore(records_path, readonly=True) as store:
            done = store.done_units
            records = store.records(units=units)
        empty = set(meta.get("empty_units") or ())
        missing = [u for u in units if u not in done and u not in empty]
        if missing:
            raise ToolkitError(f"certify report: {records_path} holds {len(units) - len(missing)} of the {len(units)} "
                               f"work units {run_file.name} lists; finish the run first (the same 'python -m certify "
                               f"run' command resumes it); the outputs in {out} were left as they are")
        config = meta["config"]
        provenance = meta.get("provenance") or build_provenance(
            meta.get("record_config", config), meta.get("fingerprint"), meta.get("started"), meta.get("finished"),
            config.get("device"))
        written = write_outputs(out, records, utility=_utility_from_json(meta["utility"]), reference=meta["reference"],
                                alpha=config["alpha"], notes=meta["notes"], config=config,
                                show_completions=show_completions, run_info=meta.get("run_info"),
                                provenance=provenance, required_checks=meta.get("required_checks", ()),
                                verified=meta.get("verified"))
    return {"table": written["table"], "result": {"out": str(out), "n_records": len(records),
                                                  "report": str(out / "report.html")}}


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    import yaml

    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:  # not YAML: keep the text; the suite's option check says if a string is wrong
        return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m certify",
        description="Adaptive evaluation of latent-space defenses: bypass rates with exact intervals, paired "
                    "tests, sanity flags and a self-contained HTML report.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="evaluate a suite (resumable) and write records, summary and report",
                           description="Evaluate a suite into --out. Rerunning the same command after an "
                                       "interruption finishes only the missing work. Options given here override "
                                       "the --config file.")
    _add_run_arguments(run_p)
    front_p = sub.add_parser("frontier", help="sweep every defense family's strength: frontier.json, frontier.png "
                                              "and a leaderboard (resumable)",
                             description="Run the frontier suite into --out (each defense family at each strength "
                                         "of its sweep, the same samples for all) and write frontier.json, "
                                         "frontier.png and leaderboard.md beside the run's usual outputs.")
    _add_run_arguments(front_p)
    front_p.add_argument("--quick", action="store_true",
                         help="the reduced sweep in minutes: n 8, budgets 0.02 0.05 0.2, 5 steps, one bisection "
                              "round, unless given")
    front_p.add_argument("--long-check", action="store_true",
                         help="rerun the non-dominated points with 10x the steps (into OUT/long) and apply the "
                              "holding rule: bypass may move by at most 0.1")
    rep_p = sub.add_parser("report", help="re-render summary, plots and report from an output directory")
    rep_p.add_argument("--out", type=Path, required=True, help="output directory of an earlier run")
    rep_p.add_argument("--show-completions", action="store_true", help="include model completions")
    merge_p = sub.add_parser("merge", help="merge finished runs of the same subject and attack into one directory",
                             description="Merge finished runs into --out (refused, with the reason, when their "
                                         "subject, attack, samples or shared records differ), then render it.")
    merge_p.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="output directories of finished runs")
    merge_p.add_argument("--out", type=Path, required=True, help="new output directory for the merged run")
    board_p = sub.add_parser("leaderboard", help="one table across finished runs (read-only)",
                             description="Per setting, every defense of every run given: utility, bypass at each "
                                         "budget with its interval, median minimal budget (frontier runs), verified.")
    board_p.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="output directories of finished runs")
    board_p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    cmp_p = sub.add_parser("compare", help="two finished runs side by side, with paired tests (read-only)",
                           description="Per shared setting, defense, threat and budget: each run's bypass with its "
                                       "interval and McNemar's exact test over the samples valid in both.")
    cmp_p.add_argument("runs", nargs=2, type=Path, metavar="DIR", help="output directories of two finished runs")
    cmp_p.add_argument("--out", type=Path, help="also write the table to this markdown file")
    list_p = sub.add_parser("list", help="list the registered suites")
    list_p.add_argument("--plugin", action="append", dest="plugins", metavar="FILE_OR_MODULE",
                        help="user code to import first (repeatable), e.g. one that registers a suite")
    for p in (run_p, front_p, rep_p, merge_p, board_p, cmp_p, list_p):  # SUPPRESS: given before the command, --debug is not reset here
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an input error instead of one 'error:' line")
    return parser


def _add_run_arguments(run_p: argparse.ArgumentParser) -> None:
    run_p.add_argument("--config", type=Path, help="YAML (.yaml/.yml), TOML (.toml) or JSON config file")
    run_p.add_argument("--suite", help="suite name (see 'python -m certify list'); default 'standard'")
    run_p.add_argument("--out", help="output directory (default ./certify-out)")
    run_p.add_argument("--subject", help="model + SAEs to evaluate (default 'default')")
    run_p.add_argument("--settings", nargs="+", metavar="NAME", help="settings, space- or comma-separated")
    run_p.add_argument("--defenses", nargs="+", metavar="NAME", help="defenses, space- or comma-separated")
    run_p.add_argument("--threats", nargs="+", metavar="NAME",
                       help="threat ladder rungs: residual (default), embedding, tokens")
    run_p.add_argument("--budgets", nargs="+", metavar="B", help="perturbation budgets (L2), e.g. 2 5 10 20 40")
    run_p.add_argument("--n", type=int, help="samples per setting")
    run_p.add_argument("--device", help="cpu or cuda (cuda:<index>)")
    run_p.add_argument("--dtype", help="dtype of the model and SAEs: float32 (default), bfloat16 or float16")
    run_p.add_argument("--seed", type=int, help="base seed (default 0)")
    run_p.add_argument("--alpha", type=float, help="1 - confidence level of the intervals (default 0.05)")
    run_p.add_argument("--option", action="append", type=_option, metavar="KEY=VALUE",
                       help="suite-specific option (repeatable), e.g. --option steps=200")
    run_p.add_argument("--plugin", action="append", dest="plugins", metavar="FILE_OR_MODULE",
                       help="user code to import first (repeatable): a .py file or a module that registers "
                            "defenses (guard.register_defense) or suites (certify.register_suite)")
    run_p.add_argument("--show-completions", action="store_true", default=None,
                       help="include model completions in the report (redacted by default)")
    run_p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                       help="no progress bars")
    run_p.add_argument("--fresh", action="store_true",
                       help="move an earlier run in --out aside into previous-<time>/ and start over")
    run_p.add_argument("--no-cache", dest="cache", action="store_false", default=None,
                       help="recompute the set-up (selected latents, calibrations, utility, validity) instead of "
                            "reading it from the set-up cache")
    run_p.add_argument("--executor", help="serial (default: one process) or ray (work units farmed to workers)")
    run_p.add_argument("--workers", type=int, help="ray executor: worker processes (default 1)")
    run_p.add_argument("--ray-address", help="ray executor: an existing cluster's address (default: start a local "
                                             "one); its workers need this toolkit and the set-up cache's folder")


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    file_data = load_config_file(args.config) if args.config else {}
    overrides = {k: getattr(args, k) for k in ("suite", "out", "subject", "settings", "defenses", "threats", "budgets",
                                               "n", "device", "dtype", "seed", "alpha", "show_completions", "progress",
                                               "plugins", "cache", "executor", "workers", "ray_address")}
    if args.option:
        overrides["options"] = dict(args.option)
    if args.command == "frontier":
        overrides["suite"] = overrides["suite"] or file_data.get("suite") or FRONTIER_SUITE
        if args.quick:  # the suite's quick fields where neither the file nor the command line gives them
            load_plugins(overrides["plugins"] or file_data.get("plugins") or ())
            quick = dict(get_suite(overrides["suite"]).quick)
            if not quick:
                raise ToolkitError(f"certify frontier --quick: suite {overrides['suite']!r} has no quick settings")
            for key, value in quick.items():
                if key == "options":
                    overrides["options"] = {**value, **dict(file_data.get("options") or {}),
                                            **dict(overrides.get("options") or {})}
                elif overrides.get(key) is None and key not in file_data:
                    overrides[key] = value
    return resolve_config(file_data, overrides, where=f"config file {args.config}" if args.config else "config")


def _table_outcome(args: argparse.Namespace, table: str, n_rows: int, **extra: Any) -> dict[str, Any]:
    """A read-only command's table (also written to ``--out`` when given) and its JSON line."""
    if args.out is not None:
        write_text_atomic(args.out, table)
    return {"table": table, "result": {"rows": n_rows, "runs": len(args.runs), **extra,
                                       **({"out": str(args.out)} if args.out else {})}}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            load_plugins(args.plugins or ())
            known = suites()
            for suite in known.values():
                print(f"{suite.name}: {suite.description}")
            print(json.dumps({"suites": sorted(known)}))
            return 0
        if args.command in ("run", "frontier"):
            config = config_from_args(args)
            writable_dir(config.out, "--out")  # before any model is loaded, not after the run
            if args.command == "run":
                outcome = run(config, fresh=args.fresh)
            else:
                outcome = run_frontier(config, fresh=args.fresh, long_check=args.long_check)
        elif args.command == "merge":
            writable_dir(str(args.out), "--out")
            merge_runs(args.runs, args.out)
            outcome = rerender(args.out)
            outcome["result"]["merged_from"] = [str(r) for r in args.runs]
        elif args.command == "leaderboard":
            rows = leaderboard_rows(args.runs)
            outcome = _table_outcome(args, leaderboard_table(rows), len(rows))
        elif args.command == "compare":
            compared = compare_runs(*args.runs)
            outcome = _table_outcome(args, compare_table(compared), len(compared["rows"]),
                                     differences=compared["differences"])
        else:
            outcome = rerender(args.out, args.show_completions)
    except ToolkitError as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    print(outcome["table"])
    print(json.dumps(outcome["result"]))
    return 0
