"""The defended forward pass an attack differentiates, with nothing recomputed that delta cannot change.

Setup runs the un-attacked defended model once over the whole batch and keeps
(a) the residual entering the first perturbed site (before any hook there),
(b) the defended residual at every perturbed site (for relative budgets),
(c) the defense-input latents at every monitored defended site (drift baseline),
(d) the keys and values of every layer (a TransformerLens KV cache).
Each attack step then starts at the perturbed layer (``start_at_layer``) and, for rows
whose perturbed and read-out positions all lie at or after position ``p0``, feeds only
positions ``[p0, T)`` with the cached keys/values of ``[0, p0)`` (TransformerLens combines
``start_at_layer`` with ``past_kv_cache``; right padding needs no attention mask). Logits
are computed only at the read-out positions.

Assumes the defense edits each position independently (true for clamps and the
residual-aware defenses in guard/); pass ``reuse_prefix=False`` for one that mixes
positions.
"""

from __future__ import annotations

from collections.abc import Callable
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

    logits: [n, R, d_vocab]; latents: one [n, L, |S|] per monitored ``DefendedLatents``
    (positions ``[offset, offset + L)``); offset: absolute position of the first computed position.
    """

    logits: torch.Tensor
    latents: list[torch.Tensor]
    offset: int


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
        # Monitored latents count only at positions delta can reach: [first perturbed, length).
        pos = torch.arange(batch.width, device=batch.tokens.device)[None]
        self.monitor_valid = (pos >= first[:, None]) & (pos < batch.lengths[:, None])
        self._cache_key: tuple | None = None
        self._cache: TransformerLensKeyValueCache | None = None
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

    def _hooks(self, perturbations: list[Perturbation], offset: int, store: list) -> list[tuple[str, Callable]]:
        # Ordering contract: perturbation, then monitors (defense input), then the defense.
        return perturbation_hooks(perturbations, offset) + self._monitor_hooks(store) + self.defense.fwd_hooks()

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

        hooks = [(self.start_site, capture_in)] + self._hooks([], 0, store)
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

    def _prefix_cache(self, rows: torch.Tensor, p0: int) -> TransformerLensKeyValueCache | None:
        if p0 == 0:
            return None
        key = (tuple(rows.tolist()), p0)
        if key != self._cache_key:
            self._cache = frozen_cache(self.keys, self.values, rows, p0)
            self._cache_key = key
        return self._cache

    # -- step --------------------------------------------------------------------------------
    def run(self, rows: torch.Tensor, deltas: dict[str, torch.Tensor], monitor: bool = True) -> StepOutput:
        """Attacked defended forward for ``rows`` (long [n]) with ``deltas[site]`` [n, T, d_model].

        ``monitor=False`` skips encoding the monitored latents (``latents`` comes back empty):
        an attack whose constraint never reads drift during the search saves an SAE pass per site.
        """
        model = self.model
        p0 = int(self.first_needed[rows].min())
        perts = [Perturbation(site, deltas[site], self.masks[site][rows]) for site in self.bound.sites]
        store: list = [None] * len(self.bound.monitored)
        hooks = self._hooks(perts, p0, store) if monitor else perturbation_hooks(perts, p0) + self.defense.fwd_hooks()
        resid = self.start_resid[rows, p0:]
        start_point = model.hook_dict[self.start_site]
        for site, fn in hooks:  # the start site's hooks, applied by hand in registration order
            if site == self.start_site:
                out = fn(resid, hook=start_point)
                resid = resid if out is None else out
        later = [(s, f) for s, f in hooks if s != self.start_site]
        with model.hooks(fwd_hooks=later):
            resid = model(resid, start_at_layer=self.start_layer, stop_at_layer=model.cfg.n_layers,
                          past_kv_cache=self._prefix_cache(rows, p0))
        logits = _readout_logits(model, resid, (self.readout[rows] - p0).clamp_min(0))
        return StepOutput(logits, store if monitor else [], p0)

    def baseline_latents(self, rows: torch.Tensor, offset: int) -> list[torch.Tensor]:
        return [z[rows, offset:] for z in self.latents0]

    def monitor_mask(self, rows: torch.Tensor, offset: int) -> torch.Tensor:
        return self.monitor_valid[rows, offset:]


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
    picked = resid.gather(1, positions[..., None].expand(-1, -1, resid.shape[-1]))
    if model.cfg.normalization_type is not None:
        picked = model.ln_final(picked)
    # W_U directly: the Unembed module copies the whole [d_model, d_vocab] matrix on every call
    logits = picked @ model.unembed.W_U + model.unembed.b_U
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)
