"""The defended forward pass an attack differentiates, with nothing recomputed that delta cannot change.

Setup runs the un-attacked defended model once over the whole batch and keeps
(a) the residual entering the first perturbed site (before any hook there),
(b) the defended residual at every perturbed site (for relative budgets),
(c) the defense-input latents at every monitored defended site (drift baseline),
(d) the keys and values of every layer (a TransformerLens KV cache).
Each attack step then starts at the perturbed layer (``start_at_layer``) and feeds every row
only its own positions ``[p_r, length_r)``, where ``p_r`` is the row's first perturbed or
read-out position, with the cached keys/values of ``[0, p_r)``. Rows are left-aligned into
``[n, L]`` columns (``L`` the longest such span) and share a cache of the longest prefix;
an attention mask hides each row's cached positions from ``p_r`` on (they are recomputed)
and gives every column its true rotary position (TransformerLens caches keys un-rotated and
takes positions from the mask's running count). With the standard suite's last-token threat
a row costs one position instead of ``T - min_r p_r`` (3.9x fewer on IOI and recall).
Logits are computed only at the read-out positions.

Assumes the defense edits each position independently (true for clamps and the
residual-aware defenses in guard/); pass ``reuse_prefix=False`` for one that mixes
positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities import apply_softcap

from attacks.batch import AttackBatch
from attacks.perturbation import Perturbation, perturbation_hooks
from attacks.threat import BoundThreat
from guard.errors import ToolkitError
from guard.sae_ops import encode


@contextlib.contextmanager
def frozen_weights(*modules) -> Iterator[None]:
    """No parameter of ``modules`` requires grad inside (restored after): an attack differentiates
    its input only, so autograd records nothing for the weights."""
    params = [p for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


# Memory orders (dims listed outermost first) in which TransformerLens 3.9's per-call weight
# transforms (`W.T.contiguous()`, einops rearranges before F.linear) become free views. Those
# copies cost more than the matmuls for one-token steps (the 113 MB unembedding alone, every step).
_FAST_ORDERS = {
    "W_gate": (1, 0), "W_in": (1, 0), "W_out": (1, 0), "W_U": (1, 0),
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),
}


@contextlib.contextmanager
def fast_weight_layout(model) -> Iterator[None]:
    """Temporarily store weights in the memory order TransformerLens's kernels want.

    Values, shapes and results are unchanged (the same contiguous matrices reach F.linear, so
    outputs are bitwise identical); only the per-call weight copies disappear. Standard
    layout is restored on exit.
    """
    changed = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            order = _FAST_ORDERS.get(name.rsplit(".", 1)[-1])
            if order is None or param.ndim != len(order):
                continue
            inverse = [order.index(d) for d in range(len(order))]
            param.data = param.data.permute(*order).contiguous().permute(*inverse)
            changed.append(param)
    try:
        yield
    finally:
        with torch.no_grad():
            for param in changed:
                param.data = param.data.contiguous()


def start_layer(model, site: str) -> int:
    """The block index a forward starting at ``site`` resumes from."""
    parts = site.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ToolkitError(f"attack forward: cannot start at {site!r}; need blocks.<layer>.hook_resid_pre/post")
    layer = int(parts[1])
    return layer if parts[2] == "hook_resid_pre" else layer + 1


@dataclass
class StepOutput:
    """One attacked forward over rows ``rows``: logits at read-out positions, monitored latents.

    logits: [n, R, d_vocab]; latents: one [n, L, |S|] per monitored ``DefendedLatents``, column j
    of row r at absolute position ``positions[r, j]`` (long [n, L], clamped into the batch);
    computed: bool [n, L], the columns that are real positions of the row (the rest pad the row).
    """

    logits: torch.Tensor
    latents: list[torch.Tensor]
    positions: torch.Tensor
    computed: torch.Tensor

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [n, T, ...] (rows already selected) at this forward's columns: [n, L, ...]."""
        return take_positions(x, self.positions)


