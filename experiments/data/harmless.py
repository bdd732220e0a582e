"""Our own harmless instruction set: everyday requests, for over-refusal and contrast directions.

No permissively licensed harmless-instruction set ships in a package we can use offline,
so we wrote one (``harmless_instructions.txt``, shipped with the package): >= 200 distinct
requests across cooking, science, history, writing, math, travel, coding, health, home,
money, hobbies, language, pets, quick facts and planning. Lines starting with ``#`` are
section comments.

Example::

    harmless = load_harmless().prompts[:32]
"""

from __future__ import annotations

from pathlib import Path

from experiments.data.refusal import PromptSet
from guard.errors import ToolkitError

HARMLESS_FILE = Path(__file__).with_name("harmless_instructions.txt")


def load_harmless(path: str | Path = HARMLESS_FILE) -> PromptSet:
    """The shipped harmless instructions (or another file in the same one-per-line format)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"data: harmless instruction file {str(path)!r} does not exist")
    prompts: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            prompts.setdefault(line, None)
    if not prompts:
        raise ToolkitError(f"data: {path} holds no instructions")
    return PromptSet("harmless", tuple(prompts), str(path))
