"""The ``demo`` suite: a planted linear behaviour on a tiny random network, end to end in seconds.

What it is: a self-contained stand-in for a real setting, to exercise the whole pipeline
(units, resumable records, cascade, bounds, summary, checks, plots, report) without a real
model. A random two-layer residual network (d_model 16, vocabulary 50) produces the
activation at ``blocks.0.hook_resid_post``; the "behaviour" is present when a linear readout
``w . resid[:, -1]`` exceeds a threshold. A hand-built ReLU SAE has latent 0 with encoder and
decoder direction ``e0`` (cosine ``c`` with ``w``) and latent 1 along the rest of ``w``; the
planted samples carry a large component along ``e0``.

Defenses (guard's ``FeatureClamp`` and ``NoDefense``): ``none``; ``clamp`` (latent 0 set to
0; recoverable along ``w - c e0``, gain ``sqrt(1 - c^2)`` per unit of budget); ``clamp_wide``
(latents 0 and 1; ``w`` lies in their encoder span, so encoder-orthogonal perturbations
cannot move the score: the certificate is 0).

Threat model: L2 ball of radius ``budget`` at the last position of the site, encoder-
orthogonal to the defended latents (exact for a ReLU SAE). Attacks, as a cascade:
normalised-gradient ascent with re-projection every step, stopping at the goal ("pgd"),
then random search in the constraint set ("random") on what is left. Because the score is
linear behind an exact encoder-orthogonal clamp, the first-order bound is exact here
(``bound_exact``): any attack above it is a bug.

Settings: ``planted`` (c = 0.8) and ``planted_aligned`` (c = 0.95, harder to recover).
Options: ``steps`` (40), ``random_samples`` (64), ``unit_delay_s`` (0; a pause per unit
for tests that interrupt a run; never part of the results).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from certify.bounds import convex_bound, projector
from certify.config import SuiteConfig
from certify.runner import cascade, unit_seed
from certify.suites import SuitePlan
from guard.base import Defense, NoDefense
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError, unknown_name

SITE = "blocks.0.hook_resid_post"
D_MODEL, D_SAE, D_MLP, D_VOCAB, N_POS = 16, 32, 32, 50, 4
THRESHOLD = 0.5
GOAL_MARGIN = 0.05  # pgd stops once the score is this far above the threshold
SETTINGS = {"planted": 0.8, "planted_aligned": 0.95}
DEFENSES = ("none", "clamp", "clamp_wide")
DEFAULTS = {"settings": ("planted", "planted_aligned"), "defenses": DEFENSES,
            "budgets": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "n": 12}
OPTION_DEFAULTS = {"steps": 40, "random_samples": 64, "unit_delay_s": 0.0}


class PlantedSAE(torch.nn.Module):
    """A ReLU SAE with SAELens's surface (``W_enc``, ``W_dec``, ``encode``, ``decode``, ``cfg``)."""

    def __init__(self, w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor, b_dec: torch.Tensor) -> None:
        super().__init__()
        self.W_enc = torch.nn.Parameter(w_enc, requires_grad=False)
        self.b_enc = torch.nn.Parameter(b_enc, requires_grad=False)
        self.W_dec = torch.nn.Parameter(w_dec, requires_grad=False)
        self.b_dec = torch.nn.Parameter(b_dec, requires_grad=False)

        class _Cfg:
            d_in, d_sae, normalize_activations = w_enc.shape[0], w_enc.shape[1], "none"

        self.cfg = _Cfg()

    def encode(self, resid: torch.Tensor) -> torch.Tensor:
        return torch.relu((resid - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        return feature_acts @ self.W_dec + self.b_dec


@dataclass(frozen=True)
class DemoUnit:
    """One defense, setting and budget over all ``n`` samples; every field shapes the records."""

    defense: str
    setting: str
    budget: float
    seed: int
    n: int
    steps: int
    random_samples: int


class PlantedWorld:
    """The network, SAE, readout and samples of one setting (deterministic in seed and setting)."""

    def __init__(self, setting: str, seed: int, n: int, device: str) -> None:
        cos = SETTINGS[setting]
        gen = torch.Generator().manual_seed(1_000_003 * int(seed) + sorted(SETTINGS).index(setting))
        randn = functools.partial(torch.randn, generator=gen, dtype=torch.float64)
        self.embed = randn(D_VOCAB, D_MODEL) * 0.3
        self.w_in, self.w_out = randn(D_MODEL, D_MLP) * 0.5, randn(D_MLP, D_MODEL) * 0.2
        self.unembed = randn(D_MODEL, D_VOCAB) * 0.5
        w, u = torch.linalg.qr(randn(D_MODEL, 2))[0].T
        self.readout = w
        e0 = cos * w + math.sqrt(1 - cos**2) * u
        e1 = u * cos - w * math.sqrt(1 - cos**2)  # unit, orthogonal to e0, with w in span(e0, e1)
        w_enc = randn(D_MODEL, D_SAE) * 0.3
        w_enc[:, 0], w_enc[:, 1] = e0, e1
        b_enc = -randn(D_SAE).abs() * 0.1
        b_enc[:2] = 0.0
        w_dec = randn(D_SAE, D_MODEL)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        w_dec[0], w_dec[1] = e0, e1
        self.sae = PlantedSAE(w_enc, b_enc, w_dec, torch.zeros(D_MODEL, dtype=torch.float64))
        tokens = torch.randint(0, D_VOCAB, (n, N_POS), generator=gen)
        strength = 1.0 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64)
        self.benign = torch.randint(0, D_VOCAB, (32, N_POS), generator=gen)
        self.device = torch.device(device)
        for name in ("embed", "w_in", "w_out", "unembed", "readout"):
            setattr(self, name, getattr(self, name).to(self.device))
        self.sae = self.sae.to(self.device)
        resid = self.resid(tokens.to(self.device))
        resid[:, -1] += strength.to(self.device)[:, None] * e0.to(self.device)  # the planted behaviour
        self.samples = resid
        # benign next-token targets drawn from the undefended network itself
        probs = torch.softmax(self.resid(self.benign.to(self.device)) @ self.unembed, dim=-1).cpu()
        self.benign_targets = torch.multinomial(probs.reshape(-1, D_VOCAB), 1, generator=gen).reshape(probs.shape[:2])
        self.sample_ids = tuple(f"{setting}-{i:03d}" for i in range(n))

    def resid(self, tokens: torch.Tensor) -> torch.Tensor:
        """The activation at the site, [batch, pos, d_model]."""
        x = self.embed[tokens]
        return x + torch.tanh(x @ self.w_in) @ self.w_out

    def defense(self, name: str) -> Defense:
        if name == "none":
            return NoDefense()
        features = {"clamp": (0,), "clamp_wide": (0, 1)}
        if name not in features:
            raise unknown_name("defense", name, DEFENSES, "demo suite")
        return FeatureClamp(ClampConfig(features={SITE: features[name]}), {SITE: self.sae})

    @staticmethod
    def forward(resid: torch.Tensor, delta: torch.Tensor, defense: Defense) -> torch.Tensor:
        """Perturb the last position, then defend (the attacker's hook runs before the defense's)."""
        resid = torch.cat([resid[:, :-1], (resid[:, -1] + delta)[:, None]], dim=1)
        return defense.edit(resid, SITE) if SITE in defense.sites else resid

    def score(self, resid: torch.Tensor) -> torch.Tensor:
        return resid[:, -1] @ self.readout

    def cross_entropy(self, defense: Defense) -> float:
        """Next-token loss on benign sequences, against targets sampled from the undefended network."""
        resid = self.resid(self.benign.to(self.device))
        resid = defense.edit(resid, SITE) if SITE in defense.sites else resid
        logits = resid @ self.unembed
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, D_VOCAB),
                                                       self.benign_targets.reshape(-1).to(self.device)))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Tiny tensors: extra CPU threads only add contention (20x slower on a loaded machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@functools.lru_cache(maxsize=8)
def _world(setting: str, seed: int, n: int, device: str) -> PlantedWorld:
    return PlantedWorld(setting, seed, n, device)


def _constraint(world: PlantedWorld, defense: Defense) -> torch.Tensor | None:
    """A = W_enc[:, S] at the site for the defended latents, [d_model, |S|]."""
    cols = [d.sae.W_enc[:, d.features] for d in defense.defended_latents() if d.site == SITE]
    return torch.cat(cols, dim=1) if cols else None


class _Attacks:
    """The two attacks of the cascade over sample indices, for one unit."""

    def __init__(self, world: PlantedWorld, defense: Defense, unit: DemoUnit, proj: torch.Tensor) -> None:
        self.world, self.defense, self.unit, self.proj = world, defense, unit, proj
        self.gen = torch.Generator().manual_seed(unit_seed(unit.seed, unit))

    def _ball(self, delta: torch.Tensor) -> torch.Tensor:
        norm = delta.norm(dim=-1, keepdim=True)
        return delta * torch.clamp(self.unit.budget / norm.clamp_min(1e-30), max=1.0)

    def _result(self, idx: list[int], delta: torch.Tensor) -> list[dict[str, Any]]:
        resid = self.world.samples[idx]
        scores = self.world.score(self.world.forward(resid, delta, self.defense))
        return [{"delta": delta[j], "score": float(scores[j]), "recovered": bool(scores[j] > THRESHOLD)}
                for j in range(len(idx))]

    def pgd(self, idx: list[int]) -> list[dict[str, Any]]:
        resid = self.world.samples[idx]
        delta = torch.zeros(len(idx), D_MODEL, dtype=resid.dtype, device=resid.device)
        step = 2.5 * self.unit.budget / max(self.unit.steps, 1)
        for _ in range(self.unit.steps if self.unit.budget > 0 else 0):
            delta.requires_grad_(True)
            scores = self.world.score(self.world.forward(resid, delta, self.defense))
            (grad,) = torch.autograd.grad(scores.sum(), delta)
            with torch.no_grad():
                active = (scores <= THRESHOLD + GOAL_MARGIN)[:, None]  # stop at the goal
                if not active.any():
                    break
                grad = grad @ self.proj
                grad = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-30)
                # re-project delta itself every step, so it never leaves the constraint set
                delta = self._ball((delta + active * step * grad) @ self.proj)
        return self._result(idx, delta.detach())

    def random(self, idx: list[int]) -> list[dict[str, Any]]:
        resid = self.world.samples[idx]
        k = self.unit.random_samples
        cand = torch.randn(len(idx), k, D_MODEL, generator=self.gen, dtype=torch.float64).to(resid.device)
        cand = cand @ self.proj
        cand = cand / cand.norm(dim=-1, keepdim=True).clamp_min(1e-30) * self.unit.budget
        rep = resid.repeat_interleave(k, dim=0)
        scores = self.world.score(self.world.forward(rep, cand.reshape(-1, D_MODEL), self.defense)).reshape(len(idx), k)
        best = cand[torch.arange(len(idx)), scores.argmax(dim=1)]
        return self._result(idx, best)


