"""Indirect object identification (IOI): the model completes the name that was not repeated.

Source: the IOI task of Wang et al. (2022), used by Cui, Shen, Yang (arXiv 2606.18322) to
test single-layer recovery under a plain clamp. Example (ABBA): "When Mary and John went to
the store, John gave a drink to" -> " Mary" (IO), not " John" (S).

Behaviour score: logit[IO] - logit[S] at the final position; present when > 0.
Defense: a plain clamp (to 0) of the ``n_latents`` SAE latents at ``site`` with the largest
attribution to that score (experiments/settings/selection.py).

User file rows: ``{"prompt": ..., "io": "Mary", "s": "John"}`` (optional ``"id"``); both names
must be single tokens after the prompt. Example::

    samples = ioi_prompts(model.tokenizer, n=100, seed=0)
    samples[0].prompt, samples[0].io, samples[0].s
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from experiments.data import ioi as data
from experiments.settings import user_file
from experiments.settings.base import Setting, SettingConfig
from experiments.settings.sample import Sample
from guard.errors import ToolkitError


@dataclass(frozen=True, kw_only=True)
class IOISample(Sample):
    """An IOI prompt: ``target`` is the IO name token, ``foils == (S name token,)``."""

    io_name: str
    s_name: str
    template: int = -1  # index into experiments.data.ioi.TEMPLATES; -1 for user rows
    order: str = "user"  # "ABBA", "BABA" or "user"

    @property
    def io(self) -> int:
        return self.target

    @property
    def s(self) -> int:
        return self.foils[0]


@dataclass(frozen=True)
class IOIConfig(SettingConfig):
    """IOI setting: ``templates`` (indices into TEMPLATES, all when empty), ``orders``,
    ``n_names`` (size of the single-token name pool, most frequent first)."""

    name = "ioi"
    templates: tuple[int, ...] = ()
    orders: tuple[str, ...] = data.ORDERS
    n_names: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "orders", tuple(self.orders))
        bad = [t for t in self.templates if not 0 <= t < len(data.TEMPLATES)]
        if bad:
            raise ToolkitError(f"setting 'ioi': template indices {bad} out of range [0, {len(data.TEMPLATES)})")
        if not self.orders or any(o not in data.ORDERS for o in self.orders):
            raise ToolkitError(f"setting 'ioi': orders must be a non-empty subset of {data.ORDERS}, got {self.orders}")
        if self.n_names < 2:
            raise ToolkitError(f"setting 'ioi': n_names must be >= 2, got {self.n_names}")


def _sample(tokenizer, prompt: str, io: str, s: str, sample_id: str, where: str, **extra) -> IOISample:
    io_token = user_file.single_token(tokenizer, prompt, io, where, "io")
    s_token = user_file.single_token(tokenizer, prompt, s, where, "s")
    if io_token == s_token:
        raise ToolkitError(f"{where}: io {io!r} and s {s!r} are the same token")
    return IOISample(
        id=sample_id, prompt=prompt, tokens=user_file.prompt_tokens(tokenizer, prompt, where),
        target=io_token, foils=(s_token,), io_name=io, s_name=s, **extra,
    )


def ioi_prompts(tokenizer, n: int, seed: int = 0, config: IOIConfig | None = None) -> list[IOISample]:
    """``n`` IOI samples, deterministic given ``seed``; a longer list starts with the shorter.

    Orders alternate (ABBA, BABA, ...), templates cycle every ``len(orders)`` samples, so
    every template appears in every order; names are drawn without replacement per sample
    (IO != S) from the single-token pool; no (template, order, IO, S) repeats.
    """
    config = config or IOIConfig()
    templates = config.templates or tuple(range(len(data.TEMPLATES)))
    names = data.single_token_names(tokenizer, config.n_names)
    if len(names) < 2:
        raise ToolkitError(
            f"setting 'ioi': only {len(names)} single-token names for this tokenizer; need at least 2"
        )
    capacity = len(templates) * len(config.orders) * len(names) * (len(names) - 1)
    if n > capacity:
        raise ToolkitError(f"setting 'ioi': asked for {n} samples but only {capacity} distinct ones exist")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[IOISample] = []
    i = 0
    while len(out) < n:
        order = config.orders[i % len(config.orders)]
        t = templates[(i // len(config.orders)) % len(templates)]
        i += 1
        io, s = rng.sample(names, 2)
        sample_id = f"ioi/t{t}/{order}/{io}/{s}"
        if sample_id in seen:
            continue
        seen.add(sample_id)
        prompt = data.fill(data.TEMPLATES[t], order, io, s)
        out.append(_sample(tokenizer, prompt, io, s, sample_id, f"setting 'ioi' sample {sample_id}",
                           template=t, order=order))
    return out


class IOISetting(Setting):
    """The IOI setting (see module docstring)."""

    config_cls = IOIConfig

    def generate(self, tokenizer, n: int | None, seed: int) -> list[Sample]:
        """``n`` generated prompts; 200 when None (the template space has no natural end)."""
        return ioi_prompts(tokenizer, 200 if n is None else n, seed, self.config)

    def load_file(self, path: str | Path, tokenizer) -> list[Sample]:
        """Rows ``{"prompt", "io", "s"}`` (optional ``"id"``); errors name the line."""
        out = []
        for lineno, row in user_file.read_jsonl(path, "ioi"):
            where = f"setting 'ioi': {Path(path).name} line {lineno}"
            user_file.require(row, ("prompt", "io", "s"), where, {"prompt": str, "io": str, "s": str})
            sample_id = str(row.get("id", f"{Path(path).stem}:{lineno}"))
            out.append(_sample(tokenizer, row["prompt"], row["io"], row["s"], sample_id, where))
        user_file.unique_ids([s.id for s in out], "ioi", path)
        return out
