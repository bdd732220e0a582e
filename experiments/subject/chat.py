"""ChatML prompts for the subject (the format SmolLM2-Instruct was tuned on)."""

from __future__ import annotations

from attacks.generate import default_stop_tokens

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
END = "<|im_end|>"


def chat_prompt(user: str, system: str | None = DEFAULT_SYSTEM, assistant_prefix: str = "") -> str:
    """The prompt text up to the assistant's turn (optionally with the start of its answer).

    ``system=None`` leaves the system turn out; the default system turn is the one the
    subject's own chat template inserts when none is given.
    """
    parts = []
    if system is not None:
        parts.append(f"<|im_start|>system\n{system}{END}\n")
    parts.append(f"<|im_start|>user\n{user}{END}\n<|im_start|>assistant\n{assistant_prefix}")
    return "".join(parts)


def chat_transcript(user: str, reply: str, system: str | None = DEFAULT_SYSTEM) -> str:
    """A whole exchange, reply closed with the end-of-turn token."""
    return chat_prompt(user, system) + reply + END + "\n"


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """Where generation from a chat prompt ends: the tokenizer's EOS and the end-of-turn marker."""
    return default_stop_tokens(tokenizer, (END,))
