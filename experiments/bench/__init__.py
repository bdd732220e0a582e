"""Side-by-side benchmarks on the embedded subject: ``python -m experiments.bench.recovery``
(our engine against a reference-style loop) and ``python -m experiments.bench.suffix`` (the soft
suffix with and without the cached prompt prefix)."""
