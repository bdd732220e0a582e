"""Calibration results as explicit data: a frozen dataclass per kind, saved as one folder.

A calibrated defense never fits anything behind the caller's back. ``calibrate_<x>(...)``
returns a ``Calibration``; ``save(folder)`` writes ``calibration.safetensors`` (per-site
tensors, keys ``"<field>/<site>"``) and ``calibration.json`` (kind, scalars, sites);
``load_calibration(folder)`` reads any kind back. A defense config names the folder in its
``calibration`` field, or the defense is built from the loaded object directly.

Benign activations for calibration come from ``collect_resid``, which leaves out position
0 and attention-sink tokens (residual norm ~100x the rest on the subject).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from guard.errors import ToolkitError, unknown_name
from guard.named import Registry
from guard.sae_ops import sink_mask

TENSORS_FILE = "calibration.safetensors"
META_FILE = "calibration.json"
FORMAT_VERSION = 1

CALIBRATIONS: Registry[type[Calibration]] = Registry("calibration kind")


@dataclass(frozen=True)
class Calibration:
    """Base of calibration results. Fields typed ``dict[str, Tensor]`` (site -> tensor) go to
    safetensors; every other field must be JSON-serialisable and goes to the JSON file."""

    kind: ClassVar[str] = "calibration"
    # per-site tensor fields whose first dimension is the activation width d_model
    width_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CALIBRATIONS.add(cls.kind, cls)

    def _tensor_fields(self) -> list[str]:
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), dict)
                and all(isinstance(v, torch.Tensor) for v in getattr(self, f.name).values())]

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites this calibration covers (keys of its first per-site field)."""
        names = self._tensor_fields()
        return tuple(getattr(self, names[0])) if names else ()

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensor_fields = self._tensor_fields()
        tensors = {f"{name}/{site}": value.detach().cpu().contiguous()
                   for name in tensor_fields for site, value in getattr(self, name).items()}
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in tensor_fields}
        save_file(tensors, str(folder / TENSORS_FILE))
        header = {"kind": self.kind, "version": FORMAT_VERSION, "tensor_fields": tensor_fields, "meta": meta}
        (folder / META_FILE).write_text(json.dumps(header, indent=1, sort_keys=True))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Calibration:
        calib = load_calibration(folder)
        if cls is not Calibration and not isinstance(calib, cls):
            raise ToolkitError(f"calibration folder {str(folder)!r} holds kind {calib.kind!r}, expected {cls.kind!r}")
        return calib


