"""The suites this package adds to ``certify`` (entry-point group ``latentguard.suites`` in
pyproject.toml). Light on purpose: listing suites imports this module, not the suites'
code, which is named as ``"module:attribute"`` and imported only when a suite runs."""

from __future__ import annotations

from certify.suites import Suite

STANDARD = Suite("standard", "experiments.suites:build_standard", "IOI, recall and unlearning on the subject, all defenses",
                 option_defaults="experiments.suites:OPTION_DEFAULTS")
# the standard suite at n = 200 per setting: >= 100 valid samples per IOI and recall cell (for a GPU or a
# long CPU run); unlearning has 36 forget samples after its selection split and evaluates those
FULL = Suite("full", "experiments.suites:build_standard",
             "the standard suite at n = 200 per setting (unlearning: its 36)",
             defaults={"n": 200}, option_defaults="experiments.suites:OPTION_DEFAULTS")
# the threat ladder (attacks.ladder) on three defenses: plain clamp, a splice and the error monitor
THREATS = Suite("threats", "experiments.suites:build_standard",
                "the threat ladder (residual, embedding, tokens) on IOI + recall: clamp, splice, error monitor",
                defaults={"threats": ("residual", "embedding", "tokens"), "settings": ("ioi", "recall"),
                          "defenses": ("clamp", "splice", "error_monitor")},
                option_defaults="experiments.suites:OPTION_DEFAULTS")
# every defense family swept over its strength knob (certify frontier); quick: the reduced sweep in minutes
FRONTIER = Suite("frontier", "experiments.frontier:build_frontier",
                 "each defense family swept over its strength: utility, bypass and minimal recovering budgets",
                 option_defaults="experiments.frontier:OPTION_DEFAULTS",
                 quick={"n": 8, "budgets": (0.0, 0.02, 0.05, 0.2), "options": {"steps": 5, "rounds": 1, "quick": True}})
