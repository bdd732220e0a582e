"""The ``demo`` suite: a planted linear behaviour on a tiny transformer, attacked by the real engine, on a CPU.

What it is: a self-contained stand-in for a real setting, to exercise the whole pipeline
(units, resumable records, the attack cascade of ``attacks.runner``, bounds, summary, checks,
plots, report) without a real model. The world is a one-layer TransformerLens
``HookedTransformer`` built in code (d_model 16, no normalisation), so the attacked site
``blocks.0.hook_resid_post`` is the last residual and the logits are affine in it. The
"behaviour" is the logit margin ``logit[TARGET] - logit[OTHER]`` at the last position, read
by ``attacks.objectives.LogitDifference`` with threshold 0.5; the unembedding makes that margin
``w . resid[:, -1]`` for a unit vector ``w``. A hand-built SAELens ``StandardSAE`` (ReLU) has
latent 0 with encoder and decoder direction ``e0 = c w + sqrt(1 - c^2) u`` and latent 1
along the rest of ``w``; each sample ends in one of 16 planted tokens, whose embeddings carry
a strength in [1, 3] along ``e0``.

Defenses (guard's ``FeatureClamp``, every token clamped, and ``NoDefense``): ``none``;
``clamp`` (latent 0 set to 0; recoverable along ``w - c e0``, gain ``sqrt(1 - c^2)`` per unit
of budget); ``clamp_wide`` (latents 0 and 1; ``w`` lies in their encoder span, so no
encoder-orthogonal perturbation can move the score: the certificate is 0).

Threat model: ``ThreatModel`` at the last position of the site, absolute L2 budget,
encoder-orthogonal to the defended latents (exact for a ReLU SAE; no constraint for
``none``). Attack: ``attacks.runner.default_stages`` (``steps`` per stage) run by
``attack_samples``, one cascade per unit. Because the score is affine in the perturbation
behind an exact encoder-orthogonal clamp, the first-order bound of ``certify.bounds`` is
exact here (``bound_exact``): any attack above it is a bug. The attacked model is float32
(the engine's dtype); the bound and ``score_gain`` are evaluated in its float64 twin (the same
weights), so float32 rounding, which an attacker can climb by ~1e-6 here, is never a gain.

Settings: ``planted`` (c = 0.8) and ``planted_aligned`` (c = 0.95, harder to recover).
Options: ``steps`` (10), ``unit_delay_s`` (0; a pause per unit for tests that interrupt a
run; never part of the results). Cost: the default run (36 units, n = 12) takes about 30 s of
CPU, most of it the cascade's 440 steps per unit where nothing can recover (``clamp_wide``,
small budgets) and importing TransformerLens and SAELens; ``--option steps=10`` takes about 18 s.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from attacks.batch import AttackBatch
from attacks.forward import full_forward
from attacks.objectives import LogitDifference
from attacks.perturbation import Perturbation
from attacks.runner import STAGE_NAMES, AttackedChunk, attack_samples, default_stages
from attacks.threat import ThreatModel
from certify.bounds import convex_bound
from certify.config import SuiteConfig, check_options
from certify.outcomes import SampleRecord
from certify.provenance import sha256_tensors
from certify.runner import unit_seed
from certify.selftest import one_thread
from certify.suites import SuitePlan
from guard.base import Defense, NoDefense
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError, unknown_name

SITE = "blocks.0.hook_resid_post"
D_MODEL, D_HEAD, N_HEADS, D_MLP, D_SAE = 16, 4, 4, 32, 32
N_BASE, N_PLANTED = 48, 16  # ordinary tokens, then the planted ones
D_VOCAB = N_BASE + N_PLANTED
N_POS, N_CTX, N_BENIGN = 6, 8, 32  # sample length, context, benign sequences (of length N_CTX)
TARGET, OTHER = 0, 1  # the behaviour: logit[TARGET] - logit[OTHER] > THRESHOLD at the last position
THRESHOLD = 0.5
SETTINGS = {"planted": 0.8, "planted_aligned": 0.95}
DEFENSES = ("none", "clamp", "clamp_wide")
FEATURES = {"clamp": (0,), "clamp_wide": (0, 1)}
REFERENCE = "clamp"
DEFAULTS = {"settings": ("planted", "planted_aligned"), "defenses": DEFENSES,
            "budgets": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "n": 12}
OPTION_DEFAULTS = {"steps": 10, "unit_delay_s": 0.0}
# init scale per parameter kind; the block's outputs are small, so the planted direction
# dominates the last residual and validity is decided by the SAE, not by noise
_SCALES = {"W_E": 0.3, "W_pos": 0.1, "W_Q": 0.4, "W_K": 0.4, "W_V": 0.4, "W_O": 0.05, "W_in": 0.4,
           "W_out": 0.05, "W_U": 0.5}


@dataclass(frozen=True)
class DemoUnit:
    """One defense, setting and budget over all ``n`` samples; every field shapes the records."""

    defense: str
    setting: str
    budget: float
    seed: int
    n: int
    steps: int


def _objective(k: int) -> LogitDifference:
    return LogitDifference(torch.full((k,), TARGET), torch.full((k,), OTHER), threshold=THRESHOLD)


def _new_model(dtype: torch.dtype, device: str) -> HookedTransformer:
    """The one-layer architecture with empty weights (``init_weights=False``: the caller fills them)."""
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=D_MODEL, d_head=D_HEAD, n_heads=N_HEADS, d_mlp=D_MLP, d_vocab=D_VOCAB, n_ctx=N_CTX,
        act_fn="gelu", normalization_type=None, positional_embedding_type="standard", default_prepend_bos=False,
        init_weights=False, dtype=dtype, device=device,
    )
    with warnings.catch_warnings():  # TransformerLens 3 deprecates the class it still ships; nothing to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg).eval()


def _new_sae(dtype: torch.dtype, device: str) -> StandardSAE:
    config = StandardSAEConfig(d_in=D_MODEL, d_sae=D_SAE, dtype=str(dtype).removeprefix("torch."), device=device)
    return StandardSAE(config).eval()


def _twin(module, blank):
    """``blank`` holding exactly ``module``'s weights (float32 values are exact in float64)."""
    blank.load_state_dict(module.state_dict())
    return blank