def load_calibration(folder: str | Path) -> Calibration:
    """Read a calibration folder written by ``Calibration.save`` (any kind)."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / TENSORS_FILE).is_file():
        raise ToolkitError(f"no calibration in {str(folder)!r} (expected {META_FILE} and {TENSORS_FILE})")
    header = json.loads((folder / META_FILE).read_text())
    kind = header.get("kind")
    if kind not in CALIBRATIONS:  # kinds register when their defense module is imported (``import guard``)
        raise unknown_name("calibration kind", str(kind), CALIBRATIONS, f"calibration folder {str(folder)!r}")
    raw = load_file(str(folder / TENSORS_FILE))
    values: dict[str, Any] = dict(header["meta"])
    for name in header["tensor_fields"]:
        prefix = f"{name}/"
        values[name] = {key[len(prefix):]: t for key, t in raw.items() if key.startswith(prefix)}
    return CALIBRATIONS[kind](**values)


def resolve(calibration: Calibration | None, folder: str, expected: type[Calibration], defense: str) -> Calibration:
    """The calibration object passed in, else the one saved in ``folder``; checks its kind."""
    if calibration is None:
        if not folder:
            raise ToolkitError(f"defense {defense!r} needs a calibration: pass calibration=... or set "
                               f"config.calibration to a folder written by {expected.__name__}.save")
        calibration = load_calibration(folder)
    if not isinstance(calibration, expected):
        raise ToolkitError(f"defense {defense!r} needs a {expected.__name__}, got {type(calibration).__name__}")
    return calibration


def check_site_data(data: Mapping[str, torch.Tensor], width: int | Mapping[str, int], *, defense: str,
                    what: str = "calibration data", min_rows: int = 1) -> dict[str, torch.Tensor]:
    """Validate per-site activation matrices [n, d]: width, finiteness, enough rows; return float64 copies."""
    out = {}
    for site, x in data.items():
        d = width[site] if isinstance(width, Mapping) else width
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[-1] != d:
            raise ToolkitError(f"defense {defense!r} at {site!r}: {what} has shape {tuple(x.shape)}, "
                               f"expected [n, {d}]")
        if x.shape[0] < min_rows:
            raise ToolkitError(f"defense {defense!r} at {site!r}: {what} has {x.shape[0]} rows, needs >= {min_rows}")
        if not torch.isfinite(x).all():
            raise ToolkitError(f"defense {defense!r} at {site!r}: {what} contains NaN or inf")
        out[site] = x.detach().to(torch.float64)
    return out


def check_covers(calibration: Calibration, sites: Iterable[str], widths: Mapping[str, int], *, defense: str) -> None:
    """Every site the defense acts on must be calibrated, at the width of the activations there."""
    for site in sites:
        if site not in calibration.sites:
            raise unknown_name("calibrated site", site, calibration.sites, f"defense {defense!r}")
        for name in calibration.width_fields:
            per_site = getattr(calibration, name)
            if site in per_site and per_site[site].shape[0] != widths[site]:
                raise ToolkitError(f"defense {defense!r} at {site!r}: calibration field {name!r} has width "
                                   f"{per_site[site].shape[0]} but the activations there have width {widths[site]}")


@torch.no_grad()
def collect_resid(model, tokens: Iterable[torch.Tensor] | torch.Tensor, sites: Iterable[str], *,
                  sink_ratio: float | None = 8.0, batch_size: int = 8, progress: bool = False) -> dict[str, torch.Tensor]:
    """Residual activations at ``sites`` as {site: [n_tokens, d_model]} (float32, CPU).

    Leaves out position 0 of every sequence and any token whose norm exceeds ``sink_ratio`` x
    the median norm of its batch (attention sinks). ``tokens``: [batch, pos] or a list of
    [pos] / [1, pos] sequences (run one by one when their lengths differ).
    """
    sites = list(sites)
    for site in sites:
        if site not in model.hook_dict:
            raise unknown_name("hook name", site, model.hook_dict.keys(), "collect_resid")
    if isinstance(tokens, torch.Tensor):
        tokens = tokens if tokens.ndim == 2 else tokens[None]
        batches = list(tokens.split(batch_size))
    else:
        batches = [t if t.ndim == 2 else t[None] for t in tokens]
    order = list(model.hook_dict)
    # stop after the last block we read from (sites outside blocks need the full forward)
    layers = [s.split(".")[1] for s in sites if s.startswith("blocks.")]
    stop = max(int(x) for x in layers) + 1 if len(layers) == len(sites) else None
    out: dict[str, list[torch.Tensor]] = {s: [] for s in sorted(sites, key=order.index)}
    iterator = batches
    if progress:
        iterator = tqdm(batches, desc="collect activations", leave=False)
    for batch in iterator:
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n in out, stop_at_layer=stop)
        for site in out:
            resid = cache[site][:, 1:]
            keep = ~sink_mask(resid, sink_ratio)
            out[site].append(resid[keep].float().cpu())
    return {site: torch.cat(chunks) for site, chunks in out.items()}


@torch.no_grad()
def last_token_resid(model, prompts: Iterable[torch.Tensor], sites: Iterable[str]) -> dict[str, torch.Tensor]:
    """Activations at the last token of each prompt: {site: [n_prompts, d_model]} (float32, CPU).

    ``prompts``: [pos] or [1, pos] token tensors, run one at a time (lengths may differ).
    The usual input for difference-of-means behaviour directions.
    """
    sites = list(sites)
    for site in sites:
        if site not in model.hook_dict:
            raise unknown_name("hook name", site, model.hook_dict.keys(), "last_token_resid")
    out: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    for prompt in prompts:
        prompt = prompt if prompt.ndim == 2 else prompt[None]
        _, cache = model.run_with_cache(prompt, names_filter=lambda n: n in out)
        for site in sites:
            out[site].append(cache[site][0, -1].float().cpu())
    return {site: torch.stack(rows) for site, rows in out.items()}
