"""``python -m experiments.bench.scaling [--quick]``: what an attack costs as the problem grows.

On the embedded subject, the recovery bench's IOI attack (``experiments.bench.recovery``: the
engine, encoder-orthogonal at the last token of ``blocks.12``, absolute L2 budget 20, the same
steps) is timed while one thing grows at a time:

- prompt length 64, 256, 1024 tokens: each IOI prompt after a prefix of the built-in benign text;
- clamped latents 16, 64, 256 at blocks.12 (the top ones by attribution);
- clamped sites 1, 2, 3 (blocks.12, then also blocks.18 and blocks.24, 64 latents each).

Per row: valid samples attacked (the first ``n`` valid at that size), CPU seconds per attack step
(an all-steps run less a 0-step run, over the steps: independent of how fast samples recover),
and CPU seconds per recovered sample with the early stop (``-`` when none recovers), so a user can
predict the cost on a longer prompt or a bigger defense. A markdown table on stdout, then one JSON
line with every row.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy OpenMP threads slow a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from attacks.batch import AttackBatch  # noqa: E402
from attacks.engine import AttackConfig, GradientRecovery  # noqa: E402
from attacks.forward import fast_weight_layout  # noqa: E402
from attacks.objectives import LogitDifference  # noqa: E402
from attacks.threat import ThreatModel  # noqa: E402
from experiments.bench.recovery import attribution_features, ioi_prompts, logit_diff, timed  # noqa: E402
from experiments.subject import load_subject  # noqa: E402
from experiments.utility import builtin_text  # noqa: E402
from guard.base import NoDefense  # noqa: E402
from guard.clamp import ClampConfig, FeatureClamp  # noqa: E402

SITES = ("blocks.12.hook_resid_post", "blocks.18.hook_resid_post", "blocks.24.hook_resid_post")
LENGTHS, LATENTS, N_SITES = (64, 256, 1024), (16, 64, 256), (1, 2, 3)
BASE = {"length": 0, "latents": 64, "sites": 1}  # length 0: the IOI prompt alone


def with_prefix(batch: AttackBatch, prefix: list[int], length: int, pad_id: int) -> AttackBatch:
    """Each prompt of ``batch`` after the first tokens of ``prefix``, ``length`` tokens in all."""
    rows = []
    for i in range(batch.size):
        tokens = batch.tokens[i, : int(batch.lengths[i])].tolist()
        rows.append(prefix[: max(0, length - len(tokens))] + tokens)
    return AttackBatch.from_lists(rows, pad_id=pad_id)


def first_valid(model, defense, candidates: AttackBatch, io, s, n: int) -> torch.Tensor:
    """Indices of the first ``n`` candidates the undefended model answers (IO over S) and the defended one
    does not, screened ``n`` at a time (a long prompt's forward is the costly part of this bench)."""
    found = []
    for start in range(0, candidates.size, n):
        rows = torch.arange(start, min(start + n, candidates.size))
        batch, objective = candidates.select(rows), LogitDifference(io[rows], s[rows])
        clean = logit_diff(model, NoDefense(), batch, objective)
        defended = logit_diff(model, defense, batch, objective)
        found += rows[(clean > 0) & (defended <= 0)].tolist()
        if len(found) >= n:
            break
    return torch.tensor(found[:n], dtype=torch.long)


def measure(model, saes, candidates: AttackBatch, io, s, calib, calib_obj, *, length: int, latents: int,
            sites: int, n: int, steps: int, budget: float) -> dict:
    features = {site: tuple(attribution_features(model, saes[site], calib, calib_obj, latents, site).tolist())
                for site in SITES[:sites]}
    defense = FeatureClamp(ClampConfig(features=features), {site: saes[site] for site in features})
    valid = first_valid(model, defense, candidates, io, s, n)
    row = {"length": length or int(candidates.lengths.float().mean()), "latents": latents, "sites": sites,
           "n": int(valid.numel())}
    if not valid.numel():
        return {**row, "step_cpu_s": None, "per_recovered_cpu_s": None}
    batch, objective = candidates.select(valid), LogitDifference(io[valid], s[valid])
    threat = ThreatModel.make(SITES[0], positions="last", budget=budget, relative=False, constraint="encoder")

    def attack(n_steps: int, stop: bool):
        config = AttackConfig(steps=n_steps, stop_margin=1e-2 if stop else math.inf)
        with fast_weight_layout(model):
            return timed(lambda: GradientRecovery(model, defense, threat, objective, config).run(batch))

    (_, _, cpu_all), (_, _, cpu_setup) = attack(steps, False), attack(0, False)
    result, _, cpu_stop = attack(steps, True)
    recovered = int(result.success.sum())
    return {**row, "recovered": recovered, "step_cpu_s": round((cpu_all - cpu_setup) / steps, 4),
            "per_recovered_cpu_s": round(cpu_stop / recovered, 3) if recovered else None}


def table(rows: list[dict]) -> str:
    lines = ["| prompt tokens | clamped latents | clamped sites | n valid | recovered | CPU s / step | "
             "CPU s / recovered |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        show = [r["length"], r["latents"], r["sites"], r["n"], r.get("recovered", "-"),
                r["step_cpu_s"] if r["step_cpu_s"] is not None else "-",
                r["per_recovered_cpu_s"] if r["per_recovered_cpu_s"] is not None else "-"]
        lines.append("| " + " | ".join(str(x) for x in show) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.scaling", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4 samples, 10 steps per size")
    p.add_argument("--n", type=int, default=None, help="valid samples per size (default 8; quick 4)")
    p.add_argument("--steps", type=int, default=None, help="attack steps (default 25; quick 10)")
    p.add_argument("--budget", type=float, default=20.0, help="absolute L2 budget at the last token (default 20)")
    args = p.parse_args(argv)
    n, steps = args.n or (4 if args.quick else 8), args.steps or (10 if args.quick else 25)
    if n < 1 or steps < 1 or not args.budget > 0:
        p.error("--n and --steps must be >= 1 and --budget > 0")
    subject = load_subject()
    model, tok = subject.model, subject.tokenizer
    for param in model.parameters():
        param.requires_grad_(False)
    missing = [site for site in SITES if site not in subject.saes]
    if missing:
        sys.exit(f"experiments.bench.scaling: no shipped SAE at {missing}")
    calib, calib_io, calib_s = ioi_prompts(tok, 8, seed=1000)
    calib_obj = LogitDifference(calib_io, calib_s)
    candidates, io, s = ioi_prompts(tok, 8 * n, seed=0)
    prefix = tok.encode(builtin_text(), add_special_tokens=False)
    pad = tok.pad_token_id or 0
    sizes = ([{**BASE, "length": length} for length in LENGTHS] + [{**BASE, "latents": k} for k in LATENTS]
             + [{**BASE, "sites": k} for k in N_SITES])
    rows = []
    for size in sizes:
        batch = with_prefix(candidates, prefix, size["length"], pad) if size["length"] else candidates
        rows.append(measure(model, subject.saes, batch, io, s, calib, calib_obj, n=n, steps=steps,
                            budget=args.budget, **size))
        print(f"scaling: {rows[-1]}", file=sys.stderr, flush=True)
    print(table(rows))
    print(json.dumps({"rows": rows, "steps": steps, "budget_l2": args.budget, "cpus": os.cpu_count(),
                      "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 2)}))
    return rows


if __name__ == "__main__":
    main()
