"""Adaptive post-intervention recovery attacks against latent-space defenses.

Layering: knows defenses only through ``guard.base.Defense`` (hooks, ``edit``,
``defended_latents``). Main entry points: ``attacks.threat.ThreatModel``,
``attacks.engine.GradientRecovery``, ``attacks.objectives``, ``attacks.baselines``,
``attacks.budget.minimal_budget``, ``attacks.replay.attribution_replay``; the shared
perturbation representation is ``attacks.perturbation.Perturbation``.
``python -m experiments.bench.recovery`` compares the engine with a reference-style loop.
"""
