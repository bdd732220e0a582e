"""A defense defined in this file, with its own calibration kind, and one registration: it then
appears in the standard suite, the utility table and the attack unit tests with no other edit."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from certify.config import SuiteConfig
from certify.selftest import tiny_world, verify_defense, world_calibration
from experiments.suites import build_plan, check_config
from experiments.utility import utility_report
from guard import CalibrationData, DefenseSpec, ResidualConfig, ResidualDefense, register_defense
from guard.calibration import Calibration, load_calibration
from guard.registry import DEFENSES
from guard.residual import benign_errors
from guard.utility import random_features
from tests.guard_cases import SITES
from tests.helpers import D_MODEL, tiny_model, tiny_sae, tiny_tokens
from tests.settings_cases import random_samples

NAME = "test_centre_error"


@dataclass(frozen=True)
class MeanErrorCalibration(Calibration):
    kind: ClassVar[str] = "test_mean_error"
    width_fields: ClassVar[tuple[str, ...]] = ("mean",)
    mean: dict[str, torch.Tensor]


@dataclass(frozen=True)
class CentreErrorConfig(ResidualConfig):
    """Pull the SAE error halfway towards its benign mean."""

    name = NAME
    calibration: str = ""


class CentreError(ResidualDefense):
    def __init__(self, config: CentreErrorConfig, saes, calibration: MeanErrorCalibration | None = None) -> None:
        super().__init__(config, saes)
        self.calibration = self.calibrated(calibration, MeanErrorCalibration)  # from the object or config's folder

    def transform_error(self, error: torch.Tensor, site: str, keep: torch.Tensor) -> torch.Tensor:
        mean = self.calibration.mean[site].to(error)
        return mean + 0.5 * (error - mean)


def _calibrate(data: CalibrationData) -> MeanErrorCalibration:
    errors = benign_errors(data.saes_here(), data.benign, defense=NAME)
    return MeanErrorCalibration(mean={site: e.mean(0).float() for site, e in errors.items()})


# no ``default``: the config class with the clamp's features and the saved calibration's folder
SPEC = DefenseSpec(CentreErrorConfig, CentreError, calibrate=_calibrate,
                   selftest=lambda features: CentreErrorConfig(features=features))


@pytest.fixture
def registered():
    with DEFENSES.scoped():
        register_defense(SPEC)
        yield
    assert NAME not in DEFENSES


def test_the_attack_unit_tests_verify_it(registered):
    result = verify_defense(NAME, steps=5)
    assert result.status == "verified", result.detail


def test_the_utility_table_calibrates_saves_and_measures_it(registered, model, tmp_path):
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    report = utility_report(model, saes, tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2),
                            list(tiny_tokens(6, 7, seed=3)), list(tiny_tokens(6, 5, seed=4)),
                            features=random_features(saes, n=4), calib_dir=tmp_path, names=["clamp", NAME])
    assert set(report) == {"clamp", NAME} and report[NAME]["kl"] > 0
    assert isinstance(load_calibration(tmp_path / NAME), MeanErrorCalibration)  # saved, read back by kind


def test_the_standard_suite_evaluates_it(registered):
    assert NAME in check_config(SuiteConfig(suite="standard"))[0].defenses  # in the default defense list
    model = tiny_model()
    saes = {site: tiny_sae("jumprelu", seed=50 + i) for i, site in enumerate(SITES)}
    pool = random_samples(model, n=14, seed=5)
    config = SuiteConfig(suite="standard", settings=("ioi",), defenses=("clamp", NAME), budgets=(0.0, 2.0), n=6,
                         options=(("attack_batch", 4), ("n_latents", 6), ("n_select", 8), ("site", SITES[0]),
                                  ("steps", 4)))
    plan = build_plan(config, model, saes, lambda setting, n_select, n: (pool[:n_select], pool[n_select:n_select + n]),
                      benign=(tiny_tokens(8, 12, seed=1), tiny_tokens(3, 12, seed=2)),
                      contrast=list(tiny_tokens(6, 5, seed=4)))
    assert [u.defense for u in plan.units] == ["clamp", NAME]
    assert (NAME, "ioi") in plan.utility and plan.verified[NAME] == "verified"
    records = plan.evaluate_unit(plan.units[1])
    assert len(records) == 6 * 2 and {r["defense"] for r in records} == {NAME}


def test_a_replaced_defense_is_calibrated_afresh_in_the_tiny_world(registered):
    world = tiny_world()
    first = world_calibration(world, NAME)
    zero = dataclasses.replace(SPEC, calibrate=lambda data: MeanErrorCalibration(
        mean={site: torch.zeros(D_MODEL) for site in data.sites}))
    register_defense(zero, replace=True)
    second = world_calibration(world, NAME)
    assert second is not first and all(float(m.abs().sum()) == 0 for m in second.mean.values())
    assert world_calibration(world, NAME) is second  # fitted once per registered spec
