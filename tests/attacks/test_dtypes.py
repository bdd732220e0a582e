"""The attack on a bfloat16 or float16 model and SAE: the same rates as in float32 on the analytic case
(deltas and scores are kept in float32, ``attacks.engine.work_dtype``)."""

from __future__ import annotations

import pytest
import torch

from attacks.engine import AttackConfig, GradientRecovery, work_dtype
from attacks.threat import ThreatModel
from tests.attacks.test_engine import LAST, linear_case


def _recovered(v_in_span: bool, dtype: torch.dtype) -> tuple[int, int]:
    model, defense, batch, objective, required = linear_case(v_in_span=v_in_span)
    model.to(dtype)
    for sae in defense.saes.values():
        sae.to(dtype)
    budget = float(required.max()) * (20 if v_in_span else 1.5)
    threat = ThreatModel.make(LAST, budget=budget, relative=False, constraint="encoder")
    result = GradientRecovery(model, defense, threat, objective, AttackConfig(steps=40, step_size=0.2)).run(batch)
    return int(result.recovered), batch.size


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_rates_equal_float32(dtype):
    assert _recovered(False, dtype) == _recovered(False, torch.float32) == (6, 6)  # feasible: all found
    assert _recovered(True, dtype) == _recovered(True, torch.float32) == (0, 6)  # impossible: none claimed


def test_work_dtype_is_at_least_float32():
    assert work_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32
    assert work_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64