def evaluate_demo_unit(unit: DemoUnit, device: str = "cpu") -> list[dict[str, Any]]:
    """All records of one unit: one per invalid sample, one per attack run on a valid one."""
    world = _world(unit.setting, unit.seed, unit.n, device)
    defense = world.defense(unit.defense)
    resid = world.samples
    zero = torch.zeros(resid.shape[0], D_MODEL, dtype=resid.dtype, device=resid.device)
    score_und = world.score(resid)
    delta0 = zero.clone().requires_grad_(True)
    score_def = world.score(world.forward(resid, delta0, defense))
    (grads,) = torch.autograd.grad(score_def.sum(), delta0)  # d score / d delta at the defended state
    score_def = score_def.detach()
    valid = (score_und > THRESHOLD) & ~(score_def > THRESHOLD)
    a = _constraint(world, defense)
    proj = torch.as_tensor(projector(None if a is None else a.detach().cpu(), D_MODEL), device=resid.device)
    h_def_norm = world.forward(resid, zero, defense)[:, -1].norm(dim=-1)
    latents = [(d.sae, d.features) for d in defense.defended_latents() if d.site == SITE]

    def drift(i: int, delta: torch.Tensor) -> float | None:
        # drift of the defended latents on the defense's input, attacked vs not
        if not latents:
            return None
        sae, feats = latents[0]
        before = sae.encode(resid[i, -1])[feats]
        after = sae.encode(resid[i, -1] + delta)[feats]
        return float((after - before).norm() / before.norm().clamp_min(1e-12))

    base = {"setting": unit.setting, "defense": unit.defense, "budget": unit.budget, "seed": unit.seed,
            "site": SITE, "threshold": THRESHOLD}
    records: list[dict[str, Any]] = []
    valid_idx = [i for i in range(len(world.sample_ids)) if valid[i]]
    for i, sid in enumerate(world.sample_ids):
        if not valid[i]:
            records.append({**base, "sample_id": sid, "attack": "-", "valid": False, "recovered": None,
                            "score_undefended": float(score_und[i]), "score_defended": float(score_def[i])})
    if valid_idx:
        attacks = _Attacks(world, defense, unit, proj)
        result = cascade(valid_idx, [attacks.pgd, attacks.random])
        for i, attempts in zip(valid_idx, result.attempts, strict=True):
            bound = convex_bound(grads[i].cpu(), unit.budget, None if a is None else a.detach().cpu())
            for stage, (name, res) in enumerate(attempts):
                delta = res["delta"]
                logits = world.forward(resid[i:i + 1], delta[None], defense)[0, -1] @ world.unembed
                records.append({
                    **base, "sample_id": world.sample_ids[i], "attack": name, "stage": stage, "valid": True,
                    "recovered": res["recovered"], "score_undefended": float(score_und[i]),
                    "score_defended": float(score_def[i]), "score_attacked": res["score"],
                    "score_gain": res["score"] - float(score_def[i]), "bound": bound.bound, "bound_exact": True,
                    "certified": bool(float(score_def[i]) + bound.bound <= THRESHOLD),
                    "grad_norm": float(grads[i].norm()), "delta_norm": float(delta.norm()),
                    "rel_delta_norm": float(delta.norm() / h_def_norm[i].clamp_min(1e-12)),
                    "drift": drift(i, delta), "completion": f"tok{int(logits.argmax())}",
                })
    return records


