"""``python -m experiments.bench.suffix``: the embedding-threat attack with and without the cached prompt prefix.

Both run in one process on the embedded subject under the refusal defense of the default
refusal reproduction (8 refusal latents at blocks.6 and blocks.12 set to 7, see
``experiments.refusal``), on the same harmful requests, target answers (the undefended
subject's first 16 answer tokens), suffix length and step count, alternately (full, cached,
full, cached) so that a busy machine slows both alike: the engine's Adam attack on a 16-token
suffix before the end of the user turn (``attacks.suffix``), ``AttackConfig.reuse_prefix`` off and
on. No early stop (an unreachable goal), so both take every step.

Last printed line: ``{"speedup", "max_score_diff", "n", "steps"}``: speedup is the full
forward's CPU seconds over the cached one's; max_score_diff the largest difference between
the two runs' final objective values (the same attack, so rounding only).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy OpenMP threads slow a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

from attacks.batch import AttackBatch  # noqa: E402
from attacks.engine import AttackConfig, GradientRecovery  # noqa: E402
from attacks.objectives import Continuation  # noqa: E402
from attacks.suffix import SuffixSlot  # noqa: E402
from experiments.refusal.cli import DEFAULT, load_requests
from experiments.refusal.discovery import discover_refusal_clamp
from experiments.refusal.pipeline import split
from experiments.refusal.recovery import generate_and_judge, refusal_first_tokens
from experiments.subject import load_subject
from experiments.subject.chat import END, chat_prompt


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.suffix", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=16, help="harmful requests attacked in one batch (default 16)")
    p.add_argument("--steps", type=int, default=5, help="Adam steps per run (default 5)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternated (default 2)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)

    subject = load_subject()
    model, tok = subject.model, subject.tokenizer
    select, evaluate = split(load_requests(None), DEFAULT.n_select, DEFAULT.seed, args.n)
    discovery = replace(DEFAULT.discovery, value=7.0)  # the default run's calibrated value, no calibration
    defense = discover_refusal_clamp(model, subject.saes, select, [], discovery, log=lambda m: None).defense
    _, _, prompt_ids, answers = generate_and_judge(model, evaluate, None, 16, args.n)
    slot = SuffixSlot.before_marker(tok, chat_prompt(evaluate[0]), END, n_tokens=16)
    seqs = [slot.insert(p) for p in prompt_ids]
    batch = AttackBatch.from_lists([s + a[:16] for s, a in zip(seqs, answers, strict=True)],
                                   prompt_lengths=[len(s) for s in seqs])
    # min_mean_logprob above 0 is unreachable: no example stops early
    objective = Continuation(batch, refusal_first_tokens(tok), min_mean_logprob=1.0)
    cpu: dict[bool, float] = {False: 0.0, True: 0.0}
    wall: dict[bool, float] = {False: 0.0, True: 0.0}
    scores = {}
    for _ in range(args.repeats):
        for reuse in (False, True):
            attack = GradientRecovery(model, defense, slot.threat(4.0), objective,
                                      AttackConfig(steps=args.steps, reuse_prefix=reuse))
            c0, w0 = time.process_time(), time.perf_counter()
            scores[reuse] = attack.run(batch).score
            cpu[reuse] += time.process_time() - c0
            wall[reuse] += time.perf_counter() - w0
            print(f"reuse_prefix={reuse}: {time.perf_counter() - w0:.1f} s wall", file=sys.stderr, flush=True)
    print(json.dumps({"cpu_full": round(cpu[False], 1), "cpu_cached": round(cpu[True], 1),
                      "wall_full": round(wall[False], 1), "wall_cached": round(wall[True], 1)}))
    summary = {"speedup": round(cpu[False] / cpu[True], 2),
               "max_score_diff": float((scores[False] - scores[True]).abs().max()),
               "n": len(seqs), "steps": args.steps}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
