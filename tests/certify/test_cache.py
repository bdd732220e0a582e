"""The content-addressed set-up cache: values and folders by key, atomic, and the source hash."""

from __future__ import annotations

import pytest

from certify.cache import SetupCache, objects_source_sha256, source_sha256


def test_a_value_is_computed_once_and_read_back_by_another_cache_on_the_same_root(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"delta_ce": 0.125, "valid": (True, False)}

    first = SetupCache(tmp_path)
    assert first.value({"setting": "ioi", "n": 3}, compute) == {"delta_ce": 0.125, "valid": [True, False]}
    again = SetupCache(tmp_path)
    assert again.value({"n": 3, "setting": "ioi"}, compute) == {"delta_ce": 0.125, "valid": [True, False]}
    assert len(calls) == 1 and (first.misses, first.hits, again.hits, again.misses) == (1, 0, 1, 0)
    # any change of the key is another entry
    assert again.value({"setting": "ioi", "n": 4}, compute) and len(calls) == 2


def test_a_damaged_or_foreign_entry_is_recomputed(tmp_path):
    cache = SetupCache(tmp_path)
    cache.value("k", lambda: 1)
    path = cache._path("k").with_suffix(".json")
    path.write_text("{not json")
    assert cache.value("k", lambda: 2) == 2
    path.write_text('{"key": "another key", "value": 3}')  # a hash collision would look like this
    assert cache.value("k", lambda: 4) == 4 and SetupCache(tmp_path).value("k", lambda: 5) == 4


def test_no_root_stores_nothing(tmp_path):
    cache = SetupCache(None)
    assert [cache.value("k", lambda i=i: i) for i in range(2)] == [0, 1] and cache.misses == 2
    with pytest.raises(ValueError):
        cache.folder("k", lambda folder: None)


def test_a_folder_is_filled_once_and_a_failed_fill_leaves_nothing(tmp_path):
    cache = SetupCache(tmp_path)

    def broken(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("killed mid-fill")

    with pytest.raises(RuntimeError):
        cache.folder("calib", broken)
    assert not cache._path("calib").exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no temporary folder left behind
    fills = []
    path = cache.folder("calib", lambda folder: fills.append((folder / "t.bin").write_bytes(b"ab")))
    assert cache.folder("calib", lambda folder: fills.append(0)) == path
    assert (path / "t.bin").read_bytes() == b"ab" and len(fills) == 1


def test_the_source_hash_follows_content_not_caches_or_location(tmp_path):
    package = tmp_path / "a" / "pkg"
    package.mkdir(parents=True)
    (package / "mod.py").write_text("x = 1\n")
    before = source_sha256((str(package),))
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "mod.py").write_text("compiled")
    (package / "weights.safetensors").write_bytes(b"\0" * 8)  # weights are hashed by value elsewhere
    source_sha256.cache_clear()
    assert source_sha256((str(package),)) == before
    elsewhere = tmp_path / "b" / "pkg"
    elsewhere.mkdir(parents=True)
    (elsewhere / "mod.py").write_text("x = 1\n")
    assert source_sha256((str(elsewhere),)) == before
    (package / "mod.py").write_text("x = 2\n")
    source_sha256.cache_clear()
    assert source_sha256((str(package),)) != before


def test_the_hash_of_a_plugins_objects_is_its_files(tmp_path, monkeypatch):
    plugin = tmp_path / "my_defense.py"
    plugin.write_text("class A:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_defense

    before = objects_source_sha256([my_defense.A, len])  # a builtin has no file and adds nothing
    assert before == objects_source_sha256([my_defense.A])
    plugin.write_text("class A:\n    y = 1\n")
    assert objects_source_sha256([my_defense.A]) != before
