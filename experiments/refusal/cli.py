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
from typing import Any

from experiments.data.harmless import load_harmless
from experiments.data.refusal import HARMFUL_SETS, load_prompt_set
from experiments.refusal.discovery import DiscoveryConfig
from experiments.refusal.pipeline import (
    RefusalConfig,
    headline,
    results_table,
    run_refusal,
    with_overrides,
    write_results,
)
from experiments.refusal.recovery import RecoveryConfig
from experiments.reproduce_core import update_readme
from experiments.saes.shipped import shipped_sites
from experiments.settings.user_file import check_context
from experiments.subject import load_subject
from experiments.subject.chat import chat_prompt
from guard.errors import ToolkitError, unknown_name

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
    if prompts_file is not None:
        return list(load_prompt_set(prompts_file).prompts)
    seen: dict[str, None] = {}
    for name in ("advbench", "harmbench"):
        for p in load_prompt_set(name).prompts:
            seen.setdefault(p, None)
    return list(seen)


def check_inputs(config: RefusalConfig, prompts_file: str | None) -> tuple[list[str], list[str]]:
    """(harmful requests, harmless instructions), read and checked without the model: sites have
    shipped SAEs, there are more distinct requests than the ``n_select`` kept for discovery."""
    for site in (*config.discovery.sites, config.recovery.site):
        if site not in shipped_sites():
            raise unknown_name("SAE site", site, shipped_sites(), "refusal (shipped SAEs)")
    requests = load_requests(prompts_file)
    if len(requests) <= config.n_select:
        raise ToolkitError(f"refusal: {len(requests)} distinct requests in {prompts_file}, but the first "
                           f"{config.n_select} only find and calibrate the defense; give more")
    return requests, list(load_harmless().prompts)


def check_lengths(model, config: RefusalConfig, prompts_file: str | None) -> None:
    """Each user request in its chat template, plus the tokens generated after it, fits the context."""
    if prompts_file is None or prompts_file in HARMFUL_SETS:
        return  # the shipped sets are short
    rc = config.recovery
    reserve = rc.suffix_tokens + max(rc.max_new_tokens, rc.answer_tokens, config.discovery.max_new_tokens)
    check_context(model.tokenizer, prompts_file, model.cfg.n_ctx, "--prompts file", render=chat_prompt,
                  reserve=reserve)


def run_from_args(args) -> dict[str, Any]:
    """Run with the parsed ``experiments.reproduce`` arguments; prints the headline JSON last."""
    import torch


    config = default_config(args.quick)
    config = with_overrides(config, n=args.n, seed=args.seed, steps=args.steps, budget=args.budget,
                            site=args.site, n_latents=args.n_latents)
    requests, harmless = check_inputs(config, args.prompts)  # before the model: a bad file fails in a second
    torch.manual_seed(config.seed)
    subject = load_subject(device=args.device)
    check_lengths(subject.model, config, args.prompts)
    results = run_refusal(subject.model, subject.saes, config, requests, harmless,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    results["quick"] = bool(args.quick)
    out = write_results(args.out or "reproduce-out/refusal", results,
                        show_completions=bool(getattr(args, "show_completions", False)))
    if args.readme:
        update_readme(args.readme, "refusal", results_table(results))
    line = headline(results)
    print(f"results in {out}/results.json", file=sys.stderr)
    print(json.dumps(line))
    return line

