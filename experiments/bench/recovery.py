"""``python -m experiments.bench.recovery [--quick]``: our recovery engine against a reference-style loop.

Both run in one process on the embedded subject (SmolLM2-135M-Instruct) with the same IOI
prompts, defense, budget (absolute L2 at the last token) and step count:

(a) ``GradientRecovery`` with the encoder-orthogonal constraint: all examples in one batch,
    starting at the perturbed layer with the prompt prefix cached, delta re-projected
    every step, per-example early stop;
(b) ``reference_attack``: batch 1, full forward from token 0 each step, ridge solve per
    row per step, Adam on the projected gradient, delta never re-projected.

The defense clamps (to 0) a set of SAE latents at ``blocks.12.hook_resid_post`` that drops
the IO-vs-S logit difference. With the shipped SAE (``--sae shipped``) the set is the 64
latents with the largest attribution to that difference on held-apart calibration prompts.
Until SAEs ship, ``--sae stand-in`` uses a seeded random-init SAELens JumpReLU SAE of width
2304 in which 64 latents are planted as +/- pairs along the top 32 directions of the
logit-difference gradient on the calibration prompts (a legitimate stand-in for timing and
constraint violation, not for science); the output says which as ``sae_source``.

Only valid samples count: the undefended model prefers IO (difference > 0) and the
defended one does not. Each engine runs twice on the same samples and steps, side by side in
one process: with its early stop (an example stops once it succeeds with margin 0.01; the
reference given that rule through ``stop_margin``) and without (every step for every example;
the engine's best delta judged by its independent forward at margin 0). The engine runs as the
suites run it (weights in kernel order, ``fast_weight_layout``); the reference as it is.

Last printed line: ``{"speedup", "speedup_equal_stop", "speedup_equal_steps", "step_over_floor",
"recovery_ours", "recovery_reference", "violation_ours", "violation_reference", "n", "sae_source",
"load_average_1min"}``. ``speedup``: wall time per recovered example, the reference without its
stop over ours with it (the two loops as each is written); ``speedup_equal_stop`` and
``speedup_equal_steps``: CPU time per recovered example, reference over ours, both stopping early /
both running every step. ``step_over_floor``: CPU time of one of our attack steps (an all-steps run
less a 0-step run, over the steps) over the cost floor of a step: one defended forward from the
perturbed layer over the positions that change (the last one, the prefix cached, logits at the
read-out only) and its backward to delta, same rows (medians of interleaved repeats). Violation is
the largest ``||W_enc[:,S]^T delta|| / (||W_enc[:,S]||_2 ||delta||)`` over the n examples.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy OpenMP threads slow a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from attacks.batch import AttackBatch  # noqa: E402
from attacks.engine import AttackConfig, GradientRecovery  # noqa: E402
from attacks.forward import DefendedForward, fast_weight_layout, frozen_weights, full_forward  # noqa: E402
from attacks.objectives import LogitDifference  # noqa: E402
from attacks.reference import reference_attack  # noqa: E402
from attacks.threat import ThreatModel  # noqa: E402
from experiments.subject import load_subject  # noqa: E402
from guard.base import NoDefense  # noqa: E402
from guard.clamp import ClampConfig, FeatureClamp  # noqa: E402

SITE = "blocks.12.hook_resid_post"
TEMPLATES = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "After {A} and {B} arrived at the park, {S} handed a ball to",
    "While {A} and {B} were working at the office, {S} sent an email to",
    "When {A} and {B} got to the party, {S} gave a present to",
    "After lunch, {A} and {B} walked to the station, and {S} passed a ticket to",
    "When {A} and {B} visited the museum, {S} showed a painting to",
)
NAMES = ("Mary", "John", "James", "Robert", "Michael", "David", "Sarah", "Lisa", "Emma", "Paul", "Anna",
         "Kevin", "Susan", "Peter", "Laura", "Daniel", "Thomas", "Jennifer", "Linda", "George")
N_LATENTS = 64


def ioi_prompts(tokenizer, n: int, seed: int) -> tuple[AttackBatch, torch.Tensor, torch.Tensor]:
    """``n`` IOI prompts (ABBA and BABA alternating): batch, IO token ids, S token ids."""
    names = [x for x in NAMES if len(tokenizer.encode(" " + x, add_special_tokens=False)) == 1]
    rng = random.Random(seed)
    seqs, io, s = [], [], []
    for i in range(n):
        io_name, s_name = rng.sample(names, 2)
        a, b = (io_name, s_name) if i % 2 == 0 else (s_name, io_name)
        text = rng.choice(TEMPLATES).format(A=a, B=b, S=s_name)
        seqs.append(tokenizer.encode(text, add_special_tokens=False))
        io.append(tokenizer.encode(" " + io_name, add_special_tokens=False)[0])
        s.append(tokenizer.encode(" " + s_name, add_special_tokens=False)[0])
    return AttackBatch.from_lists(seqs, pad_id=tokenizer.pad_token_id or 0), torch.tensor(io), torch.tensor(s)


@torch.no_grad()
def logit_diff(model, defense, batch: AttackBatch, obj: LogitDifference) -> torch.Tensor:
    picked, _ = full_forward(model, defense, batch, [], readout=obj.readout(batch))
    return obj.score(picked, torch.arange(batch.size))


def site_gradients(model, batch: AttackBatch, obj: LogitDifference,
                   site: str = SITE) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual at ``site`` [batch, pos, d_model] and the logit-difference gradient there."""
    store = {}

    def keep(resid, hook):
        store["r"] = resid.detach().requires_grad_()  # a leaf: the model's weights are frozen
        return store["r"]

    with model.hooks(fwd_hooks=[(site, keep)]):
        picked, _ = full_forward(model, NoDefense(), batch, [], readout=obj.readout(batch))
    obj.score(picked, torch.arange(batch.size)).sum().backward()
    valid = batch.valid()[..., None].float()
    return store["r"].detach() * valid, store["r"].grad * valid


