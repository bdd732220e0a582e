"""Randomized error dropout: each coordinate of the SAE error survives a forward with probability ``keep``.

Source: randomized defenses must be attacked with expectation over transformation (Athalye et al.,
"Obfuscated Gradients Give a False Sense of Security", 2018): a fixed draw of the randomness is no
evaluation. Here the randomness sits on the channel post-intervention recovery uses (the SAE error,
Cui, Shen, Yang, arXiv 2606.18322), so a perturbation routed through the error arrives only in part,
and differently on every forward.

``out = recon + clamp_edit + m * error`` with ``m`` a fresh Bernoulli(``keep``) mask per token and
coordinate on every call (no rescaling: in expectation the splice at ``error_scale = keep``, plus the
noise of the mask). Sink tokens pass through as in every residual-aware defense. No calibration.

Randomness: the defense is judged by the majority of ``draws`` independent draws (``Defense.draws``);
``draw(i)`` restarts stream i, seeded from ``(seed, i)``, so every judged draw is reproducible and an
attacker's streams (negative i) never coincide with the judge's. The attack engine averages its
gradient and its success over ``draws`` forwards per step (EOT).

Threat model: none (a defense). Shapes: resid [batch, pos, d_model].

Example::

    dropout = ErrorDropout(ErrorDropoutConfig(features={"blocks.12.hook_resid_post": (5, 17)}, keep=0.5), saes)
    dropout.draw(0)
    with dropout.applied(model):
        logits = model(tokens)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from guard.errors import ToolkitError
from guard.residual import ResidualConfig, ResidualDefense
from guard.spec import DefenseSpec, Sweep


@dataclass(frozen=True)
class ErrorDropoutConfig(ResidualConfig):
    """Error dropout: ``keep`` (probability a coordinate of the error survives), ``draws`` (odd: judged by
    their majority), ``seed`` (of every random stream)."""

    name = "error_dropout"
    keep: float = 0.5
    draws: int = 3
    seed: int = 0


class ErrorDropout(ResidualDefense):
    """Drops a random part of the SAE error on every forward; see the module docstring."""

    config: ErrorDropoutConfig

    def __init__(self, config: ErrorDropoutConfig, saes: Mapping[str, object]) -> None:
        if not 0.0 <= config.keep <= 1.0:
            raise ToolkitError(f"defense {config.name!r}: keep must be in [0, 1], got {config.keep}")
        if config.draws < 1 or config.draws % 2 == 0:
            raise ToolkitError(f"defense {config.name!r}: draws must be odd and >= 1 (a majority), got {config.draws}")
        super().__init__(config, saes)
        self._stream = 0
        self._generators: dict[str, torch.Generator] = {}  # per device, of the current stream

    @property
    def draws(self) -> int:
        return self.config.draws

    def draw(self, index: int) -> None:
        self._stream = int(index)
        self._generators = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            # distinct seeds for distinct (seed, stream) pairs; non-negative as torch requires
            seed = (self.config.seed * 1_000_003 + self._stream) % 2**63
            self._generators[key] = torch.Generator(device=device).manual_seed(seed)
        return self._generators[key]

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        if self.config.keep >= 1.0:
            return error
        u = torch.rand(error.shape, generator=self._generator(error.device), device=error.device)
        return error * (u < self.config.keep).to(error.dtype)


SPEC = DefenseSpec(ErrorDropoutConfig, ErrorDropout,
                   selftest=lambda features: ErrorDropoutConfig(features=features),
                   sweep=Sweep("keep", (0.25, 0.5, 0.75)))
