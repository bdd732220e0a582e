"""Attack unit tests for defenses: a planted recovery must be found, an impossible one never claimed.

Why: an adaptive evaluation that reports "0 recovered" proves nothing if the attack could
not have found a recovery that exists (Zimmermann, Brendel, Tramer, Carlini, "Increasing
Confidence in Adversarial Robustness Evaluations", NeurIPS 2022: 11 of 13 published
evaluations failed such unit tests). So before a defense's bypass rate is trusted, the
attack cascade (``attacks.runner``) is run against it in two tiny worlds built in code:

- planted: a recovering delta provably lies in the threat set. Random feasible deltas are
  drawn with the engine's own projection (``attacks.engine.random_feasible``), each is
  scored by an ordinary forward under the defense (a detector's flag disqualifies it), and
  per row the best one ``d*`` fixes the objective: the token pair whose logit difference
  ``d*`` raises most, with the success threshold halfway between the defended score and the
  score at ``d*``. ``d*`` itself recovers, so the cascade must report every row recovered.
  Against a randomized defense every score is the median over the judge's draws
  (``Defense.draws``), so ``d*`` recovers in their majority, which is how the cascade is judged.
- impossible: causality. A causal model's logits at position p cannot depend on a later
  position, so perturbing the last token while reading out the one before can recover
  nothing; the threshold is one a delta AT the read-out position provably reaches (planted
  as above), so only the position differs. For the plain clamp also the analytic in-span
  case of ``tests/attacks/test_engine.py``: the objective direction lies in the span of the
  clamped encoder columns, so no encoder-orthogonal delta changes its sign. Nothing may be
  claimed: no success, and no claim the engine's independent check had to refuse.

(Defenses leave attention-sink tokens alone by a median over the call's tokens; in these
worlds no token is near the sink ratio, so every defense acts per position.)

``verify_defense(name)`` runs both against the registered defense at its spec's ``selftest``
config on the tiny world; a defense without one is "unverified".

Example::

    result = verify_defense("splice")
    result.status, result.detail          # 'verified', 'planted 4/4 found; ...'
    verify_defenses(["clamp", "my_defense"])["my_defense"].status   # 'unverified'
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from attacks.batch import AttackBatch
from attacks.engine import RunContext, random_feasible
from attacks.forward import DefendedForward, full_forward
from attacks.objectives import LogitDifference
from attacks.perturbation import Perturbation
from attacks.runner import CascadeOutcome, Stage, default_stages, run_cascade
from attacks.threat import ThreatModel
from guard.base import Defense
from guard.clamp import ClampConfig, FeatureClamp
from guard.closed_loop import ClosedLoopCalibration, ClosedLoopClamp
from guard.errors import ToolkitError
from guard.registry import DEFENSES, build_defense
from guard.spec import CalibrationData, DefenseSpec

D_MODEL = 16
D_SAE = 32
D_VOCAB = 50
SITES = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
FEATURES = {SITES[0]: (1, 4, 7), SITES[1]: (0, 5)}

Status = Literal["verified", "failed", "unverified"]

BUDGET = 0.5  # relative L2 budget of the planted and impossible threats
MIN_GAP = 0.05  # a planted score gain below this (logits) is too close to float noise to test
N_CANDIDATES = 16  # random feasible deltas drawn per row to plant a recovery
LENGTHS = (8, 7, 8, 6)  # the tiny world's rows (right-padded; lengths differ on purpose)


# -- the tiny world --------------------------------------------------------------------------
def tiny_model(n_layers: int = 2, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random 2-layer ``HookedTransformer`` with the hook layout of the real subject (RMS norm,
    rotary, gated SiLU MLP), built in code: the self-test never downloads anything."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with _rng_preserved():  # the config seeds torch, numpy and random: keep the caller's streams
        torch.manual_seed(seed)
        cfg = HookedTransformerConfig(
            n_layers=n_layers, d_model=D_MODEL, d_head=4, n_heads=4, d_mlp=32, d_vocab=D_VOCAB, n_ctx=32,
            act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True,
            default_prepend_bos=False, seed=seed, dtype=dtype, device="cpu",
        )
        return HookedTransformer(cfg).eval()


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def tiny_sae(seed: int = 0, d_in: int = D_MODEL, d_sae: int = D_SAE, dtype: torch.dtype = torch.float32):
    """A tiny SAELens JumpReLU SAE with every parameter (biases, thresholds) random and non-trivial."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, dtype=str(dtype).removeprefix("torch.")))
    return randomise_sae(sae, seed, dtype)


