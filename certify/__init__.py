"""Adaptive evaluation of latent-space defenses: drivers, statistics, certificates, reports.

Light to import: submodules load torch, scipy, cvxpy or matplotlib only when used.

- ``certify.stats``: Clopper-Pearson ``Rate`` (explicit abstain at n = 0), exact McNemar, Holm.
- ``certify.records``: resumable append-only JSONL ``RecordStore``.
- ``certify.runner``: ``run_suite`` over work units (the attack cascade is ``attacks.runner``).
- ``certify.outcomes``: typed per-sample records (``SampleRecord``) built from cascade outcomes.
- ``certify.selftest``: attack unit tests per registered defense (planted / impossible cases).
- ``certify.provenance`` / ``certify.schema``: run fingerprints, versioned summary files.
- ``certify.bounds``: first-order convex certificates (SOCP, cvxpy).
- ``certify.summary`` / ``certify.checks``: summary rows, sanity flags.
- ``certify.plots`` / ``certify.report``: PNG plots, self-contained HTML.
- ``certify.suites`` / ``certify.cli``: suite registry, ``python -m certify run``.
"""
