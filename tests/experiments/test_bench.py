"""The benchmarks' own logic (their timings are printed by the benchmarks, never asserted in tests)."""

from __future__ import annotations

from attacks.batch import AttackBatch
from experiments.bench.scaling import table, with_prefix


def test_a_prompt_after_a_prefix_has_the_asked_length_and_ends_with_the_prompt():
    batch = AttackBatch.from_lists([[7, 8, 9], [5, 6]], pad_id=0)
    longer = with_prefix(batch, list(range(100, 200)), 8, pad_id=0)
    assert longer.lengths.tolist() == [8, 8]
    assert longer.tokens[0].tolist() == [100, 101, 102, 103, 104, 7, 8, 9]
    assert longer.tokens[1].tolist() == [100, 101, 102, 103, 104, 105, 5, 6]
    assert with_prefix(batch, [1, 2], 2, pad_id=0).tokens[0].tolist() == [7, 8, 9]  # never cut the prompt


def test_the_scaling_table_shows_a_size_without_valid_samples_as_such():
    rows = [{"length": 64, "latents": 64, "sites": 1, "n": 4, "recovered": 3, "step_cpu_s": 0.37,
             "per_recovered_cpu_s": 0.9},
            {"length": 1024, "latents": 64, "sites": 1, "n": 0, "step_cpu_s": None, "per_recovered_cpu_s": None}]
    lines = table(rows).splitlines()
    assert lines[2] == "| 64 | 64 | 1 | 4 | 3 | 0.37 | 0.9 |"
    assert lines[3] == "| 1024 | 64 | 1 | 0 | - | - | - |"
