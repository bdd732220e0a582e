"""``python -m experiments.reproduce refusal``: defaults, data loading, output files.

Defaults (measured on the subject, see ``discovery.py``): 8 refusal latents at blocks.6 and
8 at blocks.12 (16 per site derailed the subject at set values >= 6: harmless instructions
declined 47-88%, harmful refused only 6-56%), set value calibrated over 6-8 on 32 of the 48
held-apart harmful requests and 32 of the calibration half of our harmless instructions
(value 5 refused 19% of harmful requests); 90 evaluated harmful requests (AdvBench +
HarmBench, shuffled), 100 harmless; attack at blocks.6 on the prompt tokens; budget sweep
on the first 40 valid samples. ``--quick``: 24 harmful requests, 32 harmless, the
cross-layer and soft-suffix modes only, 20 steps, no sweep; the same defense.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from experiments.refusal.discovery import DiscoveryConfig
from experiments.refusal.pipeline import RefusalConfig, headline, results_table, run_refusal, with_overrides
from experiments.refusal.recovery import RecoveryConfig

SITES = ("blocks.6.hook_resid_post", "blocks.12.hook_resid_post")
DEFAULT = RefusalConfig(
    discovery=DiscoveryConfig(sites=SITES, n_latents=8, values=(6.0, 7.0, 8.0)),
    recovery=RecoveryConfig(site=SITES[0], budget=0.2, steps=30, drift_threshold=0.13, suffix_steps=20),
    n_select=48, n=90, n_harmless=100, sweep=(0.0, 0.05), sweep_n=40,
)
QUICK = {"n": 24, "n_harmless": 32, "modes": ("cross_layer", "soft_suffix"), "sweep": (), "steps": 20}


def default_config(quick: bool = False) -> RefusalConfig:
    return with_overrides(DEFAULT, **QUICK) if quick else DEFAULT


def load_requests(prompts_file: str | None) -> list[str]:
    from experiments.data.refusal import load_prompt_set

    if prompts_file is not None:
        return list(load_prompt_set(prompts_file).prompts)
    seen: dict[str, None] = {}
    for name in ("advbench", "harmbench"):
        for p in load_prompt_set(name).prompts:
            seen.setdefault(p, None)
    return list(seen)


def run_from_args(args) -> dict[str, Any]:
    """Run with the parsed ``experiments.reproduce`` arguments; prints the headline JSON last."""
    import torch

    from experiments.data.harmless import load_harmless
    from experiments.reproduce import update_readme
    from experiments.subject import load_subject

    config = default_config(args.quick)
    config = with_overrides(config, n=args.n, seed=args.seed, steps=args.steps, budget=args.budget,
                            site=args.site, n_latents=args.n_latents)
    torch.manual_seed(config.seed)
    subject = load_subject(device=args.device)
    results = run_refusal(subject.model, subject.saes, config, load_requests(args.prompts),
                          list(load_harmless().prompts), log=lambda m: print(m, file=sys.stderr, flush=True))
    results["quick"] = bool(args.quick)
    out = Path(args.out or "reproduce-out/refusal")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.md").write_text(results_table(results))
    if args.readme:
        update_readme(args.readme, "refusal", results_table(results))
    line = headline(results)
    print(f"results in {out}/results.json", file=sys.stderr)
    print(json.dumps(line))
    return line

