"""The reproduction pipeline behind ``python -m experiments.reproduce`` (model-agnostic core).

One setting (IOI or recall), one SAE site, a plain clamp of latents chosen by attribution on
a *selection split* of the samples (never the evaluated ones), then on the evaluation split:

1. validity: behaviour present undefended and absent defended (the recovery denominator);
2. recovery with the encoder-orthogonal constraint and with no constraint at the main
   relative budget, each as k / n_valid with an exact 95% Clopper-Pearson interval;
3. a budget sweep from 0 (relative budgets, both constraints);
4. constraint cost: relative drift of the defended latents and reactivation;
5. attribution replay of the recovering deltas: clamped latents / other latents / SAE error,
   each part replayed alone under the defense.

The attack is ``attacks.engine.GradientRecovery`` with the defense inside the loop
(adaptive), perturbing the final prompt position at the defended site, stopping each sample
as soon as the behaviour is back (margin over the rivals > 0).

Everything here takes a model and SAEs, so the tests run it on a tiny random model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from attacks.batch import AttackBatch
from attacks.engine import AttackConfig, AttackResult
from attacks.objectives import Objective
from attacks.perturbation import Perturbation
from attacks.replay import attribution_replay
from attacks.runner import attack_samples, single_stage
from attacks.threat import ThreatModel
from certify.stats import Rate
from experiments.settings import Sample, collate, get_setting, validity
from experiments.settings.base import Setting
from experiments.settings.sample import behaviour_score
from guard.clamp import FeatureClamp
from guard.errors import ToolkitError
from guard.utility import measure_utility

CONSTRAINTS = ("encoder", "none")


class SettingObjective(Objective):
    """A setting's own behaviour score as the attack objective: ``behaviour_score`` at the last token.

    score = logit[target] - max(rival logits) (IOI: logit difference IO - S; recall: the answer
    against its listed choices or against every other token). Success: score > ``threshold``.
    Arguments: ``samples`` in the order of the attacked batch.
    """

    name = "setting_margin"

    def __init__(self, samples: Sequence[Sample], threshold: float = 0.0) -> None:
        if not samples:
            raise ToolkitError("setting objective: no samples given")
        self.batch = collate(list(samples))
        self.threshold = float(threshold)

    def readout(self, batch: AttackBatch) -> torch.Tensor:
        return batch.last()[:, None]

    def _sub(self, rows: torch.Tensor):
        rows = rows.cpu()
        b = self.batch
        return type(b)(tuple(b.ids[i] for i in rows.tolist()), b.tokens[rows], b.lengths[rows], b.target[rows],
                       b.foils[rows])

    def score(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return behaviour_score(logits[:, 0], self._sub(rows))

    def success(self, logits: torch.Tensor, rows: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        return self.score(logits, rows) > self.threshold + margin


@dataclass(frozen=True)
class ReproduceConfig:
    """One reproduction run.

    ``site`` / ``n_latents``: where and how many latents the plain clamp sets to 0.
    ``n_select``: samples used only to select latents; ``n``: evaluated samples (after the
    selection split; None: all that remain). ``budget``: the main relative L2 budget
    (fraction of ||h_def|| at the perturbed position); ``sweep``: budgets of the sweep
    (0 included). ``steps`` / ``step_size``: attack optimiser; ``attack_batch``: samples per
    attack batch. ``seed`` seeds sample generation and the attack.
    """

    setting: str
    site: str
    n_latents: int
    n_select: int
    n: int | None
    budget: float
    sweep: tuple[float, ...]
    steps: int
    step_size: float = 0.1
    attack_batch: int = 32
    batch_size: int = 16
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sweep"] = list(self.sweep)
        return out


def split_samples(setting: Setting, tokenizer, config: ReproduceConfig,
                  prompts_file: str | None = None) -> tuple[list[Sample], list[Sample]]:
    """(selection split, evaluation split): disjoint, deterministic in ``config.seed``."""
    if prompts_file is not None:
        everything = setting.samples(tokenizer, None, config.seed, prompts_file)
    elif setting.name == "ioi":
        want = config.n_select + (config.n if config.n is not None else 200)
        everything = setting.samples(tokenizer, want, config.seed)
    else:
        everything = setting.samples(tokenizer, None, config.seed)
    if len(everything) <= config.n_select:
        raise ToolkitError(f"reproduce {setting.name!r}: {len(everything)} samples, not more than the "
                           f"{config.n_select} reserved for latent selection")
    select = everything[: config.n_select]
    evaluate = everything[config.n_select:]
    return select, evaluate if config.n is None else evaluate[: config.n]


def _attack(model, defense, samples: Sequence[Sample], threat: ThreatModel, config: ReproduceConfig,
            budget: float) -> list[tuple[list[Sample], AttackBatch, AttackResult]]:
    """The gradient recovery over ``samples`` in batches (the paper's protocol: one attack, no
    cascade): (samples, batch, result) per batch."""
    stages = single_stage(AttackConfig(steps=config.steps, step_size=config.step_size, seed=config.seed))
    chunks = attack_samples(model, defense, threat.with_budget(budget), samples, SettingObjective,
                            lambda s: s.tokens, stages, batch_size=config.attack_batch)
    return [(c.samples, c.batch, c.outcome.result) for c in chunks]


def _cat(parts, field: str) -> torch.Tensor:
    return torch.cat([getattr(r, field).detach().float().cpu() for _, _, r in parts])


def _mean(x: torch.Tensor) -> float | None:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else None


def _max(x: torch.Tensor) -> float | None:
    x = x[torch.isfinite(x)]
    return float(x.max()) if x.numel() else None


def _summarise(parts, alpha: float = 0.05) -> dict[str, Any]:
    success = _cat(parts, "success").bool()
    n, k = int(success.numel()), int(success.sum())
    rate = Rate.of(k, n, alpha).to_dict()
    rec = success
    return {
        "rate": rate,
        "drift_mean": _mean(_cat(parts, "drift")[rec]) if k else None,
        "drift_max": _max(_cat(parts, "drift")[rec]) if k else None,
        "reactivation_mean": _mean(_cat(parts, "reactivation")[rec]) if k else None,
        "floor_violation_mean": _mean(_cat(parts, "floor_violation")[rec]) if k else None,
        "rel_delta_norm_mean": _mean(_cat(parts, "relative_norm")[rec]) if k else None,
        "orthogonality_max": _max(_cat(parts, "orthogonality")[rec]) if k else None,
        "steps_mean": _mean(_cat(parts, "steps").float()),
        "flags": sorted({f for _, _, r in parts for f in r.flags}),
    }


def _replay(model, defense, parts, alpha: float = 0.05) -> dict[str, Any]:
    """Attribution replay of the recovering deltas (the recovered samples only)."""
    counts: dict[str, int] = {}
    n = 0
    for chunk, batch, result in parts:
        rows = result.success.nonzero().flatten()
        if rows.numel() == 0:
            continue
        p = result.perturbations[0]
        sub = batch.select(rows)
        objective = SettingObjective([chunk[i] for i in rows.tolist()])
        rep = attribution_replay(model, defense, objective, sub, Perturbation(p.site, p.delta[rows], p.mask[rows]))
        for key, ok in rep.success.items():
            counts[key] = counts.get(key, 0) + int(ok.sum())
        n += int(rows.numel())
    return {key: Rate.of(k, n, alpha).to_dict() for key, k in sorted(counts.items())} if n else {}


def reproduce(model, saes: Mapping[str, object], config: ReproduceConfig, *, prompts_file: str | None = None,
              samples: tuple[Sequence[Sample], Sequence[Sample]] | None = None,
              benign: torch.Tensor | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The full reproduction on ``model`` + ``saes`` (see module docstring); the results as data.

    ``samples``: an explicit (selection, evaluation) split instead of the setting's own data.
    ``benign``: token chunks [n, pos] of benign text; the clamp's next-token loss increase on
    them is reported as ``clamp_delta_ce`` (its utility cost).
    """
    start = time.perf_counter()
    setting = get_setting(config.setting, site=config.site, n_latents=config.n_latents)
    if samples is None:
        select, evaluate = split_samples(setting, model.tokenizer, config, prompts_file)
    else:
        select, evaluate = list(samples[0]), list(samples[1])
    log(f"[{config.setting}] {len(select)} selection samples, {len(evaluate)} evaluation samples")
    selection = setting.select(model, saes[config.site], select, batch_size=config.batch_size)
    defense = FeatureClamp(selection.clamp_config(mode=setting.config.clamp_mode, value=setting.config.clamp_value),
                           saes)
    val = validity(model, defense, evaluate, batch_size=config.batch_size)
    valid = [s for s, ok in zip(evaluate, val.valid, strict=True) if ok]
    log(f"[{config.setting}] clamp {len(selection.features)} latents at {config.site}: "
        f"{val.n_present}/{len(evaluate)} present undefended, {len(valid)} valid "
        f"({time.perf_counter() - start:.0f} s)")
    out: dict[str, Any] = {
        "setting": config.setting, "config": config.to_dict(), "selection": selection.to_dict(),
        "n_evaluated": len(evaluate), "n_present": val.n_present, "n_valid": len(valid),
        "validity": val.to_dict(), "recovery": {}, "sweep": {}, "replay": {},
        "clamp_delta_ce": None if benign is None else measure_utility(model, defense, benign).delta_ce,
    }
    if not valid:
        out["seconds"] = time.perf_counter() - start
        return out
    base = ThreatModel.make(config.site, positions="last", budget=config.budget, relative=True)
    for constraint in CONSTRAINTS:
        threat = base.with_constraint(constraint)
        parts = _attack(model, defense, valid, threat, config, config.budget)
        out["recovery"][constraint] = _summarise(parts)
        out["replay"][constraint] = _replay(model, defense, parts)
        rate = out["recovery"][constraint]["rate"]
        log(f"[{config.setting}] {constraint}: recovered {rate['k']}/{rate['n']} at budget {config.budget} "
            f"({time.perf_counter() - start:.0f} s)")
        sweep = []
        for b in config.sweep:
            if b == config.budget:
                summary = out["recovery"][constraint]
            else:
                summary = _summarise(_attack(model, defense, valid, threat, config, b))
            sweep.append({"budget": b, **summary})
            log(f"[{config.setting}]   sweep {constraint} budget {b}: {summary['rate']['k']}/{summary['rate']['n']}")
        out["sweep"][constraint] = sweep
    out["seconds"] = time.perf_counter() - start
    return out


