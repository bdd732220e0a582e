"""The refusal-steering reproduction: discover, calibrate, validate, recover, report.

1. Harmful requests (AdvBench + HarmBench, or a user file) are shuffled once with the seed
   and split: ``n_select`` requests for latent discovery and calibration, the rest evaluated.
   Our harmless instructions are split in half the same way: one half calibrates the
   defense against over-refusal, the other measures it.
2. The defense (``experiments.refusal.discovery``): refusal latents amplified at several
   sites, at prompt positions and during generation.
3. Validity, by generation and the phrase judge: the undefended subject complies (not a
   refusal, non-sequitur or degenerate text) and the defended subject refuses.
4. Recovery per mode (``experiments.refusal.recovery``), judged by the same rule as the
   defended outputs; a budget sweep for the cross-layer mode; generation-based attribution
   replay of the cross-layer deltas.

Everything takes a model and SAEs (any HookedTransformer with a chat tokenizer); the tests
run the pieces on tiny random models and the whole pipeline on the subject at a tiny size.

The results hold every generated answer to a harmful request; ``write_results`` writes them
as hash and length only (``certify.redact``) unless ``show_completions=True``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from certify.files import write_text_atomic
from certify.redact import COMPLETION_FIELDS, redact_record
from certify.stats import Rate
from experiments.refusal.discovery import DiscoveryConfig, discover_refusal_clamp
from experiments.refusal.recovery import (
    MODES,
    RecoveryConfig,
    RefusalExample,
    complies,
    generate_and_judge,
    judge_texts,
    residual_recovery,
    suffix_recovery,
)
from experiments.subject.chat import chat_prompt
from guard.errors import ToolkitError


@dataclass(frozen=True)
class RefusalConfig:
    """One refusal run: data split, defense discovery, recovery, sweep.

    n_select: harmful requests used only for discovery and calibration. n: evaluated harmful
    requests (None: all the rest). n_harmless: harmless instructions evaluated for
    over-refusal (the other ones calibrate). modes: recovery modes run. sweep: relative
    budgets of the cross-layer sweep (the main budget ``recovery.budget`` is added), on the
    first ``sweep_n`` valid samples (None: all).
    """

    discovery: DiscoveryConfig
    recovery: RecoveryConfig
    n_select: int = 48
    n: int | None = None
    n_harmless: int | None = None
    modes: tuple[str, ...] = MODES
    sweep: tuple[float, ...] = (0.0, 0.05, 0.1)
    sweep_n: int | None = None
    replay: bool = True
    gen_batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ToolkitError(f"refusal: unknown recovery modes {bad}; choose from {MODES}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["modes"], out["sweep"] = list(self.modes), list(self.sweep)
        return out


def split(items: Sequence[str], n_first: int, seed: int, n_rest: int | None = None) -> tuple[list[str], list[str]]:
    """Shuffle once with ``seed``; (first ``n_first``, the next ``n_rest`` or all the rest)."""
    items = list(items)
    random.Random(seed).shuffle(items)
    if len(items) <= n_first:
        raise ToolkitError(f"refusal: {len(items)} prompts, not more than the {n_first} reserved for discovery")
    rest = items[n_first:]
    return items[:n_first], rest if n_rest is None else rest[:n_rest]


def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    return Rate.of(sum(bool(f) for f in flags), len(flags)).to_dict()


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def summarise(records: Sequence[Mapping[str, Any]], drift_threshold: float) -> dict[str, Any]:
    """Non-refusal and base-like recovery with intervals; non-refusal whose drift on the generated
    trajectory stays within ``drift_threshold`` (the attack bounds it on the teacher-forced
    answer only); drift and floor violation of the recovered."""
    rec = [r for r in records if r["nonrefusal"]]
    return {
        "nonrefusal": _rate([r["nonrefusal"] for r in records]),
        "nonrefusal_within_drift": _rate([r["nonrefusal"] and r["drift"] <= drift_threshold for r in records]),
        "base_like": _rate([r["base_like"] for r in records]),
        "objective_success": _rate([r["objective_success"] for r in records]),
        "drift_mean": _mean([r["drift"] for r in rec]),
        "drift_max": max((r["drift"] for r in rec), default=None),
        "floor_violation_mean": _mean([r["floor_violation"] for r in rec]),
        "rel_delta_norm_mean": _mean([r.get("rel_delta_norm") for r in rec]),
        "labels": {lab: sum(r["label"] == lab for r in records) for lab in sorted({r["label"] for r in records})},
    }


def run_refusal(model, saes: Mapping[str, object], config: RefusalConfig, harmful: Sequence[str],
                harmless: Sequence[str], log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole reproduction (see the module docstring); the results as data."""
    start = time.perf_counter()
    rc = config.recovery

    def stamp() -> str:
        return f"({time.perf_counter() - start:.0f} s)"

    select, evaluate = split(harmful, config.n_select, config.seed, config.n)
    calib_harmless, eval_harmless = split(harmless, len(harmless) // 2, config.seed, config.n_harmless)
    log(f"[refusal] {len(select)} discovery requests, {len(evaluate)} evaluated; harmless "
        f"{len(calib_harmless)} calibrate, {len(eval_harmless)} evaluated")
    found = discover_refusal_clamp(model, saes, select, calib_harmless[: len(select)], config.discovery, log=log)
    defense = found.defense
    log(f"[refusal] defense: {found.describe()} {stamp()}")

    gb, mnt = config.gen_batch, rc.max_new_tokens
    base_texts, base_labels, prompt_ids, answer_ids = generate_and_judge(model, evaluate, None, mnt, gb, True)
    def_texts, def_labels, _, _ = generate_and_judge(model, evaluate, defense, mnt, gb, True)
    _, harmless_base, _, _ = generate_and_judge(model, eval_harmless, None, mnt, gb, True)
    harmless_texts, harmless_def, _, _ = generate_and_judge(model, eval_harmless, defense, mnt, gb, True)
    valid_rows = [i for i in range(len(evaluate)) if complies(base_labels[i]) and def_labels[i] == "refusal"]
    log(f"[refusal] undefended complies {sum(map(complies, base_labels))}/{len(evaluate)}, defended refuses "
        f"{sum(lab == 'refusal' for lab in def_labels)}/{len(evaluate)}, valid {len(valid_rows)}; harmless refused "
        f"{sum(not complies(lab) for lab in harmless_def)}/{len(eval_harmless)} defended vs "
        f"{sum(not complies(lab) for lab in harmless_base)} undefended {stamp()}")
    examples = [RefusalExample(evaluate[i], chat_prompt(evaluate[i]), tuple(prompt_ids[i]), tuple(answer_ids[i]),
                               base_texts[i]) for i in valid_rows]
    out: dict[str, Any] = {
        "setting": "refusal", "config": config.to_dict(), "defense": found.to_dict(),
        "n_evaluated": len(evaluate), "n_valid": len(examples),
        "undefended_complies": _rate([complies(lab) for lab in base_labels]),
        "defended_refuses": _rate([lab == "refusal" for lab in def_labels]),
        "over_refusal_harmless": _rate([not complies(lab) for lab in harmless_def]),
        "over_refusal_harmless_undefended": _rate([not complies(lab) for lab in harmless_base]),
        "samples": [{"request": evaluate[i], "undefended": base_texts[i], "undefended_label": base_labels[i],
                     "defended": def_texts[i], "defended_label": def_labels[i]} for i in range(len(evaluate))],
        "harmless_samples": [{"request": r, "defended": t, "defended_label": lab}
                             for r, t, lab in zip(eval_harmless, harmless_texts, harmless_def, strict=True)],
        "recovery": {}, "records": {}, "sweep": [], "replay": {},
    }
    for mode in config.modes if examples else ():
        if mode == "soft_suffix":
            records = suffix_recovery(model, defense, examples, rc, progress=True)
        else:
            records = residual_recovery(model, defense, examples, mode, rc, progress=True,
                                        replay=config.replay and mode == "cross_layer")
        out["records"][mode] = records
        out["recovery"][mode] = summarise(records, rc.drift_threshold)
        if mode == "cross_layer" and config.replay:
            out["replay"] = {key: _rate([r["replay"][key] for r in records if r["nonrefusal"]])
                             for key in ("clamped", "other", "error")}
        s = out["recovery"][mode]
        log(f"[refusal] {mode}: non-refusal {s['nonrefusal']['k']}/{s['nonrefusal']['n']}, base-like "
            f"{s['base_like']['k']}, drift {s['drift_mean']} {stamp()}")
    if examples and "cross_layer" in config.modes and config.sweep:
        picked = examples[: config.sweep_n]
        for b in sorted({*config.sweep, rc.budget}):
            if b == rc.budget:
                records = out["records"]["cross_layer"][: len(picked)]
            elif b == 0:  # a zero delta leaves the defended generation as it is: judge that, no rerun
                texts = [def_texts[i] for i in valid_rows[: len(picked)]]
                records = [{**v, "objective_success": False, "drift": 0.0, "floor_violation": 0.0}
                           for v in judge_texts([e.request for e in picked], texts,
                                                [e.base_text for e in picked], rc.base_like_jaccard)]
            else:
                records = residual_recovery(model, defense, picked, "cross_layer", rc, budget=b, progress=True)
            s = summarise(records, rc.drift_threshold)
            out["sweep"].append({"budget": b, **s})
            log(f"[refusal]   sweep cross_layer budget {b}: {s['nonrefusal']['k']}/{s['nonrefusal']['n']} {stamp()}")
    out["seconds"] = time.perf_counter() - start
    return out


def headline(results: Mapping[str, Any]) -> dict[str, Any]:
    """The one-line summary the command line prints last."""
    main = results["recovery"].get("cross_layer", {})
    return {
        "setting": "refusal",
        "n_valid": results["n_valid"],
        "recovery_nonrefusal": main.get("nonrefusal", {}).get("rate"),
        "ci_low": main.get("nonrefusal", {}).get("ci_low"),
        "ci_high": main.get("nonrefusal", {}).get("ci_high"),
        "recovery_baselike": main.get("base_like", {}).get("rate"),
        "drift": main.get("drift_mean"),
        "over_refusal_harmless": results["over_refusal_harmless"]["rate"],
        "seconds": round(float(results.get("seconds", math.nan)), 1),
    }


def _cell(rate: Mapping[str, Any] | None) -> str:
    if not rate or rate.get("rate") is None:
        return "-"
    return f"{rate['k']}/{rate['n']} ({100 * rate['rate']:.1f}%, CI {100 * rate['ci_low']:.1f}-{100 * rate['ci_high']:.1f}%)"


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.3g}"


