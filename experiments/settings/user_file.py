"""Reading a user's prompt file (JSONL, one JSON object a line) with errors that name the line.

Answers are continuations of the prompt: a leading space is added to an answer unless it
already starts with whitespace or the prompt ends with whitespace, so ``"io": "Mary"``
after "... gave a drink to" means the token `` Mary``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from guard import validate
from guard.errors import ToolkitError


def read_jsonl(path: str | Path, setting: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line_number, row)`` for every non-blank line; a bad line (or a non-UTF-8 file) raises naming it."""
    return validate.numbered_jsonl_rows(path, (), f"setting {setting!r}: prompts file")


def check_context(tokenizer, path: str | Path, n_ctx: int, what: str, *, render: Callable[[str], str] | None = None,
                  reserve: int = 0) -> None:
    """Every ``"prompt"`` of a JSONL file, plus ``reserve`` generated tokens, fits the context window.

    Run once the tokenizer is loaded and before any attack: otherwise one long row fails as a
    raw shape error deep inside a forward pass. ``render``: the text the model sees (chat template).
    """
    for lineno, row in validate.numbered_jsonl_rows(path, ("prompt",), what, {"prompt": str}):
        n = len(encode(tokenizer, row["prompt"] if render is None else render(row["prompt"])))
        if n + reserve > n_ctx:
            extra = f" (+ {reserve} generated)" if reserve else ""
            raise ToolkitError(f"{what} {path} line {lineno}: the prompt is {n} tokens{extra}, longer than the "
                               f"model's context window of {n_ctx} tokens")


def require(row: dict[str, Any], keys: Iterable[str], where: str, kinds: dict[str, type] | None = None) -> None:
    """Every key present (and of the given type): else an error listing what is missing."""
    validate.require_keys(row, keys, where, kinds)


def continuation(prompt: str, answer: str) -> str:
    """The answer as the text that directly follows the prompt (see module docstring)."""
    if answer[:1].isspace() or prompt[-1:].isspace():
        return answer
    return " " + answer


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def answer_tokens(tokenizer, prompt: str, answer: str, where: str, key: str) -> list[int]:
    if not answer.strip():
        raise ToolkitError(f"{where}: {key!r} is empty")
    ids = encode(tokenizer, continuation(prompt, answer))
    if not ids:
        raise ToolkitError(f"{where}: {key!r} = {answer!r} encodes to no tokens")
    return ids


def single_token(tokenizer, prompt: str, answer: str, where: str, key: str) -> int:
    """The one token of ``answer`` after ``prompt``; several tokens raise naming the row."""
    ids = answer_tokens(tokenizer, prompt, answer, where, key)
    if len(ids) != 1:
        pieces = [tokenizer.decode([i]) for i in ids]
        raise ToolkitError(
            f"{where}: {key!r} = {answer!r} is {len(ids)} tokens {pieces} for this tokenizer; "
            "it must be a single token (choose another name)"
        )
    return ids[0]


def prompt_tokens(tokenizer, prompt: str, where: str) -> tuple[int, ...]:
    if not prompt:
        raise ToolkitError(f"{where}: 'prompt' is empty")
    return tuple(encode(tokenizer, prompt))


def unique_ids(ids: Sequence[str], setting: str, path: str | Path) -> None:
    seen: set[str] = set()
    for sample_id in ids:
        if sample_id in seen:
            raise ToolkitError(f"setting {setting!r}: {Path(path).name}: duplicate sample id {sample_id!r}")
        seen.add(sample_id)