def randomise_sae(sae, seed: int, dtype: torch.dtype = torch.float32):
    """Give every parameter of ``sae`` (biases, thresholds too) a non-trivial random value; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            values = torch.randn(param.shape, generator=gen) * 0.3
            if name == "threshold":
                values = values.abs() * 0.2
            param.copy_(values)
    return sae.to(dtype).eval()


def benign_data(n: int = 64, seed: int = 0, sites: Sequence[str] = SITES, d: int = D_MODEL,
                scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random 'benign' activations {site: [n, d]}: anisotropic Gaussian, so PCA has structure."""
    gen = torch.Generator().manual_seed(seed)
    spread = torch.linspace(2.0, 0.1, d)
    return {s: (torch.randn(n, d, generator=gen) * spread + 0.5) * scale for s in sites}


def calibration_data(saes: Mapping[str, Any], seed: int = 0) -> CalibrationData:
    """Random calibration data (n > d, so PCA is full rank); no model: these cases stay model-free."""
    return CalibrationData(model=None, saes=saes, sites=tuple(saes), benign=benign_data(seed=seed),
                           behaviour=benign_data(16, seed + 1),
                           contrast={s: x - 1.0 for s, x in benign_data(16, seed + 2).items()},
                           behaviour_prompts=(), features=FEATURES,
                           options={"error_ellipsoid": {"rank": 4, "coverage": 0.9}})  # rank < d: a complement


def calibrate(spec: DefenseSpec, data: CalibrationData) -> Any:
    """``spec``'s calibration on ``data``; the closed-loop echo is hand-made (it would need a model run)."""
    if spec.calibrate is None:
        return None
    if issubclass(spec.defense, ClosedLoopClamp):
        return ClosedLoopCalibration(features={SITES[1]: torch.tensor([9, 11])},
                                     scores={SITES[1]: torch.tensor([0.5, 0.2])},
                                     source={SITES[0]: list(FEATURES[SITES[0]])})
    return spec.calibrate(data)


