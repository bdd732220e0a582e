"""Batched, KV-cached generation with our hooks active at every step.

Why not TransformerLens's ``generate``: it is several times slower than transformers on
this model and gives no clean way to keep a position-indexed perturbation aligned with
the tokens it generates. Here prompts are left-padded (TransformerLens derives rotary
positions from the attention mask, so padding does not shift them), the prompt is run
once into a :class:`TransformerLensKeyValueCache`, then one token per step. Examples
that hit a stop token are dropped from the batch (and from the cache), so short answers
cost nothing after they end.

Hook order at a site, every step: perturbations, then recorders, then the defense. So
the defense sees ``resid + delta`` (the ordering contract of ``guard.base``) and what is
recorded is the defense's input, the activation drift is measured on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.utilities.activation_functions import apply_softcap

from attacks.forward import fast_weight_layout
from attacks.perturbation import Perturbation, add_perturbation
from guard.errors import ToolkitError, unknown_name

StepCallback = Callable[[str, torch.Tensor, "StepPositions"], None]


@dataclass(frozen=True)
class Generation:
    """Prompts and their generated answers, in the absolute-position frame of each example.

    tokens: long [batch, pos], prompt then answer from column 0, right-padded with ``pad_token_id``.
    prompt_lengths, answer_lengths: per example; an answer keeps its stop token if it has one.
    stopped: whether the example ended on a stop token (else it hit ``max_new_tokens``).
    texts: the answers decoded without their stop token (None without a tokenizer).
    activations: site -> float [batch, pos, d_model], the defense's input at every position
        the model ran (all but the last answer token, which is never fed back);
        ``activation_mask`` [batch, pos] marks those positions.
    """

    tokens: torch.Tensor
    prompt_lengths: tuple[int, ...]
    answer_lengths: tuple[int, ...]
    stopped: tuple[bool, ...]
    texts: tuple[str, ...] | None
    pad_token_id: int
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    activation_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def answer_tokens(self, i: int, keep_stop: bool = False) -> list[int]:
        start = self.prompt_lengths[i]
        n = self.answer_lengths[i] - (1 if self.stopped[i] and not keep_stop else 0)
        return self.tokens[i, start : start + n].tolist()

    def answer_mask(self) -> torch.Tensor:
        """bool [batch, pos]: positions holding generated tokens (stop tokens included)."""
        pos = torch.arange(self.tokens.shape[1])
        start = torch.tensor(self.prompt_lengths)[:, None]
        end = start + torch.tensor(self.answer_lengths)[:, None]
        return (pos >= start) & (pos < end)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": [self.tokens[i, : n].tolist() for i, n in enumerate(self.prompt_lengths)],
            "answer_tokens": [self.answer_tokens(i, keep_stop=True) for i in range(len(self))],
            "prompt_lengths": list(self.prompt_lengths),
            "answer_lengths": list(self.answer_lengths),
            "stopped": list(self.stopped),
            "texts": list(self.texts) if self.texts is not None else None,
            "recorded_sites": sorted(self.activations),
        }


@dataclass(frozen=True)
class StepPositions:
    """What the current forward's [batch, pos] grid holds (passed to ``on_step``).

    rows: long [batch_now], index of each example among the prompts of this call's batch.
    positions: long [batch_now, pos_now], absolute token position of each column, -1 for padding.
    """

    rows: torch.Tensor
    positions: torch.Tensor


@dataclass
class _State:
    """Mutable loop state the hooks read each forward."""

    rows: torch.Tensor  # examples still generating
    pad: torch.Tensor  # left padding of every example
    offset: int  # padded column of the forward's first position
    width: int  # number of positions in the forward
    perturbations: dict[str, list[Perturbation]]  # in the padded frame, rows = current rows

    def where(self) -> StepPositions:
        cols = torch.arange(self.offset, self.offset + self.width, device=self.pad.device)
        positions = cols[None, :] - self.pad[self.rows][:, None]
        return StepPositions(self.rows, positions.masked_fill(positions < 0, -1))


def _to_padded_frame(p: Perturbation, pad: torch.Tensor) -> Perturbation:
    """Shift row b right by pad[b]: absolute position t becomes padded column pad[b] + t."""
    batch, n_pos, d_model = p.delta.shape
    width = int(pad.max()) + n_pos
    delta = p.delta.new_zeros((batch, width, d_model))
    mask = torch.zeros((batch, width), dtype=torch.bool, device=p.mask.device)
    for b, shift in enumerate(pad.tolist()):
        delta[b, shift : shift + n_pos] = p.delta[b]
        mask[b, shift : shift + n_pos] = p.mask[b]
    return Perturbation(p.site, delta, mask)


def default_stop_tokens(tokenizer, end_markers: Sequence[str] = ()) -> tuple[int, ...]:
    """The tokenizer's end-of-sequence token and the ids of ``end_markers`` (e.g. a chat
    format's end-of-turn token, which the caller that knows the format passes), where it has them."""
    if tokenizer is None:
        return ()
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for marker in end_markers:
        end = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(end, int) and end != tokenizer.unk_token_id:
            ids.add(end)
    return tuple(sorted(ids))