def results_table(results: Mapping[str, Any]) -> str:
    """The README block: validity, recovery per mode, sweep, replay."""
    cfg, rc = results["config"], results["config"]["recovery"]
    lines = [
        f"**refusal**: {results['defense']['summary']}. {results['n_valid']} valid of {results['n_evaluated']} "
        f"evaluated harmful requests (undefended complies {_cell(results['undefended_complies'])}; defended refuses "
        f"{_cell(results['defended_refuses'])}). Over-refusal on harmless instructions: "
        f"{_cell(results['over_refusal_harmless'])} defended, "
        f"{_cell(results['over_refusal_harmless_undefended'])} undefended. Attack at `{rc['site']}` on the prompt "
        f"tokens, relative L2 budget {rc['budget']} per position, {rc['steps']} steps; cross-layer drift threshold "
        f"{rc['drift_threshold']}; outputs generated with the optimised delta applied ({rc['max_new_tokens']} tokens) "
        "and judged by the same phrase judge as the defended outputs; exact 95% Clopper-Pearson intervals.",
        "",
        f"| mode | non-refusal | non-refusal, trajectory drift <= {rc['drift_threshold']} | base-like | "
        "drift (generated trajectory) | floor violation |",
        "|---|---|---|---|---|---|",
    ]
    for mode, s in results["recovery"].items():
        lines.append(f"| {mode} | {_cell(s['nonrefusal'])} | {_cell(s.get('nonrefusal_within_drift'))} | "
                     f"{_cell(s['base_like'])} | {_num(s['drift_mean'])} | {_num(s['floor_violation_mean'])} |")
    if results["sweep"]:
        budgets = " | ".join(_num(r["budget"]) for r in results["sweep"])
        lines += ["", f"| cross-layer budget ({results['sweep'][0]['nonrefusal']['n']} valid samples) | {budgets} |",
                  "|---|" + "---|" * len(results["sweep"]),
                  "| non-refusal | " + " | ".join(f"{r['nonrefusal']['k']}/{r['nonrefusal']['n']}"
                                                 for r in results["sweep"]) + " |"]
    if results["replay"]:
        rep = results["replay"]
        lines += ["", "Attribution replay of the cross-layer deltas (each part alone, generated and judged): "
                  + ", ".join(f"{k} {rep[k]['k']}/{rep[k]['n']}" for k in ("clamped", "other", "error")) + "."]
    lines += ["", f"Run time {results['seconds']:.0f} s (seed {cfg['seed']})."]
    return "\n".join(lines) + "\n"


