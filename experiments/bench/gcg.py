"""``python -m experiments.bench.gcg``: our token attack against nanoGCG on the undefended subject.

A correctness reference for ``attacks.tokens``: both minimise the same loss (mean cross-entropy
of a target answer after the chat prompt, the suffix before the end of the user turn, both
starting from nanoGCG's initial string "x x ... x"), with the same suffix length, steps,
candidates per step and top-k, one token replaced per candidate, no early stop. nanoGCG runs on
the transformers model the subject is converted from, one prompt at a time, without its prefix
cache (its cache code indexes a transformers 4 cache, which transformers 5 no longer has); ours on the
TransformerLens subject, the prompts in one batch. Ours runs once per checkpoint (the same seed
gives the same trajectory, so a shorter run is a prefix of a longer one).

Last printed line: ``{"steps", "candidates", "n", "nanogcg_loss", "ours_loss", "ratio"}`` with the
mean best loss at each checkpoint (ratio = ours / nanoGCG; lower loss is the stronger attack).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy OpenMP threads slow a shared CPU

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from attacks.batch import AttackBatch  # noqa: E402
from attacks.objectives import Continuation  # noqa: E402
from attacks.suffix import SuffixSlot  # noqa: E402
from attacks.tokens import TokenConfig, TokenSearch  # noqa: E402
from experiments.data.packages import import_unpacked  # noqa: E402
from experiments.refusal.cli import load_requests  # noqa: E402
from experiments.subject import load_subject  # noqa: E402
from experiments.subject.smollm2 import load_hf_model  # noqa: E402
from guard.base import NoDefense  # noqa: E402

TARGET = "Sure, here is what you asked for:"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.bench.gcg", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4, help="harmful requests (default 4)")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40], help="checkpoints (default 10 20 40)")
    p.add_argument("--candidates", type=int, default=32, help="candidates per step (default 32)")
    p.add_argument("--top-k", type=int, default=64, help="top-k replacements per position (default 64)")
    p.add_argument("--tokens", type=int, default=10, help="suffix length (default 10)")
    return p.parse_args(argv)


def prompt_parts(tok, request: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the suffix, split as nanoGCG splits its chat template."""
    messages = [{"role": "user", "content": request + "{optim_str}"}]
    template = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, after = template.split("{optim_str}")
    return tok(before)["input_ids"], tok(after, add_special_tokens=False)["input_ids"]


def main(argv=None) -> dict:
    nanogcg = import_unpacked("nanogcg")  # only this benchmark needs it (unpacked by scripts/install.sh)

    args = parse_args(argv)
    subject = load_subject()
    model, tok = subject.model, subject.tokenizer
    hf = load_hf_model()
    requests = load_requests(None)[: args.n]
    init = " ".join(["x"] * args.tokens)
    init_ids = tok(init, add_special_tokens=False)["input_ids"]
    target_ids = tok(TARGET, add_special_tokens=False)["input_ids"]
    if len(init_ids) != args.tokens:
        raise SystemExit(f"error: the initial string tokenizes into {len(init_ids)} tokens, not {args.tokens}")
    checkpoints = sorted(set(args.steps))

    nano: list[list[float]] = []
    t0 = time.perf_counter()
    for request in requests:
        config = nanogcg.GCGConfig(num_steps=checkpoints[-1], optim_str_init=init, search_width=args.candidates,
                                   topk=args.top_k, n_replace=1, seed=0, verbosity="WARNING",
                                   use_prefix_cache=False)  # nanoGCG 0.3's cache code predates transformers 5
        losses = nanogcg.run(hf, tok, request, TARGET, config).losses
        nano.append([min(losses[:s]) for s in checkpoints])
        print(f"nanoGCG {request[:40]!r}: {nano[-1]}", file=sys.stderr, flush=True)
    nano_s = time.perf_counter() - t0

    seqs, prompt_lengths, keep = [], [], None
    for request in requests:
        before, after = prompt_parts(tok, request)
        keep = len(after) if keep is None else keep
        if len(after) != keep:
            raise SystemExit("error: the prompts differ in what follows the suffix")
        prompt = before + init_ids + after
        seqs.append(prompt + target_ids)
        prompt_lengths.append(len(prompt))
    batch = AttackBatch.from_lists(seqs, prompt_lengths=prompt_lengths)
    threat = SuffixSlot(args.tokens, keep).threat(1.0)  # the init ids above fill the slot
    # refusal weight 0 and an unreachable stop: the score is the mean target log-probability, -CE
    objective = Continuation(batch, [tok(" I", add_special_tokens=False)["input_ids"][0]], refusal_weight=0.0,
                             min_mean_logprob=1.0)
    ours: list[list[float]] = [[] for _ in requests]
    t0 = time.perf_counter()
    for steps in checkpoints:
        config = TokenConfig(steps=steps, candidates=args.candidates, top_k=args.top_k, seed=0)
        score = TokenSearch(model, NoDefense(), threat, objective, config).run(batch).score
        for i, s in enumerate((-score).tolist()):
            ours[i].append(s)
    ours_s = time.perf_counter() - t0

    def mean(rows: list[list[float]], j: int) -> float:
        return round(sum(r[j] for r in rows) / len(rows), 4)

    summary = {"steps": checkpoints, "candidates": args.candidates, "top_k": args.top_k, "n": len(requests),
               "nanogcg_loss": [mean(nano, j) for j in range(len(checkpoints))],
               "ours_loss": [mean(ours, j) for j in range(len(checkpoints))],
               "nanogcg_seconds": round(nano_s, 1), "ours_seconds_all_checkpoints": round(ours_s, 1)}
    summary["ratio"] = [round(o / n, 3) for o, n in zip(summary["ours_loss"], summary["nanogcg_loss"], strict=True)]
    print(json.dumps({"per_prompt": {"nanogcg": nano, "ours": ours}}))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
