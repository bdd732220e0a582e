"""Utility measurement (CE increase, KL to the undefended model) on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from experiments.utility import _parser, builtin_text, utility_report
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from guard.registry import DEFENSES
from guard.splice import ReconstructionSplice, SpliceConfig
from guard.utility import chunk_tokens, measure_utility, random_features
from tests.guard_cases import FEATURES, SITES
from tests.helpers import tiny_sae, tiny_tokens


@pytest.fixture(scope="module")
def saes():
    return {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}


def test_identity_costs_nothing_and_a_splice_costs_something(model, saes):
    tokens = tiny_tokens(batch=3, pos=10, seed=7)
    same = measure_utility(model, FeatureClamp(ClampConfig(features=FEATURES, mode="multiply", value=1.0), saes), tokens)
    assert abs(same.delta_ce) < 1e-5 and abs(same.kl) < 1e-6
    assert same.n_tokens == 3 * 9 and same.ce_base > 0
    splice = measure_utility(model, ReconstructionSplice(SpliceConfig(features=FEATURES), saes), tokens, batch_size=2)
    assert splice.kl > 1e-4
    assert math.isclose(splice.delta_ce, splice.ce_defended - splice.ce_base, abs_tol=1e-9)
    assert json.loads(json.dumps(splice.to_dict()))["name"] == "splice"
    with pytest.raises(ToolkitError, match="pos >= 2"):
        measure_utility(model, FeatureClamp(ClampConfig(features=FEATURES), saes), tokens[:, :1])


def test_utility_report_covers_every_registered_defense(model, saes, tmp_path):
    calib_tokens = tiny_tokens(batch=8, pos=12, seed=1)
    eval_tokens = tiny_tokens(batch=3, pos=12, seed=2)
    behaviour = list(tiny_tokens(batch=6, pos=7, seed=3))
    contrast = list(tiny_tokens(batch=6, pos=5, seed=4))
    features = random_features(saes, n=4, seed=0)
    assert random_features(saes, n=4, seed=0) == features and all(len(v) == 4 for v in features.values())
    report = utility_report(model, saes, calib_tokens, eval_tokens, behaviour, contrast, features=features,
                            calib_dir=tmp_path)
    assert set(report) == set(DEFENSES)
    for name, entry in report.items():
        assert math.isfinite(entry["delta_ce"]) and entry["kl"] >= -1e-9, name
    monitor = report["error_monitor"]
    assert monitor["fpr_n"] == 3 and 0 <= monitor["fpr"] <= 1
    assert abs(monitor["delta_ce"] - report["clamp"]["delta_ce"]) < 1e-6  # the monitor forwards the clamp only
    # one saved calibration per defense that calibrates, named after it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        name for name, spec in DEFENSES.items() if spec.calibrate is not None)
    json.dumps(report)


def test_text_helpers_and_command_line():
    text = builtin_text()
    assert "<|im_start|>assistant" in text and "lighthouse" in text
    chunks = chunk_tokens(torch.arange(25), 6)
    assert chunks.shape == (4, 6) and chunks[1, 0] == 6
    with pytest.raises(ToolkitError, match="at least 2 chunks"):
        chunk_tokens(torch.arange(7), 6)
    args = _parser().parse_args(["--seq-len", "64", "--defenses", "clamp,splice"])
    assert args.seq_len == 64 and args.defenses == "clamp,splice"
