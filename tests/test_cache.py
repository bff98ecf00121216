from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from pytest_quantcheck import cache


def slow_build(log: str, final: str) -> None:
    def build(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        tmp.write_bytes(b"entry")

    cache.publish(Path(final), build, lambda p: p.read_bytes() == b"entry")


def test_two_processes_building_the_same_entry_build_it_once(tmp_path: Path) -> None:
    log, final = tmp_path / "builds.log", tmp_path / "entries" / "x.bin"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=slow_build, args=(str(log), str(final))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1
    assert final.read_bytes() == b"entry"


def test_hit_does_not_rebuild(tmp_path: Path) -> None:
    calls = []
    final = tmp_path / "e.bin"

    def build(tmp: Path) -> None:
        calls.append(1)
        tmp.write_bytes(b"ok")

    assert cache.publish(final, build, lambda p: True) is True
    assert cache.publish(final, build, lambda p: True) is False
    assert len(calls) == 1


def test_invalid_entry_is_rebuilt(tmp_path: Path) -> None:
    final = tmp_path / "e.bin"
    final.write_bytes(b"corrupt")
    assert cache.publish(final, lambda t: t.write_bytes(b"good"), lambda p: p.read_bytes() == b"good")
    assert final.read_bytes() == b"good"


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    final = tmp_path / "e.bin"

    def build(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.publish(final, build, lambda p: True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.bin.lock"]


def test_file_hash_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"a" * 1000)
    first = cache.file_sha256(f, root=tmp_path / "c")
    assert cache.file_sha256(f, root=tmp_path / "c") == first
    time.sleep(0.01)
    f.write_bytes(b"b" * 1000)
    assert cache.file_sha256(f, root=tmp_path / "c") != first


def test_unwritable_cache_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(cache.CacheError, match="QUANTCHECK_CACHE_DIR"):
        cache.ensure_dir(blocker / "sub")


def test_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTCHECK_CACHE_DIR", "/x/y")
    assert cache.cache_root() == Path("/x/y")
    monkeypatch.delenv("QUANTCHECK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/c")
    assert cache.cache_root() == Path("/c/pytest-quantcheck")


def test_physical_cores_is_a_sane_default() -> None:
    from pytest_quantcheck.backends import RunOptions, physical_cores

    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    assert RunOptions().threads() == physical_cores()
    assert RunOptions(n_threads=3).threads() == 3


def test_atomic_writes_leave_readable_files_and_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "baseline.json"
    cache.write_atomic(target, b"{}")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["baseline.json"]


def test_locks_for_committed_folders_live_elsewhere(tmp_path: Path) -> None:
    target = tmp_path / "repo" / "baselines" / "m.json"
    target.parent.mkdir(parents=True)
    with cache.locked(target, lock_dir=tmp_path / "locks"):
        pass
    assert list(target.parent.iterdir()) == []
    assert len(list((tmp_path / "locks").iterdir())) == 1
