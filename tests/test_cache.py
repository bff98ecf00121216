from __future__ import annotations

import errno
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from pytest_quantcheck import cache, cli
from pytest_quantcheck.variants import quantize

from fakes import FakeBackend, write_fake_gguf


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


# ---- a cache directory that cannot be used: one line naming it, the reason and the fix --------


def test_a_cache_directory_under_a_file_names_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    base = write_fake_gguf(tmp_path / "base.gguf")
    with pytest.raises(cache.CacheError) as info:
        quantize(base, "Q8_0", backend=FakeBackend(), cache_dir=blocker / "cache")
    assert str(info.value) == (f"{blocker}/cache/variants: cannot create cache directory ({blocker}"
                               " is a file); set QUANTCHECK_CACHE_DIR to a writable directory")


def test_a_cache_directory_that_is_a_file_names_it(tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("")
    with pytest.raises(cache.CacheError, match=f"^{blocker}: cannot create cache directory"
                       f" \\({blocker} is a file\\); set QUANTCHECK_CACHE_DIR"):
        cache.ensure_dir(blocker)


def test_a_directory_that_cannot_be_created_gives_the_reason(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(Path, "mkdir", refuse)  # as a read-only parent does (root ignores modes)
    with pytest.raises(cache.CacheError) as info:
        cache.ensure_dir(tmp_path / "c")
    assert str(info.value) == (f"{tmp_path}/c: cannot create cache directory (permission denied);"
                               " set QUANTCHECK_CACHE_DIR to a writable directory")


def test_a_lock_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    final = tmp_path / "e.bin"
    (tmp_path / "e.bin.lock").mkdir()  # in the way of the lock file
    with pytest.raises(cache.CacheError, match=f"^{tmp_path}: cannot create a lock file \\(is a"
                       " directory\\); set QUANTCHECK_CACHE_DIR to a writable directory$"):
        cache.publish(final, lambda t: t.write_bytes(b"x"), lambda p: True)
    assert not final.exists()


FULL = ("cannot write cache entry (no space left on device); free disk space or set"
        " QUANTCHECK_CACHE_DIR to a directory on another disk")


def test_a_full_disk_during_a_build_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "variants" / "e.gguf"

    def build(tmp: Path) -> None:
        with tmp.open("wb") as f:
            f.write(b"half an entry")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(cache.CacheError) as info:
        cache.publish(final, build, lambda p: True)
    assert str(info.value) == f"{final.parent}: {FULL}"
    assert [p.name for p in final.parent.iterdir()] == ["e.gguf.lock"]  # no partial, no entry


def test_a_full_disk_when_quantizing_is_one_line_from_the_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while the entry's record is written (fsync is where delayed allocation
    reports it): the command prints one line, and no variant or record is published."""
    base = write_fake_gguf(tmp_path / "base.gguf")
    root = tmp_path / "cache"
    monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(root))
    monkeypatch.setattr(cli, "default_backend", FakeBackend)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache.os, "fsync", no_space)
    assert cli.main(["quantize", str(base), "Q8_0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"quantcheck: error: {root / 'variants'}: {FULL}\n"
    assert sorted(p.suffix for p in (root / "variants").iterdir()) == [".lock"]


def test_a_build_that_fails_on_a_full_disk_blames_the_disk(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp reports a failed write as a bare error code: with the disk full, say so."""
    final = tmp_path / "e.gguf"

    def build(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("llama.cpp failed to quantize this model (code 1)")

    monkeypatch.setattr(cache, "_free_bytes", lambda path: 4096)
    with pytest.raises(cache.CacheError) as info:
        cache.publish(final, build, lambda p: True)
    assert str(info.value) == f"{tmp_path}: {FULL}"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.gguf.lock"]
    monkeypatch.setattr(cache, "_free_bytes", lambda path: 10 << 30)  # room: the error stands
    with pytest.raises(RuntimeError, match="code 1"):
        cache.publish(final, build, lambda p: True)