def take_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x`` [n, T, ...] gathered along dim 1 at ``positions`` [n, L]: [n, L, ...]."""
    index = positions.reshape(*positions.shape, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    return x.gather(1, index)


class DefendedForward:
    """Cached, batched forward of ``model`` under ``defense`` with per-row perturbations.

    Arguments:
        model: a TransformerLens HookedTransformer.
        bound: the threat model bound to the defense (sites, monitored latents).
        batch: the examples.
        readout: long [batch, R] absolute positions whose logits the objective reads.
        reuse_prefix: reuse cached keys/values before the first perturbed/read-out position.
    """

    def __init__(self, model, bound: BoundThreat, batch: AttackBatch, readout: torch.Tensor,
                 reuse_prefix: bool = True) -> None:
        self.model = model
        self.bound = bound
        self.defense = bound.defense
        self.batch = batch
        self.readout = readout
        self.start_site = bound.sites[0]
        self.start_layer = start_layer(model, self.start_site)
        self.masks = {site: bound.threat.positions.resolve(batch) for site in bound.sites}
        first = torch.stack([m.float().argmax(dim=1) for m in self.masks.values()]).amin(dim=0)
        self.first_perturbed = first  # long [batch]
        self.first_needed = torch.minimum(first, readout.amin(dim=1))
        if not reuse_prefix:
            self.first_needed = torch.zeros_like(first)
        self.end = torch.maximum(batch.lengths, readout.amax(dim=1) + 1)  # one past the last needed position
        # Monitored latents count only at positions delta can reach: [first perturbed, length).
        pos = torch.arange(batch.width, device=batch.tokens.device)[None]
        self.monitor_valid = (pos >= first[:, None]) & (pos < batch.lengths[:, None])
        self._cache_key: tuple | None = None
        self._cache: tuple[TransformerLensKeyValueCache, torch.Tensor] | None = None
        self._setup()

    # -- hooks -------------------------------------------------------------------------------
    def _monitor_hooks(self, store: list) -> list[tuple[str, Callable]]:
        hooks = []
        for i, latents in enumerate(self.bound.monitored):
            def fn(resid, hook, _i=i, _d=latents):
                store[_i] = encode(_d.sae, resid)[..., _d.features]
                return None

            hooks.append((latents.site, fn))
        return hooks

    def _hooks(self, perturbations: list[Perturbation], store: list) -> list[tuple[str, Callable]]:
        # Ordering contract: perturbation, then monitors (defense input), then the defense.
        return perturbation_hooks(perturbations) + self._monitor_hooks(store) + self.defense.fwd_hooks()

    # -- setup -------------------------------------------------------------------------------
    @torch.no_grad()
    def _setup(self) -> None:
        model, tokens = self.model, self.batch.tokens
        n, t = tokens.shape
        store: list = [None] * len(self.bound.monitored)
        captured: dict[str, torch.Tensor] = {}

        def capture_in(resid, hook):
            captured["start"] = resid.detach().clone()

        def capture_out(resid, hook):
            captured[hook.name] = resid.detach().clone()

        hooks = [(self.start_site, capture_in)] + self._hooks([], store)
        hooks += [(site, capture_out) for site in self.bound.sites]
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, n)
        mask = torch.ones_like(tokens)
        with model.hooks(fwd_hooks=hooks):
            model(tokens, return_type=None, past_kv_cache=cache, attention_mask=mask)
        self.start_resid = captured["start"]  # [batch, pos, d_model], before any hook at the start site
        self.resid_def = {site: captured[site] for site in self.bound.sites}  # defended residual per site
        self.latents0 = [z.detach() for z in store]  # [batch, pos, |S|] per monitored DefendedLatents
        self.keys = [e.past_keys for e in cache.entries]
        self.values = [e.past_values for e in cache.entries]

    def _prefix_cache(self, rows: torch.Tensor, starts: torch.Tensor, width: int):
        """The frozen cache of positions [0, max start) of ``rows`` and the attention mask over
        cache + ``width`` new columns (None, None when no row has a prefix to reuse)."""
        p = int(starts.max())
        if p == 0:
            return None, None
        key = (tuple(rows.tolist()), p, width)
        if key != self._cache_key:
            cached = torch.arange(p, device=rows.device)[None] < starts[:, None]
            mask = torch.cat([cached, torch.ones(len(rows), width, dtype=torch.bool, device=rows.device)], dim=1)
            self._cache = (frozen_cache(self.keys, self.values, rows, p), mask.int())
            self._cache_key = key
        return self._cache

    # -- step --------------------------------------------------------------------------------
    def columns(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Long [n, L] absolute positions a step computes for ``rows`` (row r from its first
        needed position, clamped into the batch) and bool [n, L]: which are real."""
        starts, ends = self.first_needed[rows], self.end[rows]
        width = int((ends - starts).max())
        positions = starts[:, None] + torch.arange(width, device=rows.device)[None]
        return positions.clamp_max(self.batch.width - 1), positions < ends[:, None]

    def run(self, rows: torch.Tensor, deltas: dict[str, torch.Tensor], monitor: bool = True) -> StepOutput:
        """Attacked defended forward for ``rows`` (long [n]) with ``deltas[site]`` [n, T, d_model].

        ``monitor=False`` skips encoding the monitored latents (``latents`` comes back empty):
        an attack whose constraint never reads drift during the search saves an SAE pass per site.
        """
        model = self.model
        positions, computed = self.columns(rows)
        for site, d in deltas.items():
            if d.shape[0] != len(rows):
                raise ToolkitError(f"attack forward: delta at {site!r} has {d.shape[0]} rows for {len(rows)} rows")
        perts = [Perturbation(site, take_positions(deltas[site], positions),
                              take_positions(self.masks[site][rows], positions) & computed)
                 for site in self.bound.sites]
        store: list = [None] * len(self.bound.monitored)
        hooks = self._hooks(perts, store) if monitor else perturbation_hooks(perts) + self.defense.fwd_hooks()
        resid = take_positions(self.start_resid[rows], positions)
        start_point = model.hook_dict[self.start_site]
        for site, fn in hooks:  # the start site's hooks, applied by hand in registration order
            if site == self.start_site:
                out = fn(resid, hook=start_point)
                resid = resid if out is None else out
        later = [(s, f) for s, f in hooks if s != self.start_site]
        cache, mask = self._prefix_cache(rows, self.first_needed[rows], positions.shape[1])
        with model.hooks(fwd_hooks=later):
            resid = model(resid, start_at_layer=self.start_layer, stop_at_layer=model.cfg.n_layers,
                          past_kv_cache=cache, attention_mask=mask)
        logits = _readout_logits(model, resid, self.readout[rows] - self.first_needed[rows][:, None])
        return StepOutput(logits, store if monitor else [], positions, computed)

    def baseline_latents(self, rows: torch.Tensor, out: StepOutput) -> list[torch.Tensor]:
        return [out.take(z[rows]) for z in self.latents0]

    def monitor_mask(self, rows: torch.Tensor, out: StepOutput) -> torch.Tensor:
        return out.take(self.monitor_valid[rows]) & out.computed


