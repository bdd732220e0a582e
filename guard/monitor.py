"""Error anomaly monitor: flag inputs whose SAE error norm leaves its benign range.

Source: our residual-aware candidate (docs/METHOD.md section 6): a recovery perturbation that
runs through the error channel inflates ``||error||``; a detector with a benign-calibrated
threshold catches it, at a false-positive cost measured by ``false_positive_rate``.

The forward pass is the clamp alone (the error passes through, a straight pass-through
for attacks); detection is a side record. Per token and site the score is ``||error||``
(sink tokens score 0); an example is flagged when any score exceeds ``tau_site =
threshold_scale * quantile_q(benign norms)`` (the ``ErrorNormCalibration`` of
``guard.error_norm``). Flags accumulate (OR) over forwards until ``reset()``, which
``applied()`` calls on entry, so a generation loop flags an example if any step did.
``last_scores`` keeps the latest scores *with* their graph and ``excess()`` gives a
differentiable penalty ``sum relu(score - tau)`` an adaptive attacker can minimise.
``action="refuse"`` makes ``respond(texts)`` replace flagged outputs by ``refusal``
(TransformerLens has no logits hook; the replacement is done on the text).

Threat model: none (a detector). Shapes: resid [batch, pos, d_model]; flags [batch].

Example::

    mon = ErrorMonitor(ErrorMonitorConfig(features={site: ()}, calibration="calib/error_norm"), saes)
    with mon.applied(model):
        model(tokens)
    flagged = mon.flags()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from guard.error_norm import SPEC as ERROR_NORM_SPEC
from guard.error_norm import ErrorNormCalibration, check_quantile
from guard.errors import ToolkitError
from guard.residual import ResidualConfig, ResidualDefense
from guard.spec import DefenseSpec, Sweep

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


@dataclass(frozen=True)
class ErrorMonitorConfig(ResidualConfig):
    """Monitor: threshold ``quantile`` x ``threshold_scale`` of benign norms; ``action`` flag|refuse;
    ``refusal`` text; ``calibration`` folder (an ``ErrorNormCalibration``)."""

    name = "error_monitor"
    # per-prompt flags OR over every token and site: the default is a 25% margin over the
    # largest benign norm (at 1.0 the held-out max beats the calibration max half the time)
    quantile: float = 1.0
    threshold_scale: float = 1.25
    action: Literal["flag", "refuse"] = "flag"
    refusal: str = DEFAULT_REFUSAL
    calibration: str = ""


class ErrorMonitor(ResidualDefense):
    """Flags examples whose SAE error norm exceeds its benign threshold; see the module docstring."""

    config: ErrorMonitorConfig

    def __init__(self, config: ErrorMonitorConfig, saes: Mapping[str, object],
                 calibration: ErrorNormCalibration | None = None) -> None:
        super().__init__(config, saes)
        check_quantile(config.quantile, config.name)
        if config.action not in ("flag", "refuse"):
            raise ToolkitError(f"defense {config.name!r}: action must be 'flag' or 'refuse', got {config.action!r}")
        self.calibration = self.calibrated(calibration, ErrorNormCalibration)
        self.thresholds = {site: config.threshold_scale * self.calibration.threshold(site, config.quantile)
                           for site in self.sites}
        self.last_scores: dict[str, torch.Tensor] = {}
        self._flags: torch.Tensor | None = None

    def reset(self) -> None:
        self.last_scores = {}
        self._flags = None

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        scores = error.norm(dim=-1) * keep
        self.last_scores[site] = scores
        flagged = (scores.detach() > self.thresholds[site]).flatten(1).any(dim=1)
        if self._flags is None or self._flags.shape != flagged.shape:
            self._flags = flagged  # a new batch (another size) starts a new record
        else:
            self._flags = self._flags | flagged
        return error

    def flags(self, valid: torch.Tensor | None = None) -> torch.Tensor | None:
        """Bool [batch]: flagged since the last reset (None before any forward). With ``valid``
        (bool [batch, pos] of the latest forward: real tokens, not padding), only the latest
        forward's real tokens count: a pad token's error must never flag its row."""
        if valid is None:
            return self._flags
        if not self.last_scores:
            return None
        return torch.stack([((s.detach() > self.thresholds[site]) & self._mask(valid, s)).flatten(1).any(dim=1)
                            for site, s in self.last_scores.items()]).any(dim=0)

    def excess(self, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable [batch]: sum over sites and positions (only ``valid`` ones if given) of
        ``relu(score - tau)`` in the latest forward."""
        if not self.last_scores:
            raise ToolkitError(f"defense {self.name!r}: no forward recorded since reset()")
        return sum(((s - self.thresholds[site]).clamp_min(0) * self._mask(valid, s)).flatten(1).sum(1)
                   for site, s in self.last_scores.items())

    def _mask(self, valid: torch.Tensor | None, scores: torch.Tensor) -> torch.Tensor:
        if valid is None:
            return torch.ones_like(scores, dtype=torch.bool)
        if valid.shape != scores.shape:
            raise ToolkitError(f"defense {self.name!r}: valid mask of shape {tuple(valid.shape)} for scores of "
                               f"shape {tuple(scores.shape)}")
        return valid.to(scores.device)

    def respond(self, texts: list[str]) -> list[str]:
        """Outputs after the monitor's action: flagged texts become ``refusal`` when action is 'refuse'."""
        flags = self.flags()
        if self.config.action != "refuse" or flags is None:
            return list(texts)
        if len(texts) != len(flags):
            raise ToolkitError(f"defense {self.name!r}: {len(texts)} texts for {len(flags)} flagged examples")
        return [self.config.refusal if f else t for t, f in zip(texts, flags.tolist(), strict=True)]


@dataclass(frozen=True)
class FlagCount:
    """How many of ``n`` benign prompts a monitor flagged (``k``); the exact interval around
    ``k / n`` is ``certify.stats.Rate.of(k, n)``, computed where results are reported."""

    n: int
    k: int

    @property
    def rate(self) -> float:
        return self.k / self.n

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate}


@torch.no_grad()
def false_positive_rate(model, monitor: ErrorMonitor, prompts: Iterable[torch.Tensor] | torch.Tensor) -> FlagCount:
    """How many benign prompts the monitor flags. ``prompts``: [batch, pos] (one row per prompt)
    or a list of [pos] / [1, pos] tensors (run one at a time, so lengths may differ)."""
    batches = [prompts] if isinstance(prompts, torch.Tensor) else [p if p.ndim == 2 else p[None] for p in prompts]
    k = n = 0
    for batch in batches:
        with monitor.applied(model):
            model(batch, return_type=None)
            flags = monitor.flags()
        k += int(flags.sum())
        n += len(flags)
    if n == 0:
        raise ToolkitError("false-positive rate of zero prompts is undefined")
    return FlagCount(n=n, k=k)


# the monitor reads the error-norm bound's calibration (benign quantiles of ||e||)
SPEC = DefenseSpec(ErrorMonitorConfig, ErrorMonitor,
                   calibrate=ERROR_NORM_SPEC.calibrate,
                   selftest=lambda features: ErrorMonitorConfig(features=features, quantile=0.5),
                   sweep=Sweep("threshold_scale", (0.75, 1.0, 1.25)))