def stand_in_sae(model, calib: AttackBatch, calib_obj: LogitDifference, seed: int):
    """Random-init JumpReLU SAE (width 2304) with 64 planted latents: +/- pairs along the top 32
    directions of the logit-difference gradient (positions >= 1) on the calibration prompts."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(seed)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=model.cfg.d_model, d_sae=2304, dtype="float32")).eval()
    _, grads = site_gradients(model, calib, calib_obj)
    dirs = torch.linalg.svd(grads[:, 1:].reshape(-1, grads.shape[-1]), full_matrices=False).Vh[: N_LATENTS // 2]
    gen = torch.Generator().manual_seed(seed)
    features = torch.randperm(2304, generator=gen)[:N_LATENTS]
    with torch.no_grad():
        planted = torch.cat([dirs, -dirs])  # z_+ - z_- = u . h, so clamping both to 0 removes u . h
        sae.W_enc[:, features] = planted.T
        sae.W_dec[features] = planted
        sae.b_enc[features] = 0.0
        sae.threshold[features] = 0.0
    return sae, features


def attribution_features(model, sae, calib: AttackBatch, calib_obj: LogitDifference, k: int = N_LATENTS,
                         site: str = SITE) -> torch.Tensor:
    """The ``k`` latents at ``site`` whose removal most lowers the logit difference, to first order
    (activation x decoder . gradient, summed over calibration prompts and positions >= 1)."""
    resid, grads = site_gradients(model, calib, calib_obj, site)
    with torch.no_grad():
        z = sae.encode(resid)[:, 1:]
        effect = torch.einsum("bpf,bpd,fd->f", z, grads[:, 1:], sae.W_dec)
    return effect.topk(k).indices


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.bench.recovery",
        description="Recovery attack engine vs a reference-style loop on the embedded subject (IOI, "
        "encoder-orthogonal, last token). Last line: JSON with speedup, recovery and violation.",
    )
    p.add_argument("--quick", action="store_true", help="small run: 8 examples, 25 steps")
    p.add_argument("--n", type=int, default=None, help="valid examples to attack (default 24; quick 8)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps, both engines (default 100; quick 25)")
    p.add_argument("--budget", type=float, default=20.0, help="absolute L2 budget at the last token (default 20)")
    p.add_argument("--step-size", type=float, default=0.1,
                   help="per-step move as a fraction of the budget; the reference's Adam lr is "
                   "step_size * budget / sqrt(d_model) (default 0.1)")
    p.add_argument("--sae", choices=("shipped", "stand-in"), default="shipped",
                   help="the shipped SAE at blocks.12 (default) or a seeded random stand-in")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    n = args.n or (8 if args.quick else 24)
    steps = args.steps or (25 if args.quick else 100)

    t0 = time.perf_counter()
    subject = load_subject(with_saes=args.sae == "shipped")
    model, tok = subject.model, subject.tokenizer
    for p in model.parameters():
        p.requires_grad_(False)
    print(f"subject loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    calib, calib_io, calib_s = ioi_prompts(tok, 8, seed=args.seed + 1000)
    calib_obj = LogitDifference(calib_io, calib_s)
    if args.sae == "shipped":
        if SITE not in subject.saes:
            sys.exit(f"experiments.bench.recovery: no shipped SAE at {SITE} (shipped: {sorted(subject.saes) or 'none'}). "
                     "Build them (python -m experiments.saes build) or run with --sae stand-in.")
        sae = subject.saes[SITE]
        features = attribution_features(model, sae, calib, calib_obj)
        sae_source = "shipped"
    else:
        sae, features = stand_in_sae(model, calib, calib_obj, args.seed)
        sae_source = "random-stand-in-planted"

    defense = FeatureClamp(ClampConfig(features={SITE: tuple(features.tolist())}), {SITE: sae})
    cand, io, s = ioi_prompts(tok, 8 * n, seed=args.seed)  # about a third are valid
    obj_all = LogitDifference(io, s)
    clean = logit_diff(model, NoDefense(), cand, obj_all)
    defended = logit_diff(model, defense, cand, obj_all)
    valid = ((clean > 0) & (defended <= 0)).nonzero().flatten()[:n]
    if valid.numel() == 0:
        sys.exit("experiments.bench.recovery: no valid sample (undefended prefers IO, defended does not)")
    batch, objective = cand.select(valid), LogitDifference(io[valid], s[valid])
    print(f"{valid.numel()} valid of {cand.size} candidates; clean diff {clean[valid].mean():.2f}, "
          f"defended {defended[valid].mean():.2f}", file=sys.stderr)

    threat = ThreatModel.make(SITE, positions="last", budget=args.budget, relative=False, constraint="encoder")
    lr = args.step_size * args.budget / math.sqrt(model.cfg.d_model)
    cols = sae.W_enc[:, features]

    def ours(stop: bool, n_steps: int = steps):
        config = AttackConfig(steps=n_steps, step_size=args.step_size, stop_margin=1e-2 if stop else math.inf)
        with fast_weight_layout(model):  # as the suites run it
            return timed(lambda: GradientRecovery(model, defense, threat, objective, config).run(batch))

    def reference(stop: bool):
        return timed(lambda: reference_attack(model, defense, SITE, cols, objective, batch, args.budget, steps, lr,
                                              stop_margin=1e-2 if stop else None))

    # side by side, same samples and steps: each engine with and without the early stop (margin 0.01)
    runs = {"ours": ours(True), "ours_all_steps": ours(False), "reference": reference(False),
            "reference_early_stop": reference(True)}
    recovered = {name: int(r.success.sum()) for name, (r, _, _) in runs.items()}
    # never stopping, the engine claims nothing itself (a claim is its stop); its best delta is judged by
    # the same independent forward, at margin 0
    recovered["ours_all_steps"] = int((runs["ours_all_steps"][0].score > 0).sum())
    for name, (_, wall, cpu) in runs.items():
        print(f"{name}: {recovered[name]}/{batch.size} recovered, {wall:.1f} s wall, {cpu:.1f} s CPU", file=sys.stderr)

    def per_recovered(name: str, clock: int) -> float:
        return runs[name][clock] / max(recovered[name], 1)

    def speedup(theirs: str, mine: str, clock: int = 2) -> float | None:
        if not (recovered[theirs] and recovered[mine]):
            return None
        return round(per_recovered(theirs, clock) / per_recovered(mine, clock), 2)

    # the cost floor of a step: one forward + backward from the perturbed layer over the positions that
    # change (the last one), on the same rows; a step's own time is an all-steps run less its set-up (a
    # 0-step run). Interleaved and the medians taken, so a load that changes during the bench hits both.
    step_times, setup_times, floors = [runs["ours_all_steps"][2]], [], []
    for i in range(3):
        setup_times.append(ours(False, 0)[2])
        floors.append(step_floor(model, defense, threat, objective, batch))
        if i < 2:
            step_times.append(ours(False)[2])
    setup_cpu, floor = statistics.median(setup_times), statistics.median(floors)
    step = (statistics.median(step_times) - setup_cpu) / steps
    ours_result = runs["ours"][0]
    ref = runs["reference"][0]
    details = {
        **{f"wall_{k}": round(w, 2) for k, (_, w, _) in runs.items()},
        # CPU seconds of this process: robust to a machine shared with other jobs
        **{f"cpu_{k}": round(c, 2) for k, (_, _, c) in runs.items()},
        **{f"recovered_{k}": v for k, v in recovered.items()},
        "speedup_cpu": speedup("reference", "ours"),
        "step_seconds": round(step, 5), "floor_seconds": round(floor, 5), "setup_seconds": round(setup_cpu, 3),
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "steps": steps, "budget_l2": args.budget, "site": SITE, "n_latents": int(features.numel()),
        "mean_steps_ours": float(ours_result.steps.float().mean()),
        "mean_steps_reference_early_stop": float(runs["reference_early_stop"][0].steps.float().mean()),
        "max_relative_norm_ours": float(ours_result.relative_norm.max()),
        "score_ours": [round(x, 3) for x in ours_result.score.tolist()],
        "score_reference": [round(x, 3) for x in ref.score.tolist()],
        "clean_diff": [round(x, 3) for x in clean[valid].tolist()],
        "flags": list(ours_result.flags),
    }
    print(json.dumps(details))
    summary = {
        # wall time per recovered example, reference (all steps) over ours (early stop), as before
        "speedup": round(per_recovered("reference", 1) / per_recovered("ours", 1), 2)
        if recovered["ours"] and recovered["reference"] else None,
        # CPU time per recovered example at an equal rule: both stop early / both run every step
        "speedup_equal_stop": speedup("reference_early_stop", "ours"),
        "speedup_equal_steps": speedup("reference", "ours_all_steps"),
        "step_over_floor": round(step / floor, 2),
        "recovery_ours": recovered["ours"] / ours_result.n,
        "recovery_reference": recovered["reference"] / batch.size,
        "violation_ours": float(ours_result.orthogonality.max()),
        "violation_reference": float(ref.orthogonality.max()),
        "n": ours_result.n,
        "sae_source": sae_source,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary))
    return summary


def timed(run):
    """(result, wall seconds, CPU seconds of this process) of ``run()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def step_floor(model, defense, threat: ThreatModel, objective: LogitDifference, batch: AttackBatch,
               reps: int = 10) -> float:
    """Median CPU seconds of one defended forward from the perturbed layer over the positions that change
    (cached prefix, logits at the read-out only) and its backward to delta, every row of ``batch``."""
    bound = threat.bind(defense, model)
    rows = torch.arange(batch.size)
    times = []
    with fast_weight_layout(model), frozen_weights(model, *[d.sae for d in defense.defended_latents()]):
        fwd = DefendedForward(model, bound, batch, objective.readout(batch), True)
        for _ in range(reps + 1):
            deltas = {s: torch.zeros_like(fwd.resid_def[s]).requires_grad_() for s in bound.sites}
            start = time.process_time()
            out = fwd.run(rows, deltas, monitor=False)
            objective.loss(objective.score(out.logits, rows), rows).sum().backward()
            times.append(time.process_time() - start)
    return sorted(times[1:])[reps // 2]  # the first is a warm-up


if __name__ == "__main__":
    main()