class PlantedWorld:
    """The model, SAE, samples and benign text of one setting (deterministic in seed and setting).

    Sample ``i`` is the same for every ``n`` (the samples are a prefix of one stream).
    """

    def __init__(self, setting: str, seed: int, n: int, device: str) -> None:
        cos = SETTINGS[setting]
        gen = torch.Generator().manual_seed(1_000_003 * int(seed) + sorted(SETTINGS).index(setting))
        randn = functools.partial(torch.randn, generator=gen, dtype=torch.float64)
        self.model = model = _new_model(torch.float32, device)
        with torch.no_grad():  # every weight from our generator
            for name, param in model.named_parameters():
                param.copy_(randn(*param.shape) * _SCALES.get(name.rsplit(".", 1)[-1], 0.0))
        w, u = torch.linalg.qr(randn(D_MODEL, 2))[0].T
        sin = math.sqrt(1 - cos**2)
        e0, e1 = cos * w + sin * u, sin * w - cos * u  # orthonormal, w = cos e0 + sin e1
        strength = 1.0 + 2.0 * torch.rand(N_PLANTED, generator=gen, dtype=torch.float64)
        lean = torch.rand(N_PLANTED, generator=gen, dtype=torch.float64) - 0.5  # latent 1 on for about half
        with torch.no_grad():  # the planted behaviour: strength along e0, a small lean along e1, noise off both
            noise = model.embed.W_E[N_BASE:].double().cpu()
            basis = torch.stack([e0, e1], dim=1)
            noise = noise - noise @ basis @ basis.T
            model.embed.W_E[N_BASE:] = (noise + strength[:, None] * e0 + lean[:, None] * e1).to(model.embed.W_E)
            model.unembed.W_U[:, TARGET] = model.unembed.W_U[:, OTHER] + w.to(model.unembed.W_U)
            model.unembed.b_U.zero_()
        self.sae = _planted_sae(randn, e0, e1, device)
        self.readout, self.e0, self.e1 = w, e0, e1
        # the attacked world is float32 (the engine's dtype); its float64 twin evaluates the same
        # function where the bound is checked, so float32 rounding (~1e-6 here) is no attacker's gain
        exact_model = _twin(model, _new_model(torch.float64, device))
        exact_sae = _twin(self.sae, _new_sae(torch.float64, device))
        self._nets = {False: (model, _defenses(self.sae)), True: (exact_model, _defenses(exact_sae))}
        self.defenses = self._nets[False][1]
        samples = torch.Generator().manual_seed(7919 * int(seed) + sorted(SETTINGS).index(setting))
        rows = []
        for _ in range(n):
            prefix = torch.randint(0, N_BASE, (N_POS - 1,), generator=samples)
            planted = N_BASE + torch.randint(0, N_PLANTED, (1,), generator=samples)
            rows.append(torch.cat([prefix, planted]))
        self.tokens = torch.stack(rows).to(device)
        self.batch = AttackBatch(self.tokens, torch.full((n,), N_POS, device=self.tokens.device))
        self.sample_ids = tuple(f"{setting}-{i:03d}" for i in range(n))
        self.benign = torch.randint(0, N_BASE, (N_BENIGN, N_CTX), generator=gen).to(device)
        with torch.no_grad():  # benign next-token targets drawn from the undefended model itself
            probs = torch.softmax(model(self.benign).double(), dim=-1).cpu()
        self.benign_targets = torch.multinomial(probs.reshape(-1, D_VOCAB), 1, generator=gen).reshape(
            probs.shape[:2]).to(device)
        self._scores: dict[tuple[str, bool], torch.Tensor] = {}
        self._grads: dict[str, torch.Tensor] = {}

    def defense(self, name: str) -> Defense:
        if name not in self.defenses:
            raise unknown_name("defense", name, DEFENSES, "demo suite")
        return self.defenses[name]

    def columns(self, name: str, exact: bool = False) -> torch.Tensor | None:
        """A = W_enc[:, S] of the defended latents at the site, [d_model, |S|]; None for none."""
        self.defense(name)
        defense = self._nets[exact][1][name]
        cols = [d.sae.W_enc[:, d.features] for d in defense.defended_latents() if d.site == SITE]
        return torch.cat(cols, dim=1).detach() if cols else None

    def constraint(self, name: str) -> str:
        return "encoder" if self.columns(name) is not None else "none"

    def perturbation(self, delta: torch.Tensor) -> Perturbation:
        """``delta`` [n, d_model] at the last position of every sample."""
        full = torch.zeros(*self.tokens.shape, D_MODEL, dtype=delta.dtype, device=delta.device)
        full = full.index_put((torch.arange(len(delta), device=delta.device),
                               torch.full((len(delta),), N_POS - 1, device=delta.device)), delta)
        mask = torch.zeros(self.tokens.shape, dtype=torch.bool, device=delta.device)
        mask[:, N_POS - 1] = True
        return Perturbation(SITE, full, mask)

    def score_at(self, name: str, delta: torch.Tensor | None = None, exact: bool = False) -> torch.Tensor:
        """The behaviour score [n] under defense ``name`` with ``delta`` [n, d_model] at the last position
        (``exact``: in the float64 twin)."""
        self.defense(name)
        model, defenses = self._nets[exact]
        perts = [] if delta is None else [self.perturbation(delta.to(self.tokens.device, model.cfg.dtype))]
        obj = _objective(len(self.sample_ids))
        logits, _ = full_forward(model, defenses[name], self.batch, perts, readout=obj.readout(self.batch))
        return obj.score(logits, torch.arange(len(self.sample_ids), device=logits.device))

    def scores(self, name: str, exact: bool = False) -> torch.Tensor:
        """Score [n] under ``name`` with no perturbation (cached: validity does not depend on the budget)."""
        if (name, exact) not in self._scores:
            with torch.no_grad():
                self._scores[(name, exact)] = self.score_at(name, exact=exact).cpu()
        return self._scores[(name, exact)]

    def gradients(self, name: str) -> torch.Tensor:
        """d score / d delta [n, d_model] at the defended state, through the defense, in float64 (for the bound)."""
        if name not in self._grads:
            delta = torch.zeros(len(self.sample_ids), D_MODEL, dtype=torch.float64, device=self.tokens.device,
                                requires_grad=True)
            (grad,) = torch.autograd.grad(self.score_at(name, delta, exact=True).sum(), delta)
            self._grads[name] = grad.detach().cpu()
        return self._grads[name]

    def cross_entropy(self, name: str) -> float:
        """Next-token loss on benign sequences, against targets sampled from the undefended model."""
        with torch.no_grad(), self.defense(name).applied(self.model):
            logits = self.model(self.benign)
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, D_VOCAB).float(),
                                                       self.benign_targets.reshape(-1)))

    def fingerprint(self) -> str:
        """One hash over the model's weights, the SAE and the samples: what the records depend on."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"sae.{k}": v for k, v in self.sae.state_dict().items()})
        tensors.update({"tokens": self.tokens, "benign": self.benign, "benign_targets": self.benign_targets})
        return sha256_tensors(tensors)


def _defenses(sae: StandardSAE) -> dict[str, Defense]:
    out: dict[str, Defense] = {"none": NoDefense()}
    for name, feats in FEATURES.items():  # sink_ratio None: a toy has no attention sinks to spare
        out[name] = FeatureClamp(ClampConfig(features={SITE: feats}, sink_ratio=None), {SITE: sae})
    return out


def _planted_sae(randn, e0: torch.Tensor, e1: torch.Tensor, device: str) -> StandardSAE:
    """A ReLU SAE whose latents 0 and 1 read and write ``e0`` and ``e1``; the rest random."""
    sae = _new_sae(torch.float32, device)
    w_enc = randn(D_MODEL, D_SAE) * 0.3
    w_enc[:, 0], w_enc[:, 1] = e0, e1
    b_enc = -randn(D_SAE).abs() * 0.1
    b_enc[:2] = 0.0
    w_dec = randn(D_SAE, D_MODEL)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    w_dec[0], w_dec[1] = e0, e1
    with torch.no_grad():
        for param, value in ((sae.W_enc, w_enc), (sae.b_enc, b_enc), (sae.W_dec, w_dec), (sae.b_dec, 0.0)):
            param.copy_(torch.as_tensor(value, dtype=param.dtype).expand_as(param))
    return sae


@functools.lru_cache(maxsize=8)
def _world(setting: str, seed: int, n: int, device: str) -> PlantedWorld:
    return PlantedWorld(setting, seed, n, device)


@torch.no_grad()
def _attacked(world: PlantedWorld, name: str, chunk: AttackedChunk[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(score [k], logits [k, d_vocab]) at the last position under ``name`` with the chunk's found deltas."""
    obj = _objective(chunk.batch.size)
    logits, _ = full_forward(world.model, world.defense(name), chunk.batch, list(chunk.outcome.result.perturbations),
                             readout=obj.readout(chunk.batch))
    rows = torch.arange(chunk.batch.size, device=logits.device)
    return obj.score(logits, rows).cpu(), logits[:, 0].cpu()


