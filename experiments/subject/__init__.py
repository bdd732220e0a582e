"""The subject under study: a TransformerLens model plus SAEs keyed by full hook name.

``load_subject()`` gives the embedded default (SmolLM2-135M-Instruct and the project's
own SAEs, fully offline). ``Subject.from_parts(model, saes)`` wraps any HookedTransformer
plus SAELens SAEs, for users who have a model hub.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from experiments.saes.shipped import load_shipped_saes
from experiments.subject.smollm2 import load_model
from guard.errors import ToolkitError, unknown_name

# Sites whose activation width is d_model: an SAE there must have d_in == d_model.
_RESIDUAL_WIDTH_SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def check_site(model, site: str, where: str = "subject") -> str:
    """Return ``site`` if the model has that hook, else raise listing the closest names."""
    if site not in model.hook_dict:
        raise unknown_name("hook name", site, model.hook_dict.keys(), where)
    return site


def check_sae_fits(model, site: str, sae) -> None:
    """An SAE at a residual-width site must read vectors of width d_model."""
    check_site(model, site)
    d_in = int(sae.cfg.d_in)
    if site.endswith(_RESIDUAL_WIDTH_SUFFIXES) and d_in != model.cfg.d_model:
        raise ToolkitError(
            f"SAE for site {site!r} reads vectors of width {d_in} (W_enc {tuple(sae.W_enc.shape)}), "
            f"but the site carries [batch, pos, {model.cfg.d_model}] activations."
        )


@dataclass
class Subject:
    """A model and its SAEs, keyed by full hook name (e.g. ``blocks.12.hook_resid_post``)."""

    model: object
    saes: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_parts(cls, model, saes: Mapping[str, object] | None = None) -> Subject:
        saes = dict(saes or {})
        for site, sae in saes.items():
            check_sae_fits(model, site, sae)
        model.eval()
        for sae in saes.values():
            sae.eval()
        return cls(model=model, saes=saes)

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def sites(self) -> list[str]:
        """SAE sites ordered by layer."""
        return sorted(self.saes, key=lambda s: list(self.model.hook_dict).index(s))

    def to_dtype(self, dtype: str) -> Subject:
        """This subject with model and SAEs in ``dtype`` (``float32``, ``bfloat16``, ``float16``): itself when
        it is already there, else a converted copy (a shared subject is never changed in place)."""
        target = getattr(torch, dtype)
        if all(p.dtype == target for p in self.model.parameters()) and all(
                p.dtype == target for sae in self.saes.values() for p in sae.parameters()):
            return self
        model = copy.deepcopy(self.model).to(target)
        model.cfg.dtype = target
        saes = {}
        for site, sae in self.saes.items():
            saes[site] = copy.deepcopy(sae).to(target)
            saes[site].cfg.dtype = dtype
        return Subject(model=model, saes=saes)

    def sae(self, site: str):
        if site not in self.saes:
            raise unknown_name("SAE site", site, self.saes.keys(), "subject")
        return self.saes[site]


def load_subject(
    device: str = "cpu",
    sae_dir: str | Path | None = None,
    with_saes: bool = True,
) -> Subject:
    """The embedded default subject: SmolLM2-135M-Instruct plus the shipped SAEs."""
    model = load_model(device)
    saes = {}
    if with_saes:
        saes = load_shipped_saes(sae_dir, device=device)
    return Subject.from_parts(model, saes)

