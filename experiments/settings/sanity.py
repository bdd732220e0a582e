"""How often the undefended subject shows a setting's behaviour (no SAEs needed).

    python -m experiments.settings.sanity ioi --n 100
    python -m experiments.settings.sanity recall            # every fact, default formats
    python -m experiments.settings.sanity recall --formats free choice mc

The last printed line is one JSON object: n, n_present, mean/median/min score, and counts
per group (IOI: template and order; recall: format and category).
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

from experiments.settings import get_setting, score_samples
from experiments.subject import load_subject


def _group(sample) -> str:
    if hasattr(sample, "order"):
        return f"t{sample.template}/{sample.order}"
    return f"{sample.format}/{sample.category}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.settings.sanity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", help="registered setting name (e.g. ioi, recall, unlearning)")
    parser.add_argument("--n", type=int, default=None, help="number of samples (default: the setting's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", default=None, help="a JSONL prompts file instead of the built-in data")
    parser.add_argument("--formats", nargs="+", default=None, help="recall formats (free, choice, mc)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: matters on a shared CPU

    overrides = {"formats": tuple(args.formats)} if args.formats else {}
    setting = get_setting(args.setting, **overrides)
    subject = load_subject(device=args.device, with_saes=False)
    samples = setting.samples(subject.tokenizer, n=args.n, seed=args.seed, prompts_file=args.prompts)
    scores = score_samples(subject.model, samples, batch_size=args.batch_size, progress=True)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sample, score in zip(samples, scores.tolist(), strict=True):
        key = _group(sample)
        groups[key][0] += score > 0
        groups[key][1] += 1
        if key.count("/") == 1 and not key.startswith("t"):
            fmt = key.split("/")[0]
            groups[f"{fmt}/all"][0] += score > 0
            groups[f"{fmt}/all"][1] += 1
    result = {
        "setting": setting.name, "n": len(samples), "n_present": int((scores > 0).sum()),
        "mean_score": float(scores.mean()), "median_score": float(scores.median()), "min_score": float(scores.min()),
        "groups": {k: f"{a}/{b}" for k, (a, b) in sorted(groups.items())},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