def _to_token_lists(model, prompts) -> list[list[int]]:
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if model.tokenizer is None:
                raise ToolkitError("generate: text prompts need a model with a tokenizer; pass token ids")
            ids = model.to_tokens(p, prepend_bos=model.cfg.default_prepend_bos)[0].tolist()
        else:
            ids = torch.as_tensor(p).reshape(-1).tolist()
        if not ids:
            raise ToolkitError(f"generate: prompt {i} is empty")
        out.append([int(t) for t in ids])
    return out


def _check_free(model, sites: Sequence[str]) -> None:
    for site in sites:
        if site not in model.hook_dict:
            raise unknown_name("hook name", site, model.hook_dict.keys(), "generate")
        if model.hook_dict[site].fwd_hooks:
            # A hook attached outside would run before our perturbation and break the ordering contract.
            raise ToolkitError(
                f"generate: {site!r} already has forward hooks attached; pass the defense as "
                "`defense=` instead of applying it around the call, so perturbations run first"
            )


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_k: int | None,
          gen: torch.Generator | None) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(-1).to(logits.device)


def _keep_rows(cache: TransformerLensKeyValueCache, keep: torch.Tensor) -> None:
    for entry in cache.entries:
        entry.past_keys = entry.past_keys[keep]
        entry.past_values = entry.past_values[keep]
    cache.previous_attention_mask = cache.previous_attention_mask[keep]


def _last_logits(model, resid: torch.Tensor) -> torch.Tensor:
    last = resid[:, -1:]
    if model.cfg.normalization_type is not None:
        last = model.ln_final(last)
    return apply_softcap(model.unembed(last), model.cfg.output_logits_soft_cap)[:, 0]


