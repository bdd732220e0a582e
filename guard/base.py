"""The defense interface: TransformerLens forward hooks bound to one or more sites.

A defense never replaces a module, so hook names stay stable for attacks configured
by site name. Every edit is computed inside autograd (the SAE error term included),
so an adaptive attacker can differentiate through the defended forward pass.

Ordering contract with attacks: an attacker's perturbation hook at a site is added
*before* the defense's hooks, so the defense sees ``resid + delta``. For a plain clamp
and an encoder-orthogonal delta this equals the paper's ``h_def + delta`` exactly.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch

from guard.errors import ToolkitError

Hook = tuple[str, Callable[..., torch.Tensor]]


@dataclass(frozen=True)
class DefenseConfig:
    """Base of every defense config: frozen, serialisable, registered by ``name``."""

    name: ClassVar[str] = "defense"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}


@dataclass(frozen=True)
class DefendedLatents:
    """Latents a defense holds at a site: what cross-layer attacks keep fixed and drift measures."""

    site: str
    sae: Any
    features: torch.Tensor  # long [n_features]


class Defense(ABC):
    """A residual-stream edit at one or more sites, applied through scoped hooks."""

    config: DefenseConfig

    @property
    def name(self) -> str:
        return self.config.name

    @property
    @abstractmethod
    def sites(self) -> tuple[str, ...]:
        """Full hook names this defense edits, in forward order."""

    @abstractmethod
    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        """The defended activation at ``site``; [batch, pos, d_model] -> same shape."""

    def defended_latents(self) -> list[DefendedLatents]:
        """Latents this defense pins (empty for defenses that do not edit SAE latents)."""
        return []

    def flags(self) -> torch.Tensor | None:
        """Bool [batch]: examples a detecting defense flagged since the last ``reset``; None if it never flags."""
        return None

    def reset(self) -> None:
        """Forget per-forward records (flags, scores); called on entering ``applied``."""
        return None  # stateless by default

    @property
    def draws(self) -> int:
        """A randomized defense is judged by the majority of this many independent draws; 1 if deterministic."""
        return 1

    def draw(self, index: int) -> None:
        """Restart random stream ``index`` (draws 0..draws-1 are the judge's, negative ones an attacker's);
        every later forward continues it. A no-op for a deterministic defense."""
        return None

    def fwd_hooks(self) -> list[Hook]:
        hooks = []
        for site in self.sites:
            def hook_fn(resid: torch.Tensor, hook, _site: str = site) -> torch.Tensor:
                out = self.edit(resid, _site)
                if out.shape != resid.shape:
                    raise ToolkitError(
                        f"defense {self.name!r} at {_site!r} returned shape {tuple(out.shape)} "
                        f"for input {tuple(resid.shape)}"
                    )
                return out

            hooks.append((site, hook_fn))
        return hooks

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[None]:
        """Attach this defense's hooks for the duration of the block; always removed."""
        self.reset()
        with model.hooks(fwd_hooks=self.fwd_hooks()):
            yield


class NoDefense(Defense):
    """The undefended model (edits nothing)."""

    def __init__(self) -> None:
        self.config = DefenseConfig()

    @property
    def name(self) -> str:
        return "none"

    @property
    def sites(self) -> tuple[str, ...]:
        return ()

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        return resid


class ComposedDefense(Defense):
    """Several defenses applied together; at a shared site they run in the given order."""

    def __init__(self, defenses: Sequence[Defense]) -> None:
        if not defenses:
            raise ToolkitError("ComposedDefense needs at least one defense")
        self.defenses = list(defenses)
        self.config = DefenseConfig()

    @property
    def name(self) -> str:
        return "+".join(d.name for d in self.defenses)

    @property
    def sites(self) -> tuple[str, ...]:
        seen: list[str] = []
        for d in self.defenses:
            seen.extend(s for s in d.sites if s not in seen)
        return tuple(seen)

    def edit(self, resid: torch.Tensor, site: str) -> torch.Tensor:
        for d in self.defenses:
            if site in d.sites:
                resid = d.edit(resid, site)
        return resid

    def defended_latents(self) -> list[DefendedLatents]:
        return [latents for d in self.defenses for latents in d.defended_latents()]

    def flags(self) -> torch.Tensor | None:
        """An example is flagged when any component defense flagged it."""
        found = [f for f in (d.flags() for d in self.defenses) if f is not None]
        if not found:
            return None
        out = found[0]
        for f in found[1:]:
            if f.shape != out.shape:
                raise ToolkitError(f"defense {self.name!r}: component flags have batch sizes "
                                   f"{tuple(out.shape)} and {tuple(f.shape)}; call reset() between batches")
            out = out | f
        return out

    def reset(self) -> None:
        for d in self.defenses:
            d.reset()

    @property
    def draws(self) -> int:
        return max(d.draws for d in self.defenses)

    def draw(self, index: int) -> None:
        for d in self.defenses:
            d.draw(index)