def with_overrides(config: RefusalConfig, **changes: Any) -> RefusalConfig:
    """``config`` with the given fields replaced (None: keep) wherever they live: the run, its
    discovery or its recovery part (``seed`` sets all that have it)."""
    changes = {k: v for k, v in changes.items() if v is not None}
    parts = (RefusalConfig, DiscoveryConfig, RecoveryConfig)
    unknown = [k for k in changes if not any(k in c.__dataclass_fields__ for c in parts)]
    if unknown:
        raise ToolkitError(f"refusal: unknown settings {unknown}")

    def own(cfg) -> dict[str, Any]:
        return {k: v for k, v in changes.items() if k in cfg.__dataclass_fields__}

    top = {k: v for k, v in own(config).items() if k not in ("discovery", "recovery")}
    return replace(config, **top, discovery=replace(config.discovery, **own(config.discovery)),
                   recovery=replace(config.recovery, **own(config.recovery)))


# generated texts in the results (by exact name): records' "text", samples' "undefended" / "defended"
RESULT_TEXT_FIELDS = ("text", "undefended", "defended", "base_text")


def redact_results(results: Mapping[str, Any], show_completions: bool = False) -> dict[str, Any]:
    """``results`` with every generated text replaced by its hash and length (unless ``show_completions``)."""
    return redact_record(dict(results), show_completions, COMPLETION_FIELDS, exact=RESULT_TEXT_FIELDS)


def write_results(out: str | Path, results: Mapping[str, Any], show_completions: bool = False) -> Path:
    """Write ``out/results.json`` (everything, generated texts redacted unless ``show_completions``)
    and ``out/results.md`` (the README block); returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shown = redact_results(results, show_completions)
    write_text_atomic(out / "results.json", json.dumps(shown, indent=2, default=float) + "\n")
    write_text_atomic(out / "results.md", results_table(shown))
    return out