def calibrations(saes: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """Each registered defense's calibration from its spec, by defense name."""
    data = calibration_data(saes, seed)
    return {name: calibrate(spec, data) for name, spec in DEFENSES.items() if spec.calibrate is not None}


def working_configs() -> dict[str, Any]:
    """Each registered defense with a self-test config, at that config (one that edits in this world)."""
    return {name: spec.selftest(FEATURES) for name, spec in DEFENSES.items() if spec.selftest is not None}


@dataclass(frozen=True)
class TinyWorld:
    """The self-test's model, ``saes`` {site: SAE} and ``calibrations`` {defense name: Calibration}
    (``fitted_by``: the spec's calibrate function each was fitted with)."""

    model: Any
    saes: dict[str, Any]
    calibrations: dict[str, Any]
    fitted_by: dict[str, Any]


@functools.lru_cache(maxsize=4)
def tiny_world(seed: int = 0) -> TinyWorld:
    """The self-test world, built once per process and seed (the ellipsoid fit costs most)."""
    model = tiny_model(seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    saes = {site: tiny_sae(seed=seed + i + 1) for i, site in enumerate(SITES)}
    for sae in saes.values():
        for p in sae.parameters():
            p.requires_grad_(False)
    calibs = calibrations(saes, seed)
    return TinyWorld(model, saes, calibs, {name: DEFENSES[name].calibrate for name in calibs})


def world_calibration(world: TinyWorld, name: str) -> Any:
    """The tiny world's calibration of the defense registered as ``name`` now (None for one without);
    fitted when the world was built, or here for a defense registered (or replaced) since."""
    spec = DEFENSES[name]
    fitted = world.calibrations.get(name)
    if spec.calibrate is not None and (fitted is None or world.fitted_by.get(name) is not spec.calibrate):
        world.calibrations[name] = fitted = calibrate(spec, calibration_data(world.saes))
        world.fitted_by[name] = spec.calibrate
    return fitted if spec.calibrate is not None else None


def tiny_batch(seed: int = 0, lengths: Sequence[int] = LENGTHS) -> AttackBatch:
    """Random prompts of the given lengths, right-padded (so padding is exercised too)."""
    gen = torch.Generator().manual_seed(seed + 100)
    return AttackBatch.from_lists([torch.randint(0, D_VOCAB, (n,), generator=gen).tolist() for n in lengths])


# -- objectives and planting -------------------------------------------------------------------
class LogitDifferenceAt(LogitDifference):
    """``LogitDifference`` read ``back`` tokens before the last real token (scalar or per row
    [batch]; 0: the last one), so a threat on later positions is causally cut off from it."""

    name = "logit_diff_at"

    def __init__(self, target: torch.Tensor, other: torch.Tensor, threshold: float | torch.Tensor = 0.0,
                 back: int | torch.Tensor = 0) -> None:
        super().__init__(target, other, threshold)
        self.back = torch.as_tensor(back, dtype=torch.long).expand(len(self.target)).clone()
        if (self.back < 0).any():
            raise ToolkitError(f"objective {self.name!r}: back must be >= 0, got {self.back.tolist()}")

    def readout(self, batch: AttackBatch) -> torch.Tensor:
        pos = batch.last() - self.back.to(batch.tokens.device)
        if (pos < 0).any():
            raise ToolkitError(f"objective {self.name!r}: rows {(pos < 0).nonzero().flatten().tolist()} are "
                               "shorter than back + 1 tokens")
        return pos[:, None]


@dataclass(frozen=True)
class Plant:
    """A planted objective: per row ``target``/``other`` tokens, the defended score ``s0`` and the
    score ``best`` that a known feasible, unflagged delta reaches; ``threshold`` lies halfway."""

    target: torch.Tensor
    other: torch.Tensor
    s0: torch.Tensor
    best: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        return self.best - self.s0

    @property
    def threshold(self) -> torch.Tensor:
        return self.s0 + self.gap / 2


def threat_for(defense: Defense, site: str = SITES[0], positions: str | Sequence[int] = "last",
               budget: float = BUDGET) -> ThreatModel:
    """The standard threat (encoder-orthogonal, relative L2) where the defense pins latents at
    ``site``; unconstrained where it pins none (e.g. a direction ablation)."""
    pinned = any(d.site == site for d in defense.defended_latents())
    return ThreatModel.make(site, positions=positions, budget=budget, relative=True,
                            constraint="encoder" if pinned else "none")


def _repeat(batch: AttackBatch, k: int) -> AttackBatch:
    return AttackBatch(batch.tokens.repeat(k, 1), batch.lengths.repeat(k))


def _concat(a: AttackBatch, b: AttackBatch) -> AttackBatch:
    width = max(a.width, b.width)
    pad = [torch.nn.functional.pad(x.tokens, (0, width - x.width)) for x in (a, b)]
    return AttackBatch(torch.cat(pad), torch.cat([a.lengths, b.lengths]))


@torch.no_grad()
def plant(model, defense: Defense, threat: ThreatModel, batch: AttackBatch, back: int = 0,
          n_candidates: int = N_CANDIDATES, seed: int = 0) -> Plant:
    """Fix per row an objective that a known delta inside ``threat`` satisfies (module docstring).

    All ``n_candidates`` random feasible deltas per row (half at the full budget, half at a
    random fraction) run in one batched forward under the defense; a candidate the detector
    flags, or a row flagged undisturbed, does not count (such a row gets gap -inf).
    """
    n = batch.size
    many = _repeat(batch, n_candidates + 1)  # copy 0: delta = 0, the defended state
    readout = LogitDifferenceAt(torch.zeros(many.size), torch.zeros(many.size), back=back).readout(many)
    bound = threat.bind(defense, model)
    fwd = DefendedForward(model, bound, many, readout)
    radius = {s: bound.radius(s, fwd.resid_def[s], fwd.masks[s]) for s in bound.sites}
    gen = torch.Generator(device=many.tokens.device).manual_seed(seed)
    ctx = RunContext(fwd, bound, radius, fwd.masks, gen, set(), torch.full((many.size,), math.nan))
    rows = torch.arange(many.size, device=many.tokens.device)
    full = random_feasible(ctx, rows, full=True)
    part = random_feasible(ctx, rows, full=False)
    use_full = (rows // n) % 2 == 1
    perts = []
    for s in bound.sites:
        delta = torch.where(use_full[:, None, None], full[s], part[s])
        delta[:n] = 0
        perts.append(Perturbation(s, delta, fwd.masks[s]))
    drawn = []  # per judged draw of a randomized defense (one for a deterministic one): logits [K+1, n, V]
    flagged = torch.zeros(many.size, dtype=torch.bool)
    for i in range(defense.draws):
        defense.draw(i)
        defense.reset()
        logits, _ = full_forward(model, defense, many, perts, readout=readout)
        flags = defense.flags()
        defense.reset()
        if flags is not None:
            flagged |= flags.bool().cpu()
        drawn.append(logits[:, 0].reshape(n_candidates + 1, n, -1).cpu())
    logits = torch.stack(drawn)  # [D, K+1, n, V]
    flagged = flagged.reshape(n_candidates + 1, n)
    gain = (logits[:, 1:] - logits[:, :1]).mean(0)  # [K, n, V]: the mean gain picks candidate and pair
    spread = gain.amax(dim=-1) - gain.amin(dim=-1)  # the best token pair's score gain [K, n]
    spread = spread.masked_fill(flagged[1:] | flagged[:1], -math.inf)
    k = spread.argmax(dim=0)
    idx = torch.arange(n)
    picked = gain[k, idx]
    target, other = picked.argmax(dim=-1), picked.argmin(dim=-1)

    def score(at: torch.Tensor) -> torch.Tensor:  # [D, n, V] -> [n]: the median over draws (their majority)
        return (at.gather(2, target[None, :, None].expand(len(at), n, 1))
                - at.gather(2, other[None, :, None].expand(len(at), n, 1)))[..., 0].median(0).values

    s0, best = score(logits[:, 0]), score(logits[:, 1:][:, k, idx])
    return Plant(target, other, s0, torch.where(torch.isfinite(spread[k, idx]), best, s0 - math.inf))


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SelfTestResult:
    """Outcome of one defense's attack unit tests.

    ``planted_found``: the cascade recovered every planted row. ``impossible_claimed``: it
    claimed a recovery (confirmed, or refused by the independent check) where none can exist.
    ``passed``: found and nothing claimed. ``status``: "verified" (passed), "failed", or
    "unverified" (no builder, or no recovery could be planted against this defense).
    """

    name: str
    planted_found: bool
    impossible_claimed: bool
    passed: bool
    status: Status
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny tensors: thread start-up costs more than it saves, and suites may run side by side."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class SelfTestCase:
    """One cascade run of a self-test: its ``outcome`` and which of its rows are ``planted``
    (a recovery provably exists) and ``impossible`` (none can exist), as bool [batch]."""

    name: str
    outcome: CascadeOutcome
    planted: torch.Tensor
    impossible: torch.Tensor

    def found(self) -> int:
        return int(self.outcome.result.success[self.planted].sum())

    def claimed(self) -> int:
        """Impossible rows recovered, or claimed and refused by the independent check."""
        res = self.outcome.result
        return int((res.success | res.claimed)[self.impossible].sum())

    def refused(self, rows: torch.Tensor) -> int:
        res = self.outcome.result
        return int((res.claimed & ~res.success)[rows].sum())


def _rows(n: int, start: int, stop: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[start:stop] = True
    return mask


def _causal_case(world: TinyWorld, defense: Defense, stages: Sequence[Stage], seed: int) -> tuple[SelfTestCase, str]:
    """Planted and causally impossible rows in one cascade (they share the threat: the last token).

    Planted rows read out at the last token; impossible rows read out the token before, at a
    threshold a delta at that token provably reaches (or just above the defended score where
    none was found: still out of reach from a later token).
    """
    model, batch = world.model, tiny_batch(seed)
    threat = threat_for(defense, SITES[0], "last")
    planted = plant(model, defense, threat, batch, back=0, seed=seed)
    reach = plant(model, defense, threat_for(defense, SITES[0], [-2]), batch, back=1, seed=seed + 1)
    keep = (planted.gap > MIN_GAP).nonzero().flatten()
    n_p, n = int(keep.numel()), batch.size
    far = torch.where(reach.gap > MIN_GAP, reach.threshold, reach.s0 + MIN_GAP / 2)
    objective = LogitDifferenceAt(torch.cat([planted.target[keep], reach.target]),
                                  torch.cat([planted.other[keep], reach.other]),
                                  threshold=torch.cat([planted.threshold[keep], far]),
                                  back=torch.cat([torch.zeros(n_p, dtype=torch.long), torch.ones(n, dtype=torch.long)]))
    both = _concat(batch.select(keep), batch) if n_p else batch
    outcome = run_cascade(model, defense, threat, objective, both, stages)
    case = SelfTestCase("causal", outcome, _rows(both.size, 0, n_p), _rows(both.size, n_p, n_p + n))
    impossible = (f"causal: {int(outcome.result.success[case.impossible].sum())}/{n} recovered, "
                  f"{case.refused(case.impossible)} refused claims")
    if n_p == 0:
        return case, (f"planted: no feasible unflagged delta raises any row's score by {MIN_GAP} "
                      f"(best {float(planted.gap.max()):.3g}); {impossible}")
    by = sorted({s for s, p in zip(outcome.stage, case.planted.tolist(), strict=True) if p and s is not None})
    text = (f"planted {case.found()}/{n_p} found (gap >= {float(planted.gap[keep].min()):.3g}; "
            f"by {','.join(by) or 'none'}; {case.refused(case.planted)} refused claims)")
    if n_p < n:
        text += f" ({n - n_p} of {n} rows could not be planted)"
    return case, f"{text}; {impossible}"


LAST_SITE = SITES[-1]
IN_SPAN = (0, 1, 2, 3)  # clamped latents; the first one's encoder column is the objective direction


def clamp_in_span_world(seed: int = 0):
    """The analytic impossible case for a plain clamp (as in ``tests/attacks/test_engine.py``).

    At the last residual site with the unembedding bias zeroed, ``logit[a] - logit[b] =
    v . h / rms(h)`` with ``v = w_ln * (W_U[:, a] - W_U[:, b])``; a clamp there keeps the error,
    so an encoder-orthogonal delta moves h by exactly delta. With v a clamped encoder column,
    no such delta changes the sign. Returns (model, defense, threat, objective, batch).
    """
    a, b = 3, 7
    model = tiny_model(seed=seed)  # a fresh copy: its unembedding bias is edited
    sae = tiny_sae(seed=seed + 1)
    with torch.no_grad():
        model.unembed.b_U.zero_()
        v = model.ln_final.w * (model.unembed.W_U[:, a] - model.unembed.W_U[:, b])
        sae.W_enc[:, IN_SPAN[0]] = v
    defense = FeatureClamp(ClampConfig(features={LAST_SITE: IN_SPAN}), {LAST_SITE: sae})
    batch = tiny_batch(seed)
    store = {}
    hooks = defense.fwd_hooks() + [(LAST_SITE, lambda r, hook: store.__setitem__("h", r.detach()))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(batch.tokens)
    m = store["h"][torch.arange(batch.size), batch.last()] @ v
    target = torch.where(m < 0, a, b)  # the defended model prefers the other token everywhere
    other = torch.where(m < 0, b, a)
    threat = ThreatModel.make(LAST_SITE, budget=2.0, relative=True, constraint="encoder")
    return model, defense, threat, LogitDifference(target, other), batch


def _in_span_case(stages: Sequence[Stage], seed: int) -> tuple[SelfTestCase, str]:
    model, defense, threat, objective, batch = clamp_in_span_world(seed)
    outcome = run_cascade(model, defense, threat, objective, batch, stages)
    n = batch.size
    case = SelfTestCase("in_span", outcome, _rows(n, 0, 0), _rows(n, 0, n))
    return case, (f"in-span: {int(outcome.result.success.sum())}/{n} recovered, "
                  f"{case.refused(case.impossible)} refused claims")


def _analytic(name: str) -> bool:
    """The in-span case applies to the registered plain clamp only (its edit keeps the error)."""
    return DEFENSES[name].defense is FeatureClamp


# -- entry points ------------------------------------------------------------------------------
def run_selftest(name: str, steps: int = 20, stages: Sequence[Stage] | None = None,
                 seed: int = 0) -> tuple[SelfTestResult, tuple[SelfTestCase, ...]]:
    """``verify_defense`` with the cascade runs it judged (none for an unverified defense)."""
    spec = DEFENSES[DEFENSES.check(name, "self-test")]
    if spec.selftest is None:
        return SelfTestResult(name, False, False, False, "unverified",
                              f"defense {name!r} has no self-test config; give its DefenseSpec a selftest"), ()
    stages = default_stages(steps=steps, seed=seed) if stages is None else tuple(stages)
    start = time.perf_counter()
    with one_thread():
        world = tiny_world()
        try:
            defense = build_defense(spec.selftest(FEATURES), dict(world.saes), world_calibration(world, name))
        except ToolkitError as exc:
            raise ToolkitError(f"self-test of {name!r}: building it on the tiny world failed: {exc}") from exc
        cases, texts = zip(*[_causal_case(world, defense, stages, seed),
                             *([_in_span_case(stages, seed)] if _analytic(name) else [])], strict=True)
    planted = int(cases[0].planted.sum())
    found = planted > 0 and cases[0].found() == planted
    claimed = any(c.claimed() > 0 for c in cases)
    detail = "; ".join(texts) + f" ({time.perf_counter() - start:.2f} s)"
    if planted == 0:  # nothing to find: the cascade's power against this defense is unknown
        status: Status = "failed" if claimed else "unverified"
    else:
        status = "verified" if found and not claimed else "failed"
    return SelfTestResult(name, found, claimed, status == "verified", status, detail), tuple(cases)


def verify_defense(name: str, steps: int = 20, stages: Sequence[Stage] | None = None,
                   seed: int = 0) -> SelfTestResult:
    """Run the attack unit tests against defense ``name`` (see the module docstring).

    ``steps`` scales ``attacks.runner.default_stages``; ``stages`` replaces the cascade (e.g. to
    show that a broken attack fails the test); ``seed`` varies the prompts and candidates.
    """
    return run_selftest(name, steps, stages, seed)[0]


def verify_defenses(names: Iterable[str] | None = None, steps: int = 20) -> dict[str, SelfTestResult]:
    """``verify_defense`` for each of ``names`` (default: every registered defense), by name."""
    names = list(DEFENSES) if names is None else list(names)
    return {name: verify_defense(name, steps=steps) for name in names}
