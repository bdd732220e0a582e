"""The ``standard`` certify suite: every buildable registered defense, IOI and recall, on the subject.

What it is: the adaptive evaluation of guard's defenses on the embedded subject
(SmolLM2-135M-Instruct + shipped SAEs). Per setting, the plain clamp ("clamp", the
reference) is selected by attribution (experiments/settings/selection.py) on a selection
split of samples kept apart from the evaluated ones; every residual-aware defense of
``guard.registry`` is built at its default settings (``guard.utility.default_configs``)
*composed with that same clamp* (its ``features``), calibrated on benign activations from
guard's built-in benign text (``guard.utility.builtin_text``; half the chunks calibrate, the
other half measure utility). Direction-based calibrations (direction ablation, the error
subspace's behaviour directions, the closed-loop echo) use the setting's selection prompts
as the behaviour side and guard's harmless requests (``guard.texts.CONTRAST_REQUESTS``) as
the contrast.

Threat model: L2 ball of relative radius ``budget`` (fraction of ||h_def||) at the final
prompt position of the clamp's site, encoder-orthogonal to the defended latents there
(``none`` for a defense that pins no latent at the site, e.g. direction ablation; the
record's ``constraint`` says which). Attack: ``attacks.engine.GradientRecovery`` with the
defense inside the loop (adaptive), stopping each sample at the goal (behaviour margin > 0).
For a detector (error monitor) a recovery counts only if the monitor does not flag it; the
attacker does not optimise against the monitor here (a stated limitation).

Records follow certify/summary.py: one per invalid sample (``attack`` "-") and one per
attacked valid sample with ``recovered``, ``drift``, ``rel_delta_norm``, scores.
Utility: ``delta_ce`` per (defense, setting) from ``guard.utility.measure_utility_many``.

Options: ``steps`` (attack steps, 20), ``n_select`` (selection samples, 48), ``n_latents``
(clamped latents, 32), ``site`` (blocks.6.hook_resid_post), ``attack_batch`` (32),
``seq_len`` (benign chunk length, 64).
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attacks.batch import AttackBatch
from attacks.engine import AttackConfig, GradientRecovery
from attacks.perturbation import Perturbation, perturbation_hooks
from attacks.threat import ThreatModel
from certify.config import SuiteConfig
from certify.runner import unit_seed
from certify.suites import SuitePlan
from experiments.reproduce_core import SettingObjective
from experiments.settings import Sample, get_setting, validity
from guard.base import Defense
from guard.calibration import collect_resid, last_token_resid
from guard.closed_loop import calibrate_closed_loop
from guard.direction import calibrate_directions
from guard.ellipsoid import calibrate_ellipsoid
from guard.error_norm import calibrate_error_norms
from guard.errors import ToolkitError, unknown_name
from guard.registry import DEFENSES, build_defense
from guard.subspace import calibrate_error_subspace
from guard.utility import chunk_tokens, default_configs, measure_utility_many

DEFAULTS = {"settings": ("ioi", "recall"), "budgets": (0.02, 0.05, 0.2), "n": 24}
OPTION_DEFAULTS = {"steps": 20, "n_select": 48, "n_latents": 32, "site": "blocks.6.hook_resid_post",
                   "attack_batch": 32, "seq_len": 64}


@dataclass(frozen=True)
class StandardUnit:
    """One defense, setting and budget over the setting's evaluated samples."""

    defense: str
    setting: str
    budget: float
    seed: int
    n: int
    steps: int


@dataclass
class SettingWorld:
    """Everything built once per setting: samples, validity, defenses (by name), utility."""

    setting: str
    site: str
    features: tuple[int, ...]
    evaluate: list[Sample]
    defenses: dict[str, Defense]
    utility: dict[str, float]
    valid: dict[str, tuple[bool, ...]]
    scores: dict[str, tuple[tuple[float, ...], tuple[float, ...]]]


