"""Resumable collection of residual activations at the SAE sites.

Documents are joined into one token stream and cut into fixed windows; position 0 of
every window is dropped (its norm is ~100x the rest: the attention sink). Activations
go to float16 memory maps, one per site, and ``progress.json`` records how many windows
are done, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

CONTEXT = 128
SEPARATOR = "\n\n"


def token_windows(texts: Sequence[str], tokenizer, context: int = CONTEXT) -> Iterator[list[int]]:
    """Fixed-length windows over the concatenated documents (the last partial one dropped)."""
    buf: list[int] = []
    for text in texts:
        buf.extend(tokenizer(text + SEPARATOR).input_ids)
        while len(buf) >= context:
            yield buf[:context]
            buf = buf[context:]


def _layer_of(site: str) -> int:
    return int(site.split(".")[1])


def _read_progress(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"windows": 0, "tokens": 0}


def _write_progress(path: Path, progress: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(progress))
    os.replace(tmp, path)


def open_activations(folder: Path, site: str, capacity: int, d_model: int, mode: str = "r+") -> np.memmap:
    path = folder / f"{site}.f16"
    if mode == "r+" and not path.exists():
        mode = "w+"
    return np.memmap(path, dtype=np.float16, mode=mode, shape=(capacity, d_model))


def collect(model, windows: list[list[int]], sites: Sequence[str], folder: Path, batch_size: int = 16) -> dict:
    """Write activations for ``windows`` into ``folder``; returns the progress record."""
    folder.mkdir(parents=True, exist_ok=True)
    per_window = CONTEXT - 1
    capacity = len(windows) * per_window
    for site in sites:  # preallocate once so rows can be written at their offsets
        open_activations(folder, site, capacity, model.cfg.d_model)
    files = {s: open(folder / f"{s}.f16", "r+b") for s in sites}
    row_bytes = model.cfg.d_model * 2
    progress_path = folder / "progress.json"
    progress = _read_progress(progress_path)
    stop_at = max(_layer_of(s) for s in sites) + 1
    bar = tqdm(total=len(windows), initial=progress["windows"], desc=f"activations -> {folder.name}", unit="win")
    while progress["windows"] < len(windows):
        start = progress["windows"]
        batch = torch.tensor(windows[start : start + batch_size])
        with torch.inference_mode():
            _, cache = model.run_with_cache(batch, names_filter=list(sites), stop_at_layer=stop_at)
        for site in sites:
            acts = cache[site][:, 1:].reshape(-1, model.cfg.d_model)
            files[site].seek(start * per_window * row_bytes)
            files[site].write(acts.to(torch.float16).numpy().tobytes())
            files[site].flush()  # to the OS before progress says so (plain writes, no msync of the whole map)
        progress = {"windows": start + len(batch), "tokens": (start + len(batch)) * per_window}
        _write_progress(progress_path, progress)
        bar.update(len(batch))
    bar.close()
    for f in files.values():
        f.close()
    return progress
