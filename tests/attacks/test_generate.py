"""Generation loop: batched == unbatched == uncached greedy, with a defense and a perturbation."""

from __future__ import annotations

import pytest
import torch

from attacks.generate import generate
from attacks.perturbation import Perturbation, perturbation_hooks
from guard.clamp import ClampConfig, FeatureClamp
from guard.errors import ToolkitError
from tests.helpers import D_MODEL, tiny_model, tiny_sae

SITE = "blocks.0.hook_resid_post"
PROMPTS = [[3, 7, 1, 9, 4], [5, 2], [8, 8, 1, 6, 2, 0, 11, 12], [13]]
NEW = 10


@pytest.fixture(scope="module")
def model64():
    # float64 so that batch-shape rounding cannot flip a greedy argmax
    return tiny_model(dtype=torch.float64)


@pytest.fixture(scope="module")
def clamp64():
    sae = tiny_sae("jumprelu", dtype=torch.float64, seed=1)
    return FeatureClamp(ClampConfig(features={SITE: (0, 3, 5)}, mode="multiply", value=4.0), {SITE: sae})


def _perturbation(batch: int, pos: int, seed: int = 0) -> Perturbation:
    gen = torch.Generator().manual_seed(seed)
    delta = torch.randn(batch, pos, D_MODEL, generator=gen, dtype=torch.float64) * 2.0
    mask = torch.rand(batch, pos, generator=gen) > 0.3
    return Perturbation(SITE, delta, mask)


def _uncached_greedy(model, prompt, n_new, defense, pert_row):
    """Reference: full forward from position 0 each step, perturbation indexed by absolute position."""
    tokens = torch.tensor(prompt)[None]
    for _ in range(n_new):
        hooks = perturbation_hooks([pert_row]) if pert_row is not None else []
        with model.hooks(fwd_hooks=hooks), defense.applied(model), torch.no_grad():
            logits = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens[0, len(prompt):].tolist()