def headline(results: Mapping[str, Any]) -> dict[str, Any]:
    """The one-line summary printed last by the command line."""
    enc = results["recovery"].get("encoder", {})
    none = results["recovery"].get("none", {})
    replay = results["replay"].get("encoder", {}).get("error", {})
    rate = enc.get("rate", {})
    return {
        "setting": results["setting"],
        "n_valid": results["n_valid"],
        "recovery_encoder": rate.get("rate"),
        "ci_low": rate.get("ci_low"),
        "ci_high": rate.get("ci_high"),
        "recovery_none": none.get("rate", {}).get("rate"),
        "drift_encoder": enc.get("drift_mean"),
        "error_replay_recovery": replay.get("rate"),
        "seconds": round(float(results.get("seconds", math.nan)), 1),
    }


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if pct:
        return f"{100 * value:.1f}%"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _rate_cell(rate: Mapping[str, Any] | None) -> str:
    if not rate or rate.get("rate") is None:
        return "-"
    return (f"{rate['k']}/{rate['n']} ({100 * rate['rate']:.1f}%, "
            f"CI {100 * rate['ci_low']:.1f}-{100 * rate['ci_high']:.1f}%)")


def results_table(results: Mapping[str, Any]) -> str:
    """The results as a markdown block (what goes between the README markers)."""
    cfg = results["config"]
    lines = [
        f"**{results['setting']}**: plain clamp of {len(results['selection']['features'])} latents at "
        f"`{cfg['site']}` (selected by attribution on {cfg['n_select']} separate samples); "
        f"{results['n_valid']} valid of {results['n_evaluated']} evaluated ({results['n_present']} show the "
        f"behaviour undefended). Attack: gradient recovery at the last prompt position, {cfg['steps']} steps, "
        f"relative L2 budget {cfg['budget']}; exact 95% Clopper-Pearson intervals."
        + ("" if results.get("clamp_delta_ce") is None else
           f" Utility cost of the clamp: next-token loss on benign text +{results['clamp_delta_ce']:.3f} nats."),
        "",
        "| constraint | recovered | drift (mean) | reactivation | rel. delta norm | replay: clamped / other / error |",
        "|---|---|---|---|---|---|",
    ]
    for c in CONSTRAINTS:
        r = results["recovery"].get(c)
        if r is None:
            continue
        rep = results["replay"].get(c, {})
        replay = " / ".join(_rate_cell(rep.get(k)).split(" (")[0] for k in ("clamped", "other", "error"))
        lines.append(f"| {c} | {_rate_cell(r['rate'])} | {_fmt(r['drift_mean'])} | {_fmt(r['reactivation_mean'])} | "
                     f"{_fmt(r['rel_delta_norm_mean'])} | {replay} |")
    if results["sweep"]:
        budgets = [row["budget"] for row in next(iter(results["sweep"].values()))]
        lines += ["", "| budget | " + " | ".join(_fmt(b) for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for c, rows in results["sweep"].items():
            lines.append(f"| {c} | " + " | ".join(f"{row['rate']['k']}/{row['rate']['n']}" for row in rows) + " |")
    lines += ["", f"Run time {results['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def replace_block(text: str, setting: str, block: str) -> str:
    """``text`` with the block between ``<!-- results:SETTING:start/end -->`` replaced (appended if absent)."""
    start, end = f"<!-- results:{setting}:start -->", f"<!-- results:{setting}:end -->"
    body = f"{start}\n{block.rstrip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i >= 0 and j > i:
        return text[:i] + body + text[j + len(end):]
    if (i >= 0) != (j >= 0) or (i >= 0 and j < i):
        raise ToolkitError(f"README: the results markers for {setting!r} are incomplete or out of order")
    return text.rstrip("\n") + "\n\n" + body + "\n"


def update_readme(path: str | Path, setting: str, table: str) -> None:
    """Replace (or append) the results block of ``setting`` in the README at ``path``."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    path.write_text(replace_block(text, setting, table))


def with_overrides(config: ReproduceConfig, **changes: Any) -> ReproduceConfig:
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