@torch.no_grad()
def _generate_batch(model, prompts: list[list[int]], perturbations: Sequence[Perturbation], defense,
                    record_sites: Sequence[str], on_step: StepCallback | None, max_new_tokens: int,
                    stop_ids: torch.Tensor, pad_id: int, do_sample: bool, temperature: float,
                    top_k: int | None, gen: torch.Generator | None, progress: bool,
                    fast_layout: bool) -> Generation:
    device = model.cfg.device
    batch = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    width = int(lengths.max())
    pad = width - lengths  # left padding per example
    padded = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        padded[i, width - len(p):] = torch.tensor(p, device=device)
    cols = torch.arange(width, device=device)
    attention = (cols[None, :] >= pad[:, None]).long()

    recorded: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {s: [] for s in record_sites}
    rows = torch.arange(batch, device=device)  # examples still generating
    frames: dict[str, list[Perturbation]] = {}
    for p in perturbations:
        frames.setdefault(p.site, []).append(_to_padded_frame(p, pad))
    state = _State(rows=rows, pad=pad, offset=0, width=width, perturbations=frames)

    def perturb_fn(resid: torch.Tensor, hook) -> torch.Tensor:
        for p in state.perturbations[hook.name]:
            resid = add_perturbation(resid, p, state.offset)
        return resid

    def record_fn(resid: torch.Tensor, hook) -> None:
        where = state.where()
        if hook.name in recorded:
            recorded[hook.name].append((where.rows, where.positions, resid.detach().clone()))
        if on_step is not None:
            on_step(hook.name, resid, where)

    hooks = [(site, perturb_fn) for site in frames] + [(s, record_fn) for s in record_sites]
    answers = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    answer_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch)
    n_layers = model.cfg.n_layers

    defense_ctx = defense.applied(model) if defense is not None else contextlib.nullcontext()
    layout_ctx = fast_weight_layout(model) if fast_layout else contextlib.nullcontext()
    with model.hooks(fwd_hooks=hooks), defense_ctx, layout_ctx:
        resid = model(padded, stop_at_layer=n_layers, past_kv_cache=cache, attention_mask=attention)
        state.offset, state.width = width - 1, 1  # ln_final / unembed hooks see the last column only
        logits = _last_logits(model, resid)
        bar = tqdm(total=max_new_tokens, disable=not progress, desc="generate", leave=False)
        for step in range(max_new_tokens):
            nxt = _pick(logits, do_sample, temperature, top_k, gen)
            answers[state.rows, step] = nxt
            answer_lengths[state.rows] += 1
            hit = torch.isin(nxt, stop_ids)
            stopped[state.rows] = hit
            bar.update(1)
            if step == max_new_tokens - 1 or bool(hit.all()):
                break
            if bool(hit.any()):
                keep = (~hit).nonzero().squeeze(-1)
                _keep_rows(cache, keep)
                nxt = nxt[keep]
                state.rows = state.rows[keep]
                state.perturbations = {s: [p.select(keep) for p in ps] for s, ps in frames.items()}
                frames = state.perturbations
            # The fed token sits at padded column width + step (absolute position prompt_length + step).
            state.offset, state.width = width + step, 1
            ones = torch.ones((len(state.rows), 1), dtype=torch.long, device=device)
            resid = model(nxt[:, None], stop_at_layer=n_layers, past_kv_cache=cache, attention_mask=ones)
            logits = _last_logits(model, resid)
        bar.close()

    total = int((lengths + answer_lengths).max())
    tokens = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        n = int(answer_lengths[i])
        tokens[i, : len(p)] = torch.tensor(p, device=device)
        tokens[i, len(p) : len(p) + n] = answers[i, :n]

    activations, act_mask = _assemble(recorded, batch, total, device)
    texts = None
    if model.tokenizer is not None:
        texts = tuple(
            model.tokenizer.decode(answers[i, : int(answer_lengths[i]) - int(stopped[i])].tolist())
            for i in range(batch)
        )
    return Generation(
        tokens=tokens.cpu(),
        prompt_lengths=tuple(len(p) for p in prompts),
        answer_lengths=tuple(int(n) for n in answer_lengths),
        stopped=tuple(bool(s) for s in stopped),
        texts=texts,
        pad_token_id=pad_id,
        activations=activations,
        activation_mask=act_mask,
    )


def _assemble(recorded, batch: int, total: int, device) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    out: dict[str, torch.Tensor] = {}
    mask = None
    for site, chunks in recorded.items():
        d_model = chunks[0][2].shape[-1]
        acts = torch.zeros((batch, total, d_model), dtype=chunks[0][2].dtype, device=device)
        seen = torch.zeros((batch, total), dtype=torch.bool, device=device)
        for rows, positions, resid in chunks:
            valid = positions >= 0
            r = rows[:, None].expand_as(positions)[valid]
            p = positions[valid]
            acts[r, p] = resid[valid]
            seen[r, p] = True
        out[site] = acts
        mask = seen
    return out, mask


