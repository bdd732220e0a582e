"""Defenses: plain SAE feature clamping and residual-aware defenses, as TransformerLens hooks.

Modules: ``base`` (interface, composition), ``clamp`` (baseline), ``residual`` (clamp + error
transform), ``splice``, ``error_norm``, ``subspace``, ``ellipsoid``, ``closed_loop``,
``monitor``, ``direction`` (dense comparator), ``calibration`` (saved calibration folders,
benign activation collection), ``registry`` (config name -> classes, ``build_defense``),
``utility`` (CE / KL cost of every registered defense; the command line is ``python -m experiments.utility``).
"""