def test_cached_batched_generation_equals_uncached_reference(model64, clamp64):
    pert = _perturbation(len(PROMPTS), 8 + NEW)
    g = generate(model64, PROMPTS, max_new_tokens=NEW, defense=clamp64, perturbations=[pert])
    plain = generate(model64, PROMPTS, max_new_tokens=NEW, defense=clamp64)
    assert g.answer_lengths == (NEW,) * len(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        ref = _uncached_greedy(model64, prompt, NEW, clamp64, pert.select([i]))
        assert g.answer_tokens(i) == ref
        assert g.tokens[i, : len(prompt)].tolist() == prompt
    # the perturbation changed something, so the equality above is not vacuous
    assert any(g.answer_tokens(i) != plain.answer_tokens(i) for i in range(len(PROMPTS)))


def test_batched_equals_one_at_a_time_and_chunked(model64, clamp64):
    pert = _perturbation(len(PROMPTS), 6, seed=3)  # shorter than the sequences: tail gets no delta
    full = generate(model64, PROMPTS, max_new_tokens=NEW, defense=clamp64, perturbations=[pert])
    chunked = generate(model64, PROMPTS, max_new_tokens=NEW, defense=clamp64, perturbations=[pert], batch_size=3)
    assert torch.equal(full.tokens, chunked.tokens)
    for i, prompt in enumerate(PROMPTS):
        single = generate(model64, [prompt], max_new_tokens=NEW, defense=clamp64, perturbations=[pert.select([i])])
        assert single.answer_tokens(0) == full.answer_tokens(i)


def test_float32_batched_matches_unbatched():
    model = tiny_model()
    batched = generate(model, PROMPTS, max_new_tokens=NEW)
    for i, prompt in enumerate(PROMPTS):
        assert generate(model, [prompt], max_new_tokens=NEW).answer_tokens(0) == batched.answer_tokens(i)


def test_recorded_activations_are_the_defense_input_on_the_generated_trajectory(model64, clamp64):
    pert = _perturbation(len(PROMPTS), 8 + NEW, seed=5)
    seen_input = {}

    def spy(resid, hook):  # runs after the perturbation, before the defense
        seen_input["x"] = resid.detach().clone()

    g = generate(model64, PROMPTS, max_new_tokens=NEW, defense=clamp64, perturbations=[pert], record_sites=[SITE])
    acts, mask = g.activations[SITE], g.activation_mask
    for i in range(len(PROMPTS)):
        tokens = g.tokens[i : i + 1, : g.prompt_lengths[i] + g.answer_lengths[i]]
        hooks = perturbation_hooks([pert.select([i])]) + [(SITE, spy)]
        with model64.hooks(fwd_hooks=hooks), clamp64.applied(model64), torch.no_grad():
            model64(tokens)
        n_run = tokens.shape[1] - 1  # the last answer token is never fed back
        assert mask[i, :n_run].all() and not mask[i, n_run:].any()
        torch.testing.assert_close(acts[i, :n_run], seen_input["x"][0, :n_run], rtol=1e-9, atol=1e-9)


def test_stop_tokens_end_each_example_separately(model64):
    free = generate(model64, PROMPTS, max_new_tokens=NEW)
    stop = free.answer_tokens(0)[2]  # third greedy token of example 0
    g = generate(model64, PROMPTS, max_new_tokens=NEW, stop_token_ids=[stop])
    for i in range(len(PROMPTS)):
        ans = free.answer_tokens(i)
        if stop in ans:
            k = ans.index(stop)
            assert g.stopped[i] and g.answer_lengths[i] == k + 1
            assert g.answer_tokens(i) == ans[:k]
            assert g.answer_tokens(i, keep_stop=True) == ans[: k + 1]
        else:
            assert not g.stopped[i] and g.answer_tokens(i) == ans
    assert g.stopped[0]
    assert g.answer_mask().sum(1).tolist() == list(g.answer_lengths)


def test_on_step_sees_every_position_once(model64):
    seen = []
    g = generate(model64, PROMPTS, max_new_tokens=4, record_sites=[SITE],
                 on_step=lambda site, resid, where: seen.append((where.rows, where.positions)))
    count = torch.zeros_like(g.tokens)
    for rows, positions in seen:
        for r, ps in zip(rows.tolist(), positions.tolist(), strict=True):
            for p in ps:
                if p >= 0:
                    count[r, p] += 1
    assert torch.equal(count.bool(), g.activation_mask) and count.max() == 1


def test_hooks_removed_and_outside_hooks_refused(model64, clamp64):
    pert = _perturbation(len(PROMPTS), 4)
    generate(model64, PROMPTS, max_new_tokens=2, defense=clamp64, perturbations=[pert], record_sites=[SITE])
    assert all(not hp.fwd_hooks for hp in model64.hook_dict.values())
    with clamp64.applied(model64):
        with pytest.raises(ToolkitError, match="already has forward hooks"):
            generate(model64, PROMPTS, max_new_tokens=2, perturbations=[pert])
    assert all(not hp.fwd_hooks for hp in model64.hook_dict.values())


def test_bad_inputs_raise(model64):
    with pytest.raises(ToolkitError, match="n_ctx"):
        generate(model64, PROMPTS, max_new_tokens=40)
    with pytest.raises(ToolkitError, match="rows"):
        generate(model64, PROMPTS, max_new_tokens=2, perturbations=[_perturbation(2, 4)])
    with pytest.raises(ToolkitError, match="unknown hook name"):
        generate(model64, PROMPTS, max_new_tokens=2, record_sites=["blocks.0.hook_resid_pots"])
    with pytest.raises(ToolkitError, match="empty"):
        generate(model64, [[]], max_new_tokens=2)


def test_sampling_is_seeded(model64):
    a = generate(model64, PROMPTS, max_new_tokens=6, do_sample=True, seed=7, temperature=1.5)
    b = generate(model64, PROMPTS, max_new_tokens=6, do_sample=True, seed=7, temperature=1.5)
    assert torch.equal(a.tokens, b.tokens)


def test_fast_weight_layout_changes_nothing_but_memory_order(model64):
    from attacks.generate import fast_weight_layout

    tokens = torch.tensor(PROMPTS[2])[None]
    with torch.no_grad():
        ref = model64(tokens)
        with fast_weight_layout(model64):
            assert not model64.blocks[0].mlp.W_gate.is_contiguous()  # the layout did change
            fast = model64(tokens)
    assert torch.equal(ref, fast)
    assert all(p.is_contiguous() for p in model64.parameters())


def test_progress_bar_over_tokens_for_one_batch_and_over_batches_for_several(model64, capsys):
    generate(model64, PROMPTS, max_new_tokens=3, stop_token_ids=(), progress=True)
    one = capsys.readouterr().err
    generate(model64, PROMPTS, max_new_tokens=3, stop_token_ids=(), progress=True, batch_size=2)
    several = capsys.readouterr().err
    generate(model64, PROMPTS, max_new_tokens=3, stop_token_ids=(), batch_size=2)
    assert "generate:" in one and "generate (batches)" in several and capsys.readouterr().err == ""
