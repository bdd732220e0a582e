"""Settings: a behaviour to suppress, its samples and score, and the plain clamp defending it.

``get_setting("ioi" | "recall" | "unlearning", **config)`` gives a :class:`Setting`; see base.py for the
shared score (a margin at the final position) and validity.py for the valid-sample filter.
"""

from __future__ import annotations

from experiments.settings.base import Setting, SettingConfig
from experiments.settings.batch import Batch, batches, collate, final_logits
from experiments.settings.ioi import IOIConfig, IOISample, IOISetting, ioi_prompts
from experiments.settings.recall import RecallConfig, RecallSample, RecallSetting, recall_samples
from experiments.settings.registry import (
    SETTINGS,
    config_from_dict,
    get_setting,
    register_setting,
    setting_from_config,
)
from experiments.settings.sample import Sample, behaviour_score, present
from experiments.settings.selection import SelectionResult, latent_attribution, select_latents
from experiments.settings.unlearning import UnlearningConfig, UnlearningSetting
from experiments.settings.validity import ValidityResult, evaluate_validity, score_samples, validity

__all__ = [
    "SETTINGS", "Batch", "IOIConfig", "IOISample", "IOISetting", "RecallConfig", "RecallSample",
    "RecallSetting", "Sample", "SelectionResult", "Setting", "SettingConfig", "ValidityResult",
    "batches", "behaviour_score", "collate", "config_from_dict", "evaluate_validity", "final_logits",
    "get_setting", "ioi_prompts", "latent_attribution", "present", "recall_samples", "register_setting",
    "score_samples", "select_latents", "setting_from_config", "UnlearningConfig", "UnlearningSetting", "validity",
]
