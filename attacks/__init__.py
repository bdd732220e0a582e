"""Adaptive post-intervention recovery attacks against latent-space defenses.

What a user's file imports::

    from attacks import AttackBatch, LogitDifference, ThreatModel, default_stages, run_cascade

    threat = ThreatModel.make("blocks.6.hook_resid_post", positions="last", budget=0.05, relative=True,
                              constraint="encoder")
    outcome = run_cascade(model, defense, threat, objective, batch, default_stages(steps=20))
    outcome.result.success, outcome.stage

Layering: knows defenses only through ``guard.base.Defense`` (hooks, ``edit``,
``defended_latents``). ``attacks.runner`` is the one attack runner every pipeline calls
(``run_cascade``, ``attack_samples``: batching, budget 0, the cascade, re-verification);
each stage is an ``attacks.engine.RecoveryAttack`` on ``attacks.forward.DefendedForward``.
The threat ladder (``attacks.ladder``) adds the embedding threat (``attacks.suffix``: a
suffix of free input embeddings) and the token threat (``attacks.tokens``: GCG, replayed from
text) to the residual one. Also ``attacks.budget.minimal_budget``,
``attacks.replay.attribution_replay`` and generation (``attacks.generate``). ``python -m
experiments.bench.recovery`` compares the engine with a reference-style loop.
"""

from attacks.batch import AttackBatch
from attacks.budget import minimal_budget
from attacks.engine import AttackConfig, AttackResult, GradientRecovery, RecoveryAttack
from attacks.ladder import THREATS, SuffixOptions, build_rung
from attacks.objectives import ChoiceObjective, Continuation, LogitDifference, Objective
from attacks.perturbation import Perturbation
from attacks.registry import ATTACKS, register_attack
from attacks.runner import CascadeOutcome, Stage, attack_samples, default_stages, run_cascade, single_stage
from attacks.suffix import SuffixSlot
from attacks.threat import ThreatModel
from attacks.tokens import TokenConfig, TokenSearch, replay_tokens, token_stages

__all__ = [
    "ATTACKS", "THREATS", "AttackBatch", "AttackConfig", "AttackResult", "CascadeOutcome", "ChoiceObjective",
    "Continuation", "GradientRecovery", "LogitDifference", "Objective", "Perturbation", "RecoveryAttack", "Stage",
    "SuffixOptions", "SuffixSlot", "ThreatModel", "TokenConfig", "TokenSearch", "attack_samples", "build_rung",
    "default_stages", "minimal_budget", "register_attack", "replay_tokens", "run_cascade", "single_stage",
    "token_stages",
]