def frozen_cache(keys: list[torch.Tensor], values: list[torch.Tensor], rows: torch.Tensor,
                 length: int) -> TransformerLensKeyValueCache:
    """A read-only cache of positions [0, length) of batch rows ``rows``, from per-layer keys and
    values [batch, pos, ...]: a forward given it reads it and appends nothing."""
    entries = [TransformerLensKeyValueCacheEntry(k[rows, :length], v[rows, :length], frozen=True)
               for k, v in zip(keys, values, strict=True)]
    ones = torch.ones(len(rows), length, dtype=torch.int, device=rows.device)
    return TransformerLensKeyValueCache(entries, ones, frozen=True)


def full_forward(model, defense, batch: AttackBatch, perturbations: list[Perturbation], monitored=(),
                 readout: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """An ordinary forward from token 0 with perturbation and defense hooks: the independent check.

    Returns logits [batch, pos, d_vocab] (only at ``readout`` [batch, R] positions if given) and
    the defense-input latents at each monitored site.
    """
    store: list = [None] * len(monitored)
    hooks = perturbation_hooks(perturbations, 0)
    for i, latents in enumerate(monitored):
        def fn(resid, hook, _i=i, _d=latents):
            store[_i] = encode(_d.sae, resid)[..., _d.features]

        hooks.append((latents.site, fn))
    hooks += defense.fwd_hooks()
    with model.hooks(fwd_hooks=hooks):
        if readout is None:
            return model(batch.tokens), store
        resid = model(batch.tokens, stop_at_layer=model.cfg.n_layers)
    return _readout_logits(model, resid, readout), store


def _readout_logits(model, resid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits [n, R, d_vocab] at ``positions`` [n, R] (indices into resid's pos dim) of the final residual."""
    picked = take_positions(resid, positions)
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    # W_U directly: the Unembed module copies the whole [d_model, d_vocab] matrix on every call
    logits = picked @ model.unembed.W_U + model.unembed.b_U
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)
