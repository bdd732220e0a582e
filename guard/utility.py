"""Utility cost of every registered defense: next-token cross-entropy increase and KL to the
undefended model on held-out benign text.

Benign token chunks are split: the first part calibrates the residual-aware defenses (each
calibration saved to its own folder and loaded back through the config), the rest is held
out for the measurement. Behaviour directions (direction ablation, error-subspace behaviour
removal) and the closed-loop echo come from contrast prompts the caller passes (the command
line, ``python -m experiments.utility``, uses ``guard.texts`` on the embedded subject).

Per defense: ``delta_ce`` = CE(defended) - CE(undefended), ``kl`` = mean over predicted
tokens of KL(undefended || defended) (nats); the monitor also reports its false-positive
rate on the held-out chunks. The last printed line is one JSON object keyed by defense name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from guard.base import Defense, DefenseConfig
from guard.calibration import Calibration, collect_resid, last_token_resid
from guard.clamp import ClampConfig
from guard.closed_loop import ClosedLoopConfig, calibrate_closed_loop
from guard.direction import DirectionConfig, calibrate_directions
from guard.ellipsoid import EllipsoidConfig, calibrate_ellipsoid
from guard.error_norm import ErrorNormConfig, calibrate_error_norms
from guard.errors import ToolkitError, unknown_name
from guard.monitor import ErrorMonitor, ErrorMonitorConfig, false_positive_rate
from guard.registry import DEFENSES, build_defense
from guard.splice import SpliceConfig
from guard.subspace import ErrorSubspaceConfig, calibrate_error_subspace


@dataclass(frozen=True)
class UtilityResult:
    """Utility cost of one defense on ``n_tokens`` predicted tokens (CE in nats per token)."""

    name: str
    delta_ce: float
    kl: float
    ce_base: float
    ce_defended: float
    n_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def measure_utility_many(model, defenses: Mapping[str, Defense], tokens: torch.Tensor, *, batch_size: int = 4,
                         progress: bool = False) -> dict[str, UtilityResult]:
    """CE increase and KL(undefended || defended) for each defense on ``tokens`` [batch, pos]."""
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ToolkitError(f"utility: tokens must be [batch, pos >= 2], got {tuple(tokens.shape)}")
    ce_base = 0.0
    ce_def = dict.fromkeys(defenses, 0.0)
    kl = dict.fromkeys(defenses, 0.0)
    n = 0
    batches = tokens.split(batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="utility", leave=False)
    for batch in batches:
        target = batch[:, 1:, None]
        base = model(batch).log_softmax(-1)[:, :-1].double()
        ce_base += float(-base.gather(-1, target).sum())
        n += target.numel()
        for name, defense in defenses.items():
            with defense.applied(model):
                logp = model(batch).log_softmax(-1)[:, :-1].double()
            ce_def[name] += float(-logp.gather(-1, target).sum())
            kl[name] += float((base.exp() * (base - logp)).sum())
    return {name: UtilityResult(name=name, delta_ce=(ce_def[name] - ce_base) / n, kl=kl[name] / n,
                                ce_base=ce_base / n, ce_defended=ce_def[name] / n, n_tokens=n)
            for name in defenses}


def measure_utility(model, defense: Defense, tokens: torch.Tensor, *, batch_size: int = 4) -> UtilityResult:
    """CE increase and KL to the undefended model of one defense on ``tokens`` [batch, pos]."""
    return measure_utility_many(model, {defense.name: defense}, tokens, batch_size=batch_size)[defense.name]


def random_features(saes: Mapping[str, object], n: int = 16, seed: int = 0) -> dict[str, tuple[int, ...]]:
    """A fixed random set of ``n`` latents per SAE site (the utility's stand-in feature set)."""
    gen = torch.Generator().manual_seed(seed)
    return {site: tuple(sorted(torch.randperm(int(sae.cfg.d_sae), generator=gen)[:n].tolist()))
            for site, sae in saes.items()}


def calibrate_all(model, saes: Mapping[str, object], calib_tokens: torch.Tensor,
                  behaviour_prompts: Sequence[torch.Tensor], contrast_prompts: Sequence[torch.Tensor],
                  features: Mapping[str, Sequence[int]], *, progress: bool = False) -> dict[str, Calibration]:
    """Every calibration the default configs need, keyed by the folder name used for it."""
    sites = list(saes)
    benign = collect_resid(model, calib_tokens, sites, progress=progress)
    behaviour = last_token_resid(model, behaviour_prompts, sites)
    contrast = last_token_resid(model, contrast_prompts, sites)
    return {
        "error_norm": calibrate_error_norms(saes, benign),
        "error_subspace": calibrate_error_subspace(saes, benign, behaviour_resid=behaviour, contrast_resid=contrast),
        "error_ellipsoid": calibrate_ellipsoid(saes, benign),
        "closed_loop": calibrate_closed_loop(model, saes, list(behaviour_prompts), features),
        "direction": calibrate_directions(behaviour, contrast),
    }


def default_configs(saes: Mapping[str, object], features: Mapping[str, Sequence[int]],
                    folders: Mapping[str, str]) -> dict[str, DefenseConfig]:
    """Each registered defense at its default settings on ``features``, calibrations read from ``folders``."""
    configs: dict[str, DefenseConfig] = {
        "clamp": ClampConfig(features=features),
        "splice": SpliceConfig(features=features),
        "error_norm": ErrorNormConfig(features=features, calibration=folders["error_norm"]),
        "error_subspace": ErrorSubspaceConfig(features=features, calibration=folders["error_subspace"]),
        "error_ellipsoid": EllipsoidConfig(features=features, calibration=folders["error_ellipsoid"]),
        "closed_loop": ClosedLoopConfig(features=features, calibration=folders["closed_loop"]),
        "error_monitor": ErrorMonitorConfig(features=features, calibration=folders["error_norm"]),
        "direction_ablation": DirectionConfig(sites=tuple(saes), calibration=folders["direction"]),
    }
    missing = set(DEFENSES) - set(configs)
    if missing:
        raise ToolkitError(f"utility: no default config for registered defenses {sorted(missing)}")
    return configs


def utility_report(model, saes: Mapping[str, object], calib_tokens: torch.Tensor, eval_tokens: torch.Tensor,
                   behaviour_prompts: Sequence[torch.Tensor], contrast_prompts: Sequence[torch.Tensor], *,
                   features: Mapping[str, Sequence[int]], calib_dir: str | Path, names: Sequence[str] | None = None,
                   batch_size: int = 4, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Calibrate, save, rebuild from folders, and measure every (or each named) registered defense.

    Returns {defense name: {"delta_ce", "kl", "ce_base", "ce_defended", "n_tokens"}}; the monitor's
    entry adds its false-positive rate on the rows of ``eval_tokens`` (one row = one prompt).
    """
    if not saes:
        raise ToolkitError("utility: the subject has no SAEs")
    calibs = calibrate_all(model, saes, calib_tokens, behaviour_prompts, contrast_prompts, features,
                           progress=progress)
    folders = {key: str(calib.save(Path(calib_dir) / key)) for key, calib in calibs.items()}
    configs = default_configs(saes, features, folders)
    names = list(names) if names else list(DEFENSES)
    for name in names:
        if name not in configs:
            raise unknown_name("defense", name, configs.keys(), "utility")
    defenses = {name: build_defense(configs[name], saes) for name in names}
    results = measure_utility_many(model, defenses, eval_tokens, batch_size=batch_size, progress=progress)
    report = {name: {k: v for k, v in r.to_dict().items() if k != "name"} for name, r in results.items()}
    for name, defense in defenses.items():
        if isinstance(defense, ErrorMonitor):
            rate = false_positive_rate(model, defense, eval_tokens)
            report[name].update(fpr=rate.rate, fpr_k=rate.k, fpr_n=rate.n)
    return report


def chunk_tokens(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[n_chunks, seq_len] from a 1-D token stream (the tail shorter than seq_len is dropped)."""
    n = tokens.numel() // seq_len
    if n < 2:
        raise ToolkitError(f"utility: need at least 2 chunks of {seq_len} tokens, the text has {tokens.numel()} tokens")
    return tokens[: n * seq_len].reshape(n, seq_len)
