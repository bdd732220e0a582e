"""``python -m experiments.subject check``: the embedded subject loads offline and behaves.

Compares TransformerLens log-probabilities with the transformers model dequantised from
the same GGUF file, and runs 20 generated IOI prompts. Last line: one JSON object.
"""

from __future__ import annotations

import time

import torch

from experiments.settings.ioi import ioi_prompts
from experiments.subject.smollm2 import load_hf_model, load_model

PROMPTS = (
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "<|im_start|>user\nWrite a haiku about autumn.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
)


@torch.inference_mode()
def max_logprob_diff(model, hf_model, prompts=PROMPTS) -> float:
    worst = 0.0
    for prompt in prompts:
        tokens = model.tokenizer(prompt, return_tensors="pt").input_ids
        ours = model(tokens).log_softmax(-1)
        reference = hf_model(tokens).logits.log_softmax(-1)
        worst = max(worst, (ours - reference).abs().max().item())
    return worst


@torch.inference_mode()
def ioi_accuracy(model, n: int = 20, seed: int = 0) -> tuple[int, float]:
    samples = ioi_prompts(model.tokenizer, n, seed)
    correct, diffs = 0, []
    for sample in samples:
        logits = model(torch.tensor([sample.tokens]))[0, -1]
        diff = (logits[sample.io] - logits[sample.s]).item()
        diffs.append(diff)
        correct += diff > 0
    return correct, sum(diffs) / len(diffs)


def run_check() -> dict:
    start = time.perf_counter()
    model = load_model()
    load_seconds = time.perf_counter() - start
    diff = max_logprob_diff(model, load_hf_model())
    correct, mean_diff = ioi_accuracy(model)
    print(f"model loaded in {load_seconds:.1f} s; max |log-prob diff| vs transformers {diff:.2e}")
    print(f"IOI: {correct}/20 correct, mean logit difference {mean_diff:.2f}")
    return {"max_abs_logprob_diff": diff, "ioi_correct": correct, "ioi_total": 20, "load_seconds": load_seconds}