def evaluate_demo_unit(unit: DemoUnit, device: str = "cpu") -> list[dict[str, Any]]:
    """All records of one unit: one per invalid sample, one per attacked valid sample (the cascade's outcome)."""
    world = _world(unit.setting, unit.seed, unit.n, device)
    defense = world.defense(unit.defense)
    und, dfd = world.scores("none"), world.scores(unit.defense)
    present = und > THRESHOLD
    valid = present & ~(dfd > THRESHOLD)
    constraint = world.constraint(unit.defense)
    key = {"setting": unit.setting, "defense": unit.defense, "budget": unit.budget, "seed": unit.seed,
           "threat": "residual", "site": SITE, "constraint": constraint}
    records = [SampleRecord.invalid(**key, sample_id=sid, present=bool(present[i]), score_undefended=float(und[i]),
                                    score_defended=float(dfd[i]))
               for i, sid in enumerate(world.sample_ids) if not valid[i]]
    attacked = [i for i in range(len(world.sample_ids)) if valid[i]]
    if not attacked:
        return [r.to_dict() for r in records]
    threat = ThreatModel.make(SITE, positions="last", budget=unit.budget, relative=False, constraint=constraint)
    stages = default_stages(steps=unit.steps, seed=unit_seed(unit.seed, unit))
    chunks = attack_samples(world.model, defense, threat, attacked, lambda chunk: _objective(len(chunk)),
                            lambda i: world.tokens[i].tolist(), stages)
    cols = world.columns(unit.defense, exact=True)
    a = None if cols is None else cols.cpu()
    grads = world.gradients(unit.defense)
    exact_defended = world.scores(unit.defense, exact=True)
    for chunk in chunks:
        result = chunk.outcome.result
        score, logits = _attacked(world, unit.defense, chunk)
        ref = None
        if unit.defense not in (REFERENCE, "none"):
            ref, _ = _attacked(world, REFERENCE, chunk)
        found = torch.zeros(len(world.sample_ids), D_MODEL, dtype=torch.float64, device=world.tokens.device)
        found[chunk.samples] = result.perturbations[0].masked()[:, N_POS - 1].to(found)
        with torch.no_grad():  # the found deltas in the float64 twin: the gain the bound speaks of
            exact_attacked = world.score_at(unit.defense, found, exact=True).cpu()
        for j, i in enumerate(chunk.samples):
            binds = None
            if ref is not None:  # the defense changed the score at the attacked point, or flagged it
                binds = bool(abs(float(score[j]) - float(ref[j])) > 1e-4 * (1 + abs(float(ref[j])))
                             or chunk.outcome.ever_flagged[j])
            bound = convex_bound(grads[i], unit.budget, a).bound
            gain = float(exact_attacked[i] - exact_defended[i])
            extra = {"score_gain": gain, "bound": bound, "bound_exact": True,
                     "certified": bool(float(dfd[i]) + bound <= THRESHOLD),
                     "delta_norm": float(result.delta_norm[j]), "completion": f"tok{int(logits[j].argmax())}"}
            records.append(SampleRecord.from_outcome(chunk.outcome, j, score_undefended=float(und[i]), binds=binds,
                                                     extra=extra, **key, sample_id=world.sample_ids[i]))
    return [r.to_dict() for r in records]