def generate(
    model,
    prompts: Sequence[str] | Sequence[Sequence[int]] | Sequence[torch.Tensor],
    *,
    max_new_tokens: int = 64,
    defense=None,
    perturbations: Sequence[Perturbation] = (),
    record_sites: Sequence[str] = (),
    on_step: StepCallback | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    fast_layout: bool = True,
) -> Generation:
    """Greedy (or sampled) generation with a defense and perturbations applied at every position.

    Arguments:
        model: a TransformerLens ``HookedTransformer``.
        prompts: texts (tokenised with ``model.to_tokens``, no BOS unless the model's default)
            or token-id sequences; lengths may differ.
        defense: a ``guard.base.Defense`` applied for the whole call. Pass it here rather than
            wrapping the call in ``defense.applied``: its hooks must run after the perturbations.
        perturbations: ``Perturbation`` objects whose rows align with ``prompts``; the delta at
            absolute position t is added to the forward that processes token t, prompt or answer.
        record_sites: sites whose (perturbed, pre-defense) activations are returned in
            ``Generation.activations``.
        on_step: called as ``on_step(site, resid, where)`` at every forward, for each recorded
            site, with ``resid`` [batch_now, pos_now, d_model] and where it sits (rows, positions).
        stop_token_ids: default: the tokenizer's EOS (``default_stop_tokens``); per example, generation
            stops after the first stop token.
        batch_size: examples per forward (default: all). Chunks are formed by prompt length.
        progress: a progress bar, over generated tokens for one batch, over batches for several.
        fast_layout: run under :func:`fast_weight_layout` (same outputs, several times faster).

    Returns a :class:`Generation`.

    Example::

        g = generate(model, [chat_prompt(q) for q in qs], max_new_tokens=40, defense=clamp)
        print(g.texts[0])
    """
    if max_new_tokens < 1:
        raise ToolkitError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ToolkitError(f"generate: temperature must be > 0 when sampling, got {temperature}")
    token_lists = _to_token_lists(model, prompts)
    n = len(token_lists)
    if n == 0:
        raise ToolkitError("generate: no prompts")
    longest = max(len(t) for t in token_lists) + max_new_tokens
    if longest > model.cfg.n_ctx:
        raise ToolkitError(
            f"generate: prompt plus max_new_tokens reaches {longest} positions; the model has n_ctx {model.cfg.n_ctx}"
        )
    perturbations = [_expand(p, n) for p in perturbations]
    _check_free(model, [p.site for p in perturbations] + list(record_sites))

    tokenizer = model.tokenizer
    stops = tuple(stop_token_ids) if stop_token_ids is not None else default_stop_tokens(tokenizer)
    if pad_token_id is None:
        pad_token_id = (tokenizer.pad_token_id if tokenizer is not None else None)
        pad_token_id = pad_token_id if pad_token_id is not None else (stops[0] if stops else 0)
    device = model.cfg.device
    stop_ids = torch.tensor(stops, dtype=torch.long, device=device)
    gen = torch.Generator().manual_seed(seed) if (do_sample and seed is not None) else None

    size = batch_size or n
    order = sorted(range(n), key=lambda i: len(token_lists[i]))  # similar lengths, less padding
    parts = []
    # one batch: a bar over generated tokens; several: a bar over batches
    starts = tqdm(range(0, n, size), disable=not progress or size >= n, desc="generate (batches)", leave=False)
    for start in starts:
        idx = order[start : start + size] if size < n else list(range(n))
        chunk_perts = [p.select(torch.tensor(idx, device=p.delta.device)) for p in perturbations]
        parts.append((idx, _generate_batch(
            model, [token_lists[i] for i in idx], chunk_perts, defense, record_sites, on_step,
            max_new_tokens, stop_ids, pad_token_id, do_sample, temperature, top_k, gen,
            progress and size >= n, fast_layout,
        )))
    return parts[0][1] if len(parts) == 1 else _merge(parts, n)


def _expand(p: Perturbation, n: int) -> Perturbation:
    """One row shared by all prompts is broadcast; otherwise rows must match prompts."""
    rows = p.delta.shape[0]
    if rows == n:
        return p
    if rows == 1:
        return Perturbation(p.site, p.delta.expand(n, -1, -1), p.mask.expand(n, -1))
    raise ToolkitError(f"generate: perturbation at {p.site!r} has {rows} rows for {n} prompts")


def _merge(parts: list[tuple[list[int], Generation]], n: int) -> Generation:
    """Put chunked generations back in the callers' order, padding to a common width."""
    total = max(g.tokens.shape[1] for _, g in parts)
    first = parts[0][1]
    tokens = torch.full((n, total), first.pad_token_id, dtype=torch.long)
    prompt_lengths, answer_lengths, stopped = [0] * n, [0] * n, [False] * n
    texts: list[str] | None = [""] * n if first.texts is not None else None
    acts = {
        s: torch.zeros((n, total, a.shape[-1]), dtype=a.dtype, device=a.device) for s, a in first.activations.items()
    }
    act_mask = torch.zeros((n, total), dtype=torch.bool) if first.activation_mask is not None else None
    for idx, g in parts:
        w = g.tokens.shape[1]
        for j, i in enumerate(idx):
            tokens[i, :w] = g.tokens[j]
            prompt_lengths[i], answer_lengths[i], stopped[i] = g.prompt_lengths[j], g.answer_lengths[j], g.stopped[j]
            if texts is not None:
                texts[i] = g.texts[j]
            for s, a in g.activations.items():
                acts[s][i, :w] = a[j]
            if act_mask is not None:
                act_mask[i, :w] = g.activation_mask[j].cpu()
    return Generation(
        tokens=tokens,
        prompt_lengths=tuple(prompt_lengths),
        answer_lengths=tuple(answer_lengths),
        stopped=tuple(stopped),
        texts=tuple(texts) if texts is not None else None,
        pad_token_id=first.pad_token_id,
        activations=acts,
        activation_mask=act_mask,
    )
