"""Reproduce post-intervention recovery against plain SAE clamping on the embedded subject.

    python -m experiments.reproduce ioi|recall|refusal [--quick] [--prompts FILE] [--n N] [--out DIR]
                                                      [--readme README.md]

Loads SmolLM2-135M-Instruct with the shipped SAEs, selects the latents to clamp by
attribution (experiments/settings/selection.py) on a selection split of samples kept apart
from the evaluated ones, clamps them to 0 at one site, and reports on the evaluated samples:
the valid count, recovery with the encoder-orthogonal constraint and with none (exact 95%
Clopper-Pearson intervals), a budget sweep from 0, defended-latent drift and reactivation,
and attribution replay (clamped latents / other latents / SAE error, each alone). See
``experiments/reproduce_core.py`` for the pipeline.

Site and latent count (measured on the subject, seed 0, 64 selection samples): clamping the
32 top-attribution latents at ``blocks.6.hook_resid_post`` made 96/160 IOI prompts valid
(64 latents: 85, 128: 85, 256: 93; at blocks.12: 89 / 90 / 74 / 75), and 214/400 recall
samples valid (64 latents: 218), so both settings clamp 32 latents there. Defaults evaluate
200 IOI and 300 recall samples so that n_valid >= 100. Budgets are relative:
the L2 norm of delta at the final prompt position over the norm of the defended residual
there.

``refusal`` runs the refusal-steering pipeline instead (``experiments/refusal/``): refusal
latents set at blocks.6 and blocks.12, validity by generation and the phrase judge, and
recovery in the cross-layer, encoder-orthogonal, unconstrained and soft-suffix modes with
the optimised delta applied while generating. Its last line: setting, n_valid,
recovery_nonrefusal, ci_low, ci_high, recovery_baselike, drift, over_refusal_harmless,
seconds.

Writes ``DIR/results.json`` (everything) and ``DIR/results.md`` (the README table);
``--readme`` also replaces the block between ``<!-- results:SETTING:start -->`` and
``<!-- results:SETTING:end -->`` in that file (markers appended if absent). The last
printed line is one JSON object: setting, n_valid, recovery_encoder, ci_low, ci_high,
recovery_none, drift_encoder, error_replay_recovery, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# the environment above must be set before torch and the hub libraries load
from experiments.data.refusal import HARMFUL_SETS  # noqa: E402
from experiments.refusal.cli import run_from_args  # noqa: E402
from experiments.reproduce_core import (  # noqa: E402
    ReproduceConfig,
    headline,
    reproduce,
    results_table,
    update_readme,
    with_overrides,
)
from experiments.saes.shipped import shipped_sites  # noqa: E402
from experiments.settings.user_file import check_context  # noqa: E402
from experiments.subject import load_subject  # noqa: E402
from experiments.suites import benign_tokens  # noqa: E402
from guard import validate  # noqa: E402
from guard.errors import ToolkitError, unknown_name  # noqa: E402

SWEEP = (0.0, 0.05, 0.2)
DEFAULTS = {
    "ioi": ReproduceConfig(setting="ioi", site="blocks.6.hook_resid_post", n_latents=32, n_select=64, n=200,
                           budget=0.2, sweep=SWEEP, steps=60),
    "recall": ReproduceConfig(setting="recall", site="blocks.6.hook_resid_post", n_latents=32, n_select=64,
                              n=300, budget=0.2, sweep=SWEEP, steps=60),
}
QUICK = {"n": 50, "steps": 25, "sweep": (0.0, 0.05, 0.2)}
# --prompts rows per setting: required keys and the types of keys that must be checked
PROMPT_KEYS = {
    "ioi": (("prompt", "io", "s"), {"prompt": str, "io": str, "s": str}),
    "recall": (("prompt", "answer"), {"prompt": str, "answer": str, "choices": list}),
    "refusal": (("prompt",), {"prompt": str}),
}


def default_config(setting: str, quick: bool = False) -> ReproduceConfig:
    if setting not in DEFAULTS:
        raise SystemExit(f"unknown setting {setting!r}; choose one of {sorted(DEFAULTS)}")
    config = DEFAULTS[setting]
    return with_overrides(config, **QUICK) if quick else config


def write_results(out: str | Path, results: dict[str, Any]) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.md").write_text(results_table(results))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("setting", choices=[*sorted(DEFAULTS), "refusal"])
    p.add_argument("--quick", action="store_true", help=f"small run: {QUICK}")
    p.add_argument("--prompts", default=None, help="a JSONL prompts file of the setting instead of built-in data")
    p.add_argument("--n", type=int, default=None, help="evaluated samples (after the selection split)")
    p.add_argument("--steps", type=int, default=None, help="attack steps")
    p.add_argument("--budget", type=float, default=None, help="main relative L2 budget")
    p.add_argument("--site", default=None, help="SAE site of the clamp (and of the attack)")
    p.add_argument("--n-latents", type=int, default=None, help="latents clamped (refusal: per site)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", default=None, help="output folder (default reproduce-out/SETTING)")
    p.add_argument("--readme", default=None, help="also update the results block of this README")
    p.add_argument("--device", default="cpu")
    p.add_argument("--show-completions", action="store_true",
                   help="keep generated texts in plain text in results.json (redacted by default)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    return p


def check_site(site: str) -> str:
    """``site`` must have a shipped SAE (checked without loading any)."""
    if site not in shipped_sites():
        raise unknown_name("SAE site", site, shipped_sites(), "--site (shipped SAEs)")
    return site


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Every argument checked before the subject loads: a typo fails in a second, not after minutes."""
    for name, minimum in (("n", 1), ("steps", 0), ("n_latents", 1), ("seed", 0)):
        if getattr(args, name) is not None:
            validate.integer(getattr(args, name), f"--{name.replace('_', '-')}", minimum=minimum)
    if args.budget is not None:
        validate.finite_number(args.budget, "--budget", low=0)
    validate.device(args.device)
    if args.site is not None:
        check_site(args.site)
    validate.writable_dir(args.out or f"reproduce-out/{args.setting}", "--out")
    if args.readme:
        validate.writable_file(args.readme, "--readme")
        if Path(args.readme).is_file():
            validate.text_file(args.readme, "--readme", empty_ok=True)
    if args.prompts is not None and not (args.setting == "refusal" and args.prompts in HARMFUL_SETS):
        keys, kinds = PROMPT_KEYS[args.setting]
        rows = validate.jsonl_rows(args.prompts, keys, "--prompts file", kinds)
        if args.setting != "refusal":  # refusal: checked on the distinct requests it reads
            reserved = DEFAULTS[args.setting].n_select
            if len(rows) <= reserved:
                raise ToolkitError(f"--prompts file {args.prompts}: {len(rows)} rows, but the first {reserved} "
                                   "only select the latents to clamp; give more rows")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    with validate.cli_errors(args.debug):
        check_args(args)
        if args.setting == "refusal":
            return run_from_args(args)
        config = with_overrides(default_config(args.setting, args.quick), n=args.n, steps=args.steps,
                                budget=args.budget, site=args.site, n_latents=args.n_latents, seed=args.seed)
        check_site(config.site)
        import torch


        torch.manual_seed(config.seed)
        subject = load_subject(device=args.device)
        if config.site not in subject.saes:
            raise ToolkitError(f"no shipped SAE at {config.site}; available: {subject.sites}")
        if args.prompts is not None:  # lengths need the tokenizer; checked before any selection or attack
            check_context(subject.tokenizer, args.prompts, subject.model.cfg.n_ctx, "--prompts file")

        results = reproduce(subject.model, subject.saes, config, prompts_file=args.prompts,
                            benign=benign_tokens(subject.model, 64)[1],
                            log=lambda m: print(m, file=sys.stderr, flush=True))
        results["quick"] = bool(args.quick)
        out = write_results(args.out or f"reproduce-out/{args.setting}", results)
        if args.readme:
            update_readme(args.readme, args.setting, results_table(results))
        line = headline(results)
        print(f"results in {out}/results.json", file=sys.stderr)
        print(json.dumps(line))
        return line


if __name__ == "__main__":
    main()
