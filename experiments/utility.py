"""``python -m experiments.utility [--text-file F]``: the utility cost of every registered defense
on the embedded subject (SmolLM2-135M-Instruct plus the shipped SAEs).

The benign text (built in, or ``--text-file``) is tokenised and cut into chunks of ``--seq-len``
tokens; the first ``--calib-fraction`` of chunks calibrates the residual-aware defenses, the
rest is held out (``utility_report``). Clamp features: since no setting has
selected features here, every site clamps a fixed random set of ``--n-features`` latents (seed
``--seed``) to 0 -- a stand-in for a real feature set, stated in the output. Behaviour
directions come from the built-in contrast requests (``guard.texts``). The last printed line
is one JSON object keyed by defense name.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from certify.stats import Rate
from experiments.saes.shipped import SHIPPED_DIR, shipped_sites
from experiments.subject import load_subject
from experiments.subject.chat import chat_prompt, chat_transcript
from guard import validate
from guard.errors import ToolkitError
from guard.monitor import ErrorMonitor, false_positive_rate
from guard.registry import DEFENSES, build_defaults
from guard.spec import CalibrationData
from guard.texts import BEHAVIOUR_REQUESTS, BENIGN_EXCHANGES, BENIGN_PARAGRAPHS, CONTRAST_REQUESTS
from guard.utility import chunk_tokens, measure_utility_many, random_features


def builtin_text() -> str:
    """The built-in benign text: prose paragraphs interleaved with chat transcripts of the subject."""
    parts = []
    for i, paragraph in enumerate(BENIGN_PARAGRAPHS):
        parts.append(paragraph + "\n\n")
        if i < len(BENIGN_EXCHANGES):  # interleave, so both halves hold prose and chat
            parts.append(chat_transcript(*BENIGN_EXCHANGES[i]))
    return "".join(parts)


def utility_report(model, saes: Mapping[str, object], calib_tokens: torch.Tensor, eval_tokens: torch.Tensor,
                   behaviour_prompts: Sequence[torch.Tensor], contrast_prompts: Sequence[torch.Tensor], *,
                   features: Mapping[str, Sequence[int]], calib_dir: str | Path, names: Sequence[str] | None = None,
                   batch_size: int = 4, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Calibrate on ``calib_tokens`` (every SAE site), save, rebuild from the folders, and measure
    every (or each named) registered defense on ``eval_tokens``.

    Returns {defense name: {"delta_ce", "kl", "ce_base", "ce_defended", "n_tokens"}}; a monitor's
    entry adds its false-positive rate on the rows of ``eval_tokens`` (one row = one prompt).
    """
    if not saes:
        raise ToolkitError("utility: the subject has no SAEs")
    names = [DEFENSES.check(name, "utility") for name in names] if names else list(DEFENSES)
    defenses = build_defaults(names, saes, features, tuple(saes), calib_dir, lambda: CalibrationData.collect(
        model, saes, tuple(saes), calib_tokens, behaviour_prompts, contrast_prompts, features, progress=progress))
    results = measure_utility_many(model, defenses, eval_tokens, batch_size=batch_size, progress=progress)
    report = {name: {k: v for k, v in r.to_dict().items() if k != "name"} for name, r in results.items()}
    for name, defense in defenses.items():
        if isinstance(defense, ErrorMonitor):
            rate = false_positive_rate(model, defense, eval_tokens)
            report[name].update(fpr=rate.rate, fpr_k=rate.k, fpr_n=rate.n)
    return report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.utility",
        description="Utility cost (next-token CE increase, KL to the undefended model) of every registered "
                    "defense at its default settings on the embedded subject. Last line: one JSON object "
                    "keyed by defense name.")
    p.add_argument("--text-file", type=Path, help="benign text to calibrate on and evaluate (default: built in)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per chunk (default 128)")
    p.add_argument("--calib-fraction", type=float, default=0.5,
                   help="share of chunks used for calibration; the rest is held out (default 0.5)")
    p.add_argument("--n-features", type=int, default=16, help="random latents clamped per site (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random feature set (default 0)")
    p.add_argument("--defenses", default="", help="comma-separated subset of defense names (default: all)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sae-dir", type=Path, default=None, help="folder of SAEs (default: the shipped set)")
    p.add_argument("--save-calibrations", type=Path, default=None,
                   help="keep the calibration folders here (default: a temporary folder)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = _parser().parse_args(argv)
    with validate.cli_errors(args.debug):
        # every argument is checked before the subject loads: a typo must not cost minutes of calibration
        if not 0 < args.calib_fraction < 1:
            raise ToolkitError(f"--calib-fraction must lie in (0, 1), got {args.calib_fraction}")
        for flag, value, minimum in (("--seq-len", args.seq_len, 2), ("--n-features", args.n_features, 1),
                                     ("--seed", args.seed, 0), ("--batch-size", args.batch_size, 1)):
            validate.integer(value, flag, minimum=minimum)
        validate.device(args.device)
        names = [n.strip() for n in args.defenses.split(",") if n.strip()] or None
        for name in names or ():
            DEFENSES.check(name, "--defenses")
        text = validate.text_file(args.text_file, "--text-file") if args.text_file else None
        if args.save_calibrations is not None:
            validate.writable_dir(args.save_calibrations, "--save-calibrations")
        if args.sae_dir is not None:
            validate.existing_dir(args.sae_dir, "--sae-dir")
        if not shipped_sites(args.sae_dir):
            raise ToolkitError(f"no SAEs found under {args.sae_dir or SHIPPED_DIR} (the shipped set is not built "
                               "yet?); build them with `python -m experiments.saes build` or pass --sae-dir")
        subject = load_subject(device=args.device, sae_dir=args.sae_dir)
        model, saes = subject.model, {s: subject.saes[s] for s in subject.sites}
        if args.seq_len > model.cfg.n_ctx:
            raise ToolkitError(f"--seq-len {args.seq_len} is longer than the model's context window of "
                               f"{model.cfg.n_ctx} tokens")
        text = builtin_text() if text is None else text
        chunks = chunk_tokens(model.to_tokens(text, prepend_bos=False)[0], args.seq_len)
        n_calib = min(max(1, round(args.calib_fraction * len(chunks))), len(chunks) - 1)
        features = random_features(saes, args.n_features, args.seed)
        prompts = [[model.to_tokens(chat_prompt(r), prepend_bos=False)[0] for r in reqs]
                   for reqs in (BEHAVIOUR_REQUESTS, CONTRAST_REQUESTS)]
        print(f"clamp features: {args.n_features} random latents per site (seed {args.seed}), set to 0, at "
              f"{', '.join(saes)}; calibration on {n_calib} chunks, evaluation on {len(chunks) - n_calib} chunks "
              f"of {args.seq_len} tokens")
        with tempfile.TemporaryDirectory() as tmp:
            calib_dir = args.save_calibrations or Path(tmp)
            report = utility_report(model, saes, chunks[:n_calib], chunks[n_calib:], *prompts, features=features,
                                    calib_dir=calib_dir, names=names, batch_size=args.batch_size, progress=True)
        for name, entry in report.items():
            if "fpr_n" in entry:  # a monitor: its false-positive rate with the exact 95% interval
                rate = Rate.of(entry["fpr_k"], entry["fpr_n"])
                entry["fpr_ci"] = [rate.ci_low, rate.ci_high]
            print(f"{name:20s} delta_ce {entry['delta_ce']:+.4f}  kl {entry['kl']:.4f}")
        print(json.dumps(report))
        return report


if __name__ == "__main__":
    main()
