"""``python -m experiments.saes build|evaluate``: train, ship and evaluate the project's SAEs.

build     corpus -> activations -> one SAE per site -> shipped folders with cards (resumable)
evaluate  every shipped SAE on held-out text (built in, or --text-file); last line is JSON
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from experiments.saes.collect import CONTEXT, collect, open_activations, token_windows
from experiments.saes.corpus import build_documents, composition, corpus_dir, write_heldout_text
from experiments.saes.evaluate import evaluate_saes
from experiments.saes.shipped import SHIPPED_DIR, SITES, load_shipped_saes, shipped_sites, site_folder
from experiments.saes.train import TrainConfig, config_dict, save_shipped, train_sae
from experiments.subject.smollm2 import MODEL_NAME, load_model
from guard import validate
from guard.errors import ToolkitError

HELDOUT_FILE = "heldout.jsonl"


def _heldout_texts(text_file: str | None) -> list[str]:
    if text_file:
        return [validate.text_file(text_file, "--text-file")]
    path = corpus_dir() / HELDOUT_FILE
    if not path.is_file():
        write_heldout_text(build_documents(), path)
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def _windows(texts, tokenizer, max_tokens: int) -> list[list[int]]:
    n = max(1, max_tokens // (CONTEXT - 1))
    return list(itertools.islice(token_windows(texts, tokenizer), n))


def cmd_evaluate(args) -> list[dict]:
    texts = _heldout_texts(args.text_file)  # before the model: a bad file fails in a second
    if not shipped_sites(args.sae_dir):
        raise ToolkitError(f"no shipped SAEs found under {args.sae_dir or SHIPPED_DIR}; "
                           "run: python -m experiments.saes build")
    model = load_model(args.device)
    saes = load_shipped_saes(args.sae_dir, device=args.device)
    windows = _windows(texts, model.tokenizer, args.max_tokens)
    if not windows:
        raise ToolkitError(f"--text-file {args.text_file}: fewer tokens than one window of {CONTEXT}")

    start = time.perf_counter()
    results = evaluate_saes(model, saes, windows)
    seconds = time.perf_counter() - start
    for row in results:
        print(f"{row['site']}: EV {row['explained_variance']:.3f}  CE recovered {row['ce_loss_recovered']:.3f}  "
              f"L0 {row['l0']:.1f}  dead {row['dead_fraction']:.3%}  ({row['tokens']} tokens)")
    print(f"evaluated in {seconds:.1f} s")
    keys = ("site", "explained_variance", "ce_loss_recovered", "l0", "dead_fraction", "tokens")
    print(json.dumps([{k: row[k] for k in keys} for row in results]))
    return results


def cmd_build(args) -> None:
    import numpy as np


    model = load_model(args.device)
    docs = build_documents(seed=args.seed)
    write_heldout_text(docs, corpus_dir() / HELDOUT_FILE)
    train_texts = [d.text for d in docs if not d.heldout]
    n_windows = args.train_tokens // (CONTEXT - 1)
    windows = list(itertools.islice(token_windows(train_texts, model.tokenizer), n_windows))
    acts_dir = corpus_dir() / f"activations-{len(windows)}"
    progress = collect(model, windows, SITES, acts_dir)
    cfg = TrainConfig(d_sae=args.d_sae, k=args.k, epochs=args.epochs, dead_feature_window=args.dead_window,
                      seed=args.seed)
    heldout = _windows(_heldout_texts(None), model.tokenizer, args.eval_tokens)
    out_root = Path(args.sae_dir) if args.sae_dir else SHIPPED_DIR
    for site in SITES:
        folder = site_folder(site, out_root)
        card_path = folder / "card.json"
        if card_path.is_file() and json.loads(card_path.read_text()).get("hyperparameters") == config_dict(cfg):
            print(f"{site}: already trained, skipping")
            continue
        acts = open_activations(acts_dir, site, progress["tokens"], model.cfg.d_model, mode="r")
        sae, stats = train_sae(site, np.asarray(acts), cfg, MODEL_NAME)
        metrics = evaluate_saes(model, {site: sae}, heldout)[0]
        card = {
            "site": site,
            "model": MODEL_NAME,
            "hyperparameters": config_dict(cfg),
            "corpus": composition(docs),
            "context": CONTEXT,
            "positions": "position 0 of every window excluded",
            "training": stats,
            "heldout_metrics": metrics,
        }
        save_shipped(sae, folder, card)
        print(json.dumps({"site": site, **{k: metrics[k] for k in ("explained_variance", "ce_loss_recovered", "l0",
                                                                  "dead_fraction")}}))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.saes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="evaluate the shipped SAEs on held-out text")
    ev.add_argument("--text-file", help="plain-text file to evaluate on (default: the built-in held-out split)")
    ev.add_argument("--max-tokens", type=int, default=20_000)
    build = sub.add_parser("build", help="build corpus, collect activations, train and ship SAEs (resumable)")
    build.add_argument("--train-tokens", type=int, default=1_200_000)
    build.add_argument("--eval-tokens", type=int, default=20_000)
    build.add_argument("--d-sae", type=int, default=2304)
    build.add_argument("--k", type=int, default=40)
    build.add_argument("--epochs", type=int, default=1)
    build.add_argument("--dead-window", type=int, default=30, help="steps without firing before aux-k revival")
    build.add_argument("--seed", type=int, default=0)
    for p in (ev, build):
        p.add_argument("--sae-dir", help="folder of SAE site folders (default: the shipped set)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    args = parser.parse_args(argv)
    with validate.cli_errors(args.debug):
        check_args(args)
        {"evaluate": cmd_evaluate, "build": cmd_build}[args.command](args)


def check_args(args: argparse.Namespace) -> None:
    """Numbers, folders and device checked before the model loads (a typo must not cost minutes)."""
    validate.device(args.device)
    if args.command == "evaluate":
        validate.integer(args.max_tokens, "--max-tokens", minimum=1)
        if args.sae_dir is not None:
            validate.existing_dir(args.sae_dir, "--sae-dir")
        return
    validate.integer(args.train_tokens, "--train-tokens", minimum=CONTEXT - 1)
    for flag in ("eval_tokens", "d_sae", "k", "epochs", "dead_window"):
        validate.integer(getattr(args, flag), f"--{flag.replace('_', '-')}", minimum=1)
    validate.integer(args.seed, "--seed", minimum=0)
    if args.k > args.d_sae:
        raise ToolkitError(f"--k {args.k} must not exceed --d-sae {args.d_sae}")
    if args.sae_dir is not None:
        validate.writable_dir(args.sae_dir, "--sae-dir")


if __name__ == "__main__":
    main()
