"""What produced a run's results: config and data hashes, package versions, commit, times.

Two runs into one output directory must be the same run, or the second would report the
first one's records under its own options. ``record_config`` keeps the config fields that
shape the records (not where they are written or how they are shown); a suite's plan adds
its ``fingerprint`` (subject weights, SAEs, data files, selected latents, calibration,
attack config); ``differences`` names what changed between two of them. ``build_provenance``
is the block that ``summary.json`` carries so a published number can be traced to its
inputs.

Example::

    config_sha256(record_config(config.to_dict()))  # same hash <=> same records
    differences(stored, current)  # ["options.site: 'blocks.6...' -> 'blocks.12...'"]
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from guard.errors import ToolkitError

PACKAGES = ("torch", "transformer-lens", "sae-lens", "numpy", "scipy")
# SuiteConfig fields that never change a record: where outputs go, how they look, the
# confidence level of the intervals (recomputed from the records on every report), whether set-up
# products come from the cache, and which processes evaluate the units
# show_completions shapes records: completions are redacted before they are stored
NON_RECORD_FIELDS = frozenset({"out", "progress", "alpha", "cache", "executor", "workers", "ray_address"})
# fields compared as sets: the order in which settings, defenses or budgets are listed
# changes the order of the work, not its records
SET_FIELDS = frozenset({"settings", "defenses", "budgets"})
_ROOT = Path(__file__).resolve().parents[1]


def _plain(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists, keys strings); TypeError otherwise."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)  # JSON has no inf / nan; keep them distinct from each other
        return value
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return _plain(item())
    raise TypeError(f"{type(value).__name__} is not JSON data")


def json_data(obj: Any, what: str = "value") -> Any:
    """``obj`` as plain JSON data (tuples as lists, keys as strings); a ToolkitError if it is not data."""
    try:
        return _plain(obj)
    except TypeError as err:
        raise ToolkitError(f"provenance: {what} must be JSON data (str, number, bool, None, lists, "
                           f"mappings), got {err}: {obj!r:.200}") from err


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON of ``obj``: equal data gives equal text."""
    return json.dumps(json_data(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_sha256(config_dict: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a config (or any mapping of JSON data)."""
    return hashlib.sha256(canonical_json(config_dict).encode()).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as err:
        raise ToolkitError(f"provenance: cannot hash {path}: {err}") from err
    return digest.hexdigest()


def sha256_tensors(tensors: Mapping[str, Any]) -> str:
    """SHA-256 over names, shapes, dtypes and bytes of ``tensors``, in sorted name order.

    Hashes the raw bytes (any dtype, bfloat16 included), so equal hashes mean bitwise-equal
    weights; a tensor on a GPU is copied to the CPU first.
    """
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            raise ToolkitError(f"provenance: {name!r} is a {type(tensor).__name__}, not a tensor")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        header = json.dumps([name, list(tensor.shape), str(tensor.dtype)])
        digest.update(len(header).to_bytes(8, "little") + header.encode())
        data = flat.view(torch.uint8).numpy() if flat.numel() else b""
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def latentguard_version() -> str:
    try:
        return importlib.metadata.version("latentguard")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def git_commit(root: str | os.PathLike[str] = _ROOT) -> str | None:
    """The commit of the checkout this package runs from; None if it is not one. Never raises.

    None also when ``root`` is not the top of the git work tree (an installed package inside
    some other repository does not borrow that repository's commit) or git is missing.
    """
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
        lines = top.stdout.split()
        if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != Path(root).resolve():
            return None
        return lines[1]
    except Exception:  # no git, a timeout, an odd file system: provenance is best effort here
        return None


def describe_device(device: str | None) -> str | None:
    """``device`` plus the accelerator's name where there is one (``cuda:0 (NVIDIA H200)``)."""
    if not device or not str(device).startswith("cuda"):
        return device
    try:
        import torch

        index = int(str(device).partition(":")[2] or torch.cuda.current_device())
        return f"{device} ({torch.cuda.get_device_name(index)})"
    except Exception:  # no CUDA here (e.g. re-rendering elsewhere): the name alone
        return device


def now_iso() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_config(config: Mapping[str, Any], option_defaults: Mapping[str, Any] | None = None,
                  volatile_options: Iterable[str] = ()) -> dict[str, Any]:
    """The part of ``config`` (a ``SuiteConfig.to_dict()``) that shapes the records.

    Drops ``NON_RECORD_FIELDS``; options are filled from ``option_defaults`` (so an option
    given at its default value is no change) less ``volatile_options`` (e.g. a test delay);
    settings, defenses and budgets are sorted; ``device`` keeps its kind (``cuda:1`` and
    ``cuda`` compute the same). Every other field counts, including ones added later.
    """
    out: dict[str, Any] = {}
    volatile = set(volatile_options)
    for key, value in config.items():
        if key in NON_RECORD_FIELDS:
            continue
        if key == "options":
            merged = {**dict(option_defaults or {}), **dict(value or {})}
            value = {k: v for k, v in sorted(merged.items()) if k not in volatile}
        elif key in SET_FIELDS and value is not None:
            value = sorted(value, key=lambda v: (str(type(v)), v))
        elif key == "device" and isinstance(value, str):
            value = value.partition(":")[0]
        out[key] = json_data(value, f"config field {key!r}")
    return out


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """What differs between two JSON-like values, one ``path: old -> new`` line per leaf.

    A key missing on one side shows as ``(absent)``. Values are compared as canonical JSON,
    so a tuple equals the list with the same items.
    """
    old, new = json_data(old), json_data(new)
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else key
            if key not in old or key not in new:
                out.append(f"{path}: {_show(old.get(key, _ABSENT))} -> {_show(new.get(key, _ABSENT))}")
            else:
                out.extend(differences(old[key], new[key], path))
        return out
    if canonical_json(old) == canonical_json(new):
        return []
    return [f"{prefix or '(value)'}: {_show(old)} -> {_show(new)}"]


_ABSENT = object()


def require_same(out: str | os.PathLike[str], what: str, old: Any, new: Any, limit: int = 6) -> None:
    """Raise a ToolkitError naming what differs between the run in ``out`` and this one, if anything."""
    diff = differences(old, new)
    if diff:
        shown = "; ".join(diff[:limit]) + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")
        raise ToolkitError(f"{out} holds a run with a different {what} ({shown}); use --fresh to start a new "
                           "run there or choose another --out")


def _show(value: Any, limit: int = 80) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_provenance(config: Mapping[str, Any], plan_fingerprint: Mapping[str, Any] | None,
                     started: str | None, finished: str | None, device: str | None,
                     measured: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Where a run's numbers come from: versions, commit, subject, SAEs, config and data hashes.

    ``config``: the config the records depend on (``record_config``); ``plan_fingerprint``: the
    suite plan's fingerprint, whose ``subject`` and ``saes`` entries are copied out (the
    config's subject name where the plan gives none); ``started`` / ``finished``: ISO times;
    ``measured``: the plan's measured set-up facts (``SuitePlan.provenance``), kept under ``setup``.
    """
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    fingerprint = dict(plan_fingerprint or {})
    return {
        "latentguard_version": latentguard_version(),
        "git_commit": git_commit(),
        "packages": package_versions(),
        "subject": json_data(fingerprint.get("subject", config.get("subject")), "the subject"),
        "saes": json_data(fingerprint.get("saes"), "the SAEs"),
        "config_sha256": config_sha256(config),
        "fingerprint_sha256": config_sha256(fingerprint),
        "started": started,
        "finished": finished,
        "device": device,
        **({"setup": json_data(measured, "the plan's measured set-up")} if measured else {}),
    }
