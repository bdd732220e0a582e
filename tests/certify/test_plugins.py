"""``--plugin``: user code imported before planning, once per process, fingerprinted for resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from certify.cli import main
from certify.plugins import load_plugins
from certify.suites import SUITES
from guard.errors import ToolkitError
from guard.registry import DEFENSES

DEFENSE_PLUGIN = '''
from dataclasses import dataclass

from guard import DefenseSpec, ResidualConfig, ResidualDefense, register_defense


@dataclass(frozen=True)
class HalfErrorConfig(ResidualConfig):
    name = "{name}"


class HalfError(ResidualDefense):
    def transform_error(self, error, site, keep):
        return 0.5 * error


register_defense(DefenseSpec(HalfErrorConfig, HalfError, selftest=lambda features: HalfErrorConfig(features=features)))
'''

SUITE_PLUGIN = '''
from certify import Suite, register_suite

register_suite(Suite("{name}", "certify.demo:build_demo", "the demo under another name",
                     option_defaults="certify.demo:OPTION_DEFAULTS", volatile_options=("unit_delay_s",)))
# {version}
'''


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_defense_file_registers_once_and_is_hashed(tmp_path):
    path = _write(tmp_path / "half_error.py", DEFENSE_PLUGIN.format(name="test_plugin_half_error"))
    with DEFENSES.scoped():
        first = load_plugins([str(path)])
        assert "test_plugin_half_error" in DEFENSES
        assert load_plugins([str(path)]) == first  # imported once: no duplicate registration
        assert len(first[str(path)]) == 64


def test_bad_plugins_are_one_line_errors(tmp_path):
    with pytest.raises(ToolkitError, match="no such file"):
        load_plugins([str(tmp_path / "missing.py")])
    with pytest.raises(ToolkitError, match="no importable module"):
        load_plugins(["no_such_module_anywhere"])
    broken = _write(tmp_path / "broken.py", "import guard\nundefined_name\n")
    with pytest.raises(ToolkitError, match=r"plugin .*broken.py' failed to import: NameError"):
        load_plugins([str(broken)])


def test_a_suite_plugin_runs_end_to_end_and_a_changed_plugin_is_not_resumed(tmp_path, capsys):
    plugin = _write(tmp_path / "my_suite.py", SUITE_PLUGIN.format(name="test_plugin_demo", version=1))
    out = tmp_path / "out"
    args = ["run", "--plugin", str(plugin), "--suite", "test_plugin_demo", "--out", str(out), "--n", "3",
            "--budgets", "0", "1", "--defenses", "clamp", "--settings", "planted", "--no-progress",
            "--option", "steps=5"]
    with SUITES.scoped():
        assert main(args) == 0
        assert main(args) == 0  # the same plugin: resumed, nothing to do
        _write(plugin, SUITE_PLUGIN.format(name="test_plugin_demo", version=2))
        capsys.readouterr()
        assert main(args) == 2
        assert "plugins_sha256" in capsys.readouterr().err


def test_list_shows_a_plugin_suite(tmp_path, capsys):
    plugin = _write(tmp_path / "listed.py", SUITE_PLUGIN.format(name="test_plugin_listed", version=0))
    with SUITES.scoped():
        assert main(["list", "--plugin", str(plugin)]) == 0
    assert "test_plugin_listed: the demo under another name" in capsys.readouterr().out
