"""Adaptive evaluation of latent-space defenses: drivers, statistics, certificates, reports.

What a user's file imports::

    from certify import SuiteConfig, run, verify_defense

    verify_defense("my_defense").status                  # attack unit tests: 'verified'?
    result = run(SuiteConfig(suite="standard", defenses=("clamp", "my_defense"), out="out/mine"))

Modules:

- ``certify.stats``: Clopper-Pearson ``Rate`` (explicit abstain at n = 0), exact McNemar, Holm.
- ``certify.records``: resumable append-only JSONL ``RecordStore``.
- ``certify.runner``: ``run_suite`` over work units (the attack cascade is ``attacks.runner``).
- ``certify.outcomes``: typed per-sample records (``SampleRecord``) built from cascade outcomes.
- ``certify.selftest``: attack unit tests per registered defense (planted / impossible cases).
- ``certify.provenance`` / ``certify.schema``: run fingerprints, versioned summary files.
- ``certify.bounds``: first-order convex certificates (SOCP, cvxpy, imported when used).
- ``certify.summary`` / ``certify.checks``: summary rows, sanity flags.
- ``certify.plots`` / ``certify.report``: PNG plots, self-contained HTML.
- ``certify.suites`` / ``certify.cli``: suite registry (``register_suite``, entry-point group
  ``latentguard.suites``), ``python -m certify run``.
"""

from certify.cli import rerender, run
from certify.config import SuiteConfig
from certify.outcomes import SampleRecord
from certify.selftest import verify_defense, verify_defenses
from certify.stats import Rate
from certify.suites import Suite, SuitePlan, register_suite

# (no ``suites`` here: the name is the submodule ``certify.suites``)
__all__ = ["Rate", "SampleRecord", "Suite", "SuiteConfig", "SuitePlan", "register_suite", "rerender", "run",
           "verify_defense", "verify_defenses"]