def benign_tokens(model, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration chunks, held-out chunks) of guard's built-in benign text."""
    from guard.utility import builtin_text

    chunks = chunk_tokens(model.to_tokens(builtin_text(), prepend_bos=False)[0], seq_len)
    half = max(1, len(chunks) // 2)
    return chunks[:half], chunks[half:]


def contrast_prompts(model) -> list[torch.Tensor]:
    from experiments.subject.chat import chat_prompt
    from guard.texts import CONTRAST_REQUESTS

    return [model.to_tokens(chat_prompt(r), prepend_bos=False)[0] for r in CONTRAST_REQUESTS]


def calibrate(model, saes: Mapping[str, object], site: str, calib_tokens: torch.Tensor,
              behaviour: Sequence[torch.Tensor], contrast: Sequence[torch.Tensor],
              features: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """``guard.utility.calibrate_all``'s calibrations, fitted only where the defenses act.

    The residual-aware defenses act at the clamp's site only (their ``features`` keys), so the
    benign-error calibrations (norm, subspace, ellipsoid: an MVEE fit per site, the slow one)
    and the direction are fitted at that site alone; the closed loop watches every SAE site
    downstream, so it sees all SAEs.
    """
    here = {site: saes[site]}
    benign = collect_resid(model, calib_tokens, [site])
    behaviour_resid = last_token_resid(model, behaviour, [site])
    contrast_resid = last_token_resid(model, contrast, [site])
    return {
        "error_norm": calibrate_error_norms(here, benign),
        "error_subspace": calibrate_error_subspace(here, benign, behaviour_resid=behaviour_resid,
                                                   contrast_resid=contrast_resid),
        "error_ellipsoid": calibrate_ellipsoid(here, benign),
        "closed_loop": calibrate_closed_loop(model, saes, list(behaviour), features),
        "direction": calibrate_directions(behaviour_resid, contrast_resid),
    }


def build_world(model, saes: Mapping[str, object], setting_name: str, select: Sequence[Sample],
                evaluate: Sequence[Sample], defense_names: Sequence[str], *, site: str, n_latents: int,
                calib_tokens: torch.Tensor, eval_tokens: torch.Tensor, contrast: Sequence[torch.Tensor],
                batch_size: int = 16) -> SettingWorld:
    """Select the clamp, calibrate and build every named defense, measure utility and validity."""
    if site not in saes:
        raise ToolkitError(f"standard suite: no SAE at site {site!r}; have {sorted(saes)}")
    setting = get_setting(setting_name, site=site, n_latents=n_latents)
    selection = setting.select(model, saes[site], list(select), batch_size=batch_size)
    features = {site: selection.features}
    behaviour = [torch.tensor(s.tokens) for s in select]
    start = time.perf_counter()

    def log(what: str) -> None:
        print(f"[standard] {setting_name}: {what} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    log(f"clamp of {len(selection.features)} latents at {site} selected")
    calibs = calibrate(model, saes, site, calib_tokens, behaviour, list(contrast), features)
    log("calibrated")
    with tempfile.TemporaryDirectory() as tmp:
        folders = {key: str(c.save(Path(tmp) / key)) for key, c in calibs.items()}
        configs = default_configs({site: saes[site]}, features, folders)  # direction: at the site only
        defenses = {name: build_defense(configs[name], saes) for name in defense_names}
    utility = {name: r.delta_ce for name, r in measure_utility_many(model, defenses, eval_tokens).items()}
    log(f"utility of {len(defenses)} defenses on {tuple(eval_tokens.shape)} benign tokens")
    valid, scores = {}, {}
    for name, defense in defenses.items():
        v = validity(model, defense, list(evaluate), batch_size=batch_size)
        valid[name], scores[name] = v.valid, (v.score_undefended, v.score_defended)
    log("validity: " + ", ".join(f"{name} {sum(v)}/{len(v)}" for name, v in valid.items()))
    return SettingWorld(setting_name, site, selection.features, list(evaluate), defenses, utility, valid, scores)


def _flagged(model, defense: Defense, batch: AttackBatch, perturbation: Perturbation) -> torch.Tensor | None:
    """Whether a detector flags each attacked example (None for defenses that detect nothing)."""
    defense.reset()
    with torch.no_grad(), model.hooks(fwd_hooks=perturbation_hooks([perturbation]) + defense.fwd_hooks()):
        model(batch.tokens, return_type=None)
    flags = defense.flags()
    defense.reset()
    return None if flags is None else flags.bool().cpu()


def evaluate_unit(world: SettingWorld, unit: StandardUnit, model, *, attack_batch: int = 32) -> list[dict[str, Any]]:
    """Records of one unit: one per invalid sample, one per attacked valid sample."""
    defense = world.defenses[unit.defense]
    valid = world.valid[unit.defense]
    und, dfd = world.scores[unit.defense]
    here = [d for d in defense.defended_latents() if d.site == world.site]
    constraint = "encoder" if here else "none"
    base = {"setting": unit.setting, "defense": unit.defense, "budget": unit.budget, "seed": unit.seed,
            "site": world.site, "constraint": constraint}
    records = []
    for i, s in enumerate(world.evaluate):
        if not valid[i]:
            records.append({**base, "sample_id": s.id, "attack": "-", "valid": False, "recovered": None,
                            "score_undefended": und[i], "score_defended": dfd[i]})
    idx = [i for i in range(len(world.evaluate)) if valid[i]]
    threat = ThreatModel.make(world.site, positions="last", budget=unit.budget, relative=True,
                              constraint=constraint)
    # budget 0: the only feasible delta is 0 (one checked forward, no steps)
    cfg = AttackConfig(steps=unit.steps if unit.budget > 0 else 0, seed=unit_seed(unit.seed, unit))
    for start in range(0, len(idx), attack_batch):
        rows = idx[start : start + attack_batch]
        chunk = [world.evaluate[i] for i in rows]
        batch = AttackBatch.from_lists([s.tokens for s in chunk], device=model.cfg.device)
        result = GradientRecovery(model, defense, threat, SettingObjective(chunk), cfg).run(batch)
        flags = _flagged(model, defense, batch, result.perturbations[0])
        for j, i in enumerate(rows):
            ok = bool(result.success[j])
            flagged = None if flags is None else bool(flags[j])
            drift = float(result.drift[j])
            records.append({
                **base, "sample_id": world.evaluate[i].id, "attack": "gradient", "stage": 0, "valid": True,
                "recovered": ok and not flagged, "attack_success": ok, "flagged": flagged,
                "score_undefended": und[i], "score_defended": dfd[i], "score_attacked": float(result.score[j]),
                "drift": drift if drift == drift else None, "rel_delta_norm": float(result.relative_norm[j]),
                "reactivation": float(result.reactivation[j]), "steps": int(result.steps[j]),
            })
    return records


def buildable_defenses() -> tuple[str, ...]:
    """Registered defenses with a default config in ``guard.utility`` (plain clamp first)."""
    names = list(DEFENSES)
    return tuple(["clamp"] + [n for n in names if n != "clamp"])


def build_plan(config: SuiteConfig, model, saes: Mapping[str, object],
               samples: Callable[[str, int, int], tuple[list[Sample], list[Sample]]], *,
               benign: tuple[torch.Tensor, torch.Tensor] | None = None,
               contrast: Sequence[torch.Tensor] | None = None) -> SuitePlan:
    """The plan on any model + SAEs; ``samples(setting, n_select, n)`` gives (selection, evaluation).

    ``benign``: (calibration, held-out) token chunks [batch, pos] (default: guard's built-in benign
    text); ``contrast``: contrast prompts for direction calibrations (default: guard's harmless requests).
    """
    config = config.with_defaults({**DEFAULTS, "defenses": buildable_defenses()})
    unknown = set(config.option_dict) - set(OPTION_DEFAULTS)
    if unknown:
        raise unknown_name("option", sorted(unknown)[0], OPTION_DEFAULTS, "standard suite")
    for name in config.defenses:
        if name not in DEFENSES:
            raise unknown_name("defense", name, DEFENSES, "standard suite")
    if "clamp" not in config.defenses:
        raise ToolkitError("standard suite: the plain clamp 'clamp' is the reference; keep it in defenses")
    opts = {**OPTION_DEFAULTS, **config.option_dict}
    calib, held_out = benign if benign is not None else benign_tokens(model, int(opts["seq_len"]))
    contrast = list(contrast) if contrast is not None else contrast_prompts(model)
    worlds = {}
    for setting in config.settings:
        select, evaluate = samples(setting, int(opts["n_select"]), config.n)
        worlds[setting] = build_world(model, saes, setting, select, evaluate, config.defenses, site=opts["site"],
                                      n_latents=int(opts["n_latents"]), calib_tokens=calib,
                                      eval_tokens=held_out, contrast=contrast)
    units = tuple(StandardUnit(d, s, float(b), config.seed, config.n, int(opts["steps"]))
                  for s in config.settings for d in config.defenses for b in sorted(config.budgets))
    utility = {(d, s): worlds[s].utility[d] for s in config.settings for d in config.defenses}

    def evaluate(unit: StandardUnit) -> list[dict[str, Any]]:
        return evaluate_unit(worlds[unit.setting], unit, model, attack_batch=int(opts["attack_batch"]))

    notes = (
        f"standard suite: plain clamp of {opts['n_latents']} attribution-selected latents at {opts['site']} "
        f"(selected on {opts['n_select']} samples kept apart from the {config.n} evaluated per setting); "
        "residual-aware defenses at guard's default settings, composed with the same clamp.",
        "attack: gradient recovery at the last prompt position, relative L2 budget, encoder-orthogonal "
        "(none where a defense pins no latent at the site), defense inside the loop.",
        "error_monitor: a recovery counts only when unflagged; the attacker does not optimise against the "
        "monitor in this suite.",
    )
    return SuitePlan(units, evaluate, utility, config, reference="clamp", notes=notes)


@functools.lru_cache(maxsize=1)
def _subject(device: str):
    from experiments.subject import load_subject

    return load_subject(device=device)


def build_standard(config: SuiteConfig) -> SuitePlan:
    """The standard suite on the embedded subject (see module docstring)."""
    if config.subject != "default":
        raise ToolkitError(f"standard suite: only the embedded subject ('default') is supported, got "
                           f"{config.subject!r}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ToolkitError(f"standard suite: device {config.device!r} requested but CUDA is not available")
    subject = _subject(config.device)
    model = subject.model

    def samples(setting: str, n_select: int, n: int) -> tuple[list[Sample], list[Sample]]:
        s = get_setting(setting)
        everything = s.samples(model.tokenizer, n_select + n if setting == "ioi" else None, config.seed)
        if len(everything) <= n_select:
            raise ToolkitError(f"standard suite: setting {setting!r} has only {len(everything)} samples")
        return everything[:n_select], everything[n_select : n_select + n]

    return build_plan(config, model, dict(subject.saes), samples)