def build_demo(config: SuiteConfig) -> SuitePlan:
    """The demo suite's plan for ``config`` (defaults filled from ``DEFAULTS``)."""
    config = config.with_defaults(DEFAULTS)
    if config.subject not in ("default", "demo"):
        raise ToolkitError(f"demo suite: it builds its own tiny subject; got subject {config.subject!r} "
                           "(use 'default', or another suite for a real model)")
    for name in config.settings:
        if name not in SETTINGS:
            raise unknown_name("setting", name, SETTINGS, "demo suite")
    for name in config.defenses:
        if name not in DEFENSES:
            raise unknown_name("defense", name, DEFENSES, "demo suite")
    unknown = set(config.option_dict) - set(OPTION_DEFAULTS)
    if unknown:
        raise unknown_name("option", sorted(unknown)[0], OPTION_DEFAULTS, "demo suite")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ToolkitError(f"demo suite: device {config.device!r} requested but CUDA is not available")
    opts = {**OPTION_DEFAULTS, **config.option_dict}
    delay = float(opts["unit_delay_s"])
    units = tuple(
        DemoUnit(defense, setting, float(budget), config.seed, config.n, int(opts["steps"]),
                 int(opts["random_samples"]))
        for setting in config.settings for defense in config.defenses for budget in sorted(config.budgets)
    )

    def evaluate(unit: DemoUnit) -> list[dict[str, Any]]:
        if delay:
            time.sleep(delay)
        with _one_thread():
            return evaluate_demo_unit(unit, config.device)

    utility = {}
    with _one_thread():
        for setting in config.settings:
            world = _world(setting, config.seed, config.n, config.device)
            clean = world.cross_entropy(NoDefense())
            for defense in config.defenses:
                utility[(defense, setting)] = world.cross_entropy(world.defense(defense)) - clean
    notes = (
        "demo suite: planted linear behaviour on a tiny random network; a ReLU SAE clamp with an "
        "encoder-orthogonal attacker, where the first-order bound is exact.",
        "clamp_wide holds every latent whose encoder direction carries the readout, so its score is flat in "
        "the threat set: zero gradient there is real, and the certificate is 0.",
    )
    return SuitePlan(units, evaluate, utility, config, reference="clamp", notes=notes)
