"""Adaptive evaluation of latent-space defenses: drivers, statistics, certificates, reports.

Light to import: submodules load torch, scipy, cvxpy or matplotlib only when used.

- ``certify.stats``: Clopper-Pearson ``Rate`` (explicit abstain at n = 0), exact McNemar.
- ``certify.records``: resumable append-only JSONL ``RecordStore``.
- ``certify.runner``: ``run_suite`` over work units, ``cascade`` over attacks.
- ``certify.bounds``: first-order convex certificates (SOCP, cvxpy).
- ``certify.summary`` / ``certify.checks``: summary rows, sanity flags.
- ``certify.plots`` / ``certify.report``: PNG plots, self-contained HTML.
- ``certify.suites`` / ``certify.cli``: suite registry, ``python -m certify run``.
"""