def _check_names(names: Sequence[str], known: Sequence[str], what: str) -> None:
    for name in names:
        if name not in known:
            raise unknown_name(what, name, known, "demo suite")


def build_demo(config: SuiteConfig) -> SuitePlan:
    """The demo suite's plan for ``config`` (defaults filled from ``DEFAULTS``)."""
    config = config.with_defaults(DEFAULTS)
    if config.subject not in ("default", "demo"):
        raise ToolkitError(f"demo suite: it builds its own tiny subject; got subject {config.subject!r} "
                           "(use 'default', or another suite for a real model)")
    _check_names(config.settings, tuple(SETTINGS), "setting")
    _check_names(config.defenses, DEFENSES, "defense")
    if config.threats not in (None, ("residual",)):
        raise ToolkitError(f"demo suite: its planted recoveries and exact bounds are for the residual threat only; "
                           f"got threats {list(config.threats)}")
    if config.dtype != "float32":
        raise ToolkitError(f"demo suite: its planted worlds are built in float64 (exact bounds); --dtype "
                           f"{config.dtype} applies to the model suites (standard, full, threats, frontier)")
    opts = check_options(config.option_dict, OPTION_DEFAULTS, "demo suite", positive=("steps",))
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ToolkitError(f"demo suite: device {config.device!r} requested but CUDA is not available")
    delay = float(opts["unit_delay_s"])
    units = tuple(
        DemoUnit(defense, setting, float(budget), config.seed, config.n, int(opts["steps"]))
        for setting in config.settings for defense in config.defenses for budget in sorted(config.budgets)
    )

    def evaluate(unit: DemoUnit) -> list[dict[str, Any]]:
        if delay:
            time.sleep(delay)
        with one_thread():
            return evaluate_demo_unit(unit, config.device)

    utility = {}
    with one_thread():
        worlds = {s: _world(s, config.seed, config.n, config.device) for s in config.settings}
        for setting, world in worlds.items():
            clean = world.cross_entropy("none")
            for defense in config.defenses:
                utility[(defense, setting)] = world.cross_entropy(defense) - clean
    notes = (
        "demo suite: planted linear behaviour (a logit margin) on a one-layer HookedTransformer built in code, "
        "without normalisation, so the logits are affine in the attacked residual; a ReLU SAE clamp attacked by "
        f"the default cascade of attacks.runner ({', '.join(STAGE_NAMES)}; {opts['steps']} steps per stage) "
        "under an encoder-orthogonal absolute L2 threat at the last position, where the first-order bound is exact.",
        "clamp_wide holds every latent whose encoder direction carries the readout (w lies in the encoder span), "
        "so no encoder-orthogonal delta can move the score: zero gradient there is real, and the certificate is 0.",
    )
    stages = [{"stage": s.name, **s.config.to_dict()} for s in default_stages(steps=int(opts["steps"]))]
    return SuitePlan(units, evaluate, utility, config, reference=REFERENCE, notes=notes, fingerprint={
        "subject": "demo-planted",
        "world": {s: w.fingerprint() for s, w in worlds.items()},
        "saes": {f"{s}/{SITE}": sha256_tensors(w.sae.state_dict()) for s, w in worlds.items()},
        # the delay changes no record; stage seeds are per unit (unit_seed), shown here at seed 0
        "attack": {**{k: v for k, v in sorted(opts.items()) if k != "unit_delay_s"}, "stages": stages},
    })
