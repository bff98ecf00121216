"""The on-disk cache: where entries live, content hashes, and publishing entries safely.

An entry is built under a temporary name in the cache directory and renamed into place, so a
reader never sees a half-written file; an exclusive lock per entry makes concurrent builders
(pytest-xdist workers, parallel CI jobs) wait for one build instead of racing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pytest_quantcheck.errors import QuantcheckError

_HASH_BLOCK = 1 << 22
# A build that fails while less than this is free is blamed on the full disk: llama.cpp reports
# a failed write as a bare error code, and a full disk is by far the likeliest cause.
_NEARLY_FULL = 1 << 20
_FULL = (errno.ENOSPC, errno.EDQUOT)


class CacheError(QuantcheckError, RuntimeError):
    """The cache directory cannot be used; the message says which and how to fix it."""


def cache_error(folder: Path, doing: str, exc: OSError) -> CacheError:
    """One line: the directory, what failed and why, and the fix."""
    if exc.errno in _FULL:
        reason = (exc.strerror or "no space left on device").lower()
        fix = "free disk space or set QUANTCHECK_CACHE_DIR to a directory on another disk"
    else:
        blocker = _file_in_the_way(folder) if exc.errno in (errno.ENOTDIR, errno.EEXIST) else None
        reason = f"{blocker} is a file" if blocker else (exc.strerror or str(exc)).lower()
        fix = "set QUANTCHECK_CACHE_DIR to a writable directory"
    return CacheError(f"{folder}: cannot {doing} ({reason}); {fix}")


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (itself included), if it is not a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def cache_root() -> Path:
    """``$QUANTCHECK_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-quantcheck``, else ``~/.cache/...``."""
    explicit = os.environ.get("QUANTCHECK_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pytest-quantcheck"


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(path, "create cache directory", exc) from None
    return path


def key_digest(*parts: object) -> str:
    """A short stable digest of the things an entry depends on."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def sha256_of(path: Path) -> str:
    """SHA-256 of a file's bytes, read now."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path, *, root: Path | None = None) -> str:
    """SHA-256 of a file, remembered by (path, size, mtime, inode) so a multi-GB base model is
    read once, not once per run. Any rewrite of the file changes its mtime and so its hash."""
    st = path.stat()
    stamp = [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino]
    memo_dir = (root or cache_root()) / "hashes"
    memo = memo_dir / f"{key_digest(stamp[0])}.json"
    try:
        saved = json.loads(memo.read_text())
        if saved["stamp"] == stamp:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_of(path)
    with contextlib.suppress(OSError, CacheError):  # the memo is an optimisation only
        ensure_dir(memo_dir)
        write_atomic(memo, json.dumps({"stamp": stamp, "sha256": digest}).encode())
    return digest


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide a committed file from others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path, lock_dir: Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock named after ``path``: a sibling ``.lock`` file, or a file in
    ``lock_dir`` for paths in folders users commit (baselines)."""
    if lock_dir is None:
        lock_path = path.with_name(path.name + ".lock")
    else:
        lock_path = ensure_dir(lock_dir) / f"{key_digest(str(path.resolve()))}.lock"
    try:
        handle = lock_path.open("a+b")
    except OSError as exc:
        raise cache_error(lock_path.parent, "create a lock file", exc) from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def publish(
    final: Path,
    build: Callable[[Path], None],
    is_valid: Callable[[Path], bool],
) -> bool:
    """Make ``final`` exist and be valid, building it at most once across processes.

    ``build(tmp)`` writes the entry (a file or a directory) at ``tmp``; it is renamed to
    ``final`` only after ``build`` returns. An existing entry that fails ``is_valid`` is removed
    and rebuilt. Returns True when this call built the entry. A failed build leaves nothing
    behind; a write error, or any failure while the disk is full, is a :class:`CacheError`.
    """
    ensure_dir(final.parent)
    with locked(final):
        if final.exists():
            if is_valid(final):
                return False
            _remove(final)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
        _remove(tmp)
        try:
            build(tmp)
            if tmp.is_file():
                with tmp.open("rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            _remove(tmp)
            raise cache_error(final.parent, "write cache entry", exc) from exc
        except Exception as exc:
            free = _free_bytes(final.parent)  # before the partial output is removed
            _remove(tmp)
            if free is not None and free < _NEARLY_FULL:
                full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                raise cache_error(final.parent, "write cache entry", full) from exc
            raise
        except BaseException:
            _remove(tmp)
            raise
        return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
