"""Crash isolation: load a model file, and decode a few tokens with it, once in a child process
before the main process does.

A file can pass the header validation and still make llama.cpp abort (an unsupported
architecture detail, a bug in a new loader), while loading or at its first decode. Aborting the
pytest process would lose every result of the run, so the first load of each file version
happens in a child; a clean exit is remembered
(by the file's SHA-256, in the cache), a crash becomes a :class:`BackendError` naming the file and
the signal, remembered too so later runs fail at once. The child is the ``probe`` command of
:mod:`~pytest_quantcheck.backends.child`; this module is the parent's side and does not load
llama.cpp.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pytest_quantcheck import cache
from pytest_quantcheck.backends import BackendError

PROBE_VERSION = 2  # 2: the child decodes a few tokens too


def probe(path: Path, version: str, command: Sequence[str] | None = None,
          root: Path | None = None, timeout: float = 600.0) -> None:
    """Load ``path`` in a child process unless a probe of the same bytes by the same llama.cpp
    build (``version``) already passed; a remembered crash fails at once."""
    sha = cache.file_sha256(path, root=root)
    record = (root or cache.cache_root()) / "probes" / f"{cache.key_digest(sha, version)}.json"
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = None
    if isinstance(known, dict) and known.get("version") == PROBE_VERSION:
        if known.get("ok"):
            return
        raise BackendError(str(known.get("error")))
    cmd = [*(command or [sys.executable, "-m", "pytest_quantcheck.backends.child", "probe"]),
           str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{path}: llama.cpp did not finish loading this file in {timeout:.0f} s"
                           " (in an isolated process); check the file") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        error = (f"{path}: llama.cpp crashed ({name}) while loading this file and decoding a few"
                 " tokens in an isolated process; the file is not usable with this llama.cpp"
                 " build")
    elif done.returncode != 0:
        # Not a crash: an ordinary load error, which the main process reports itself.
        return
    else:
        error = None
    with contextlib.suppress(OSError, cache.CacheError):  # unremembered: probed again next time
        cache.ensure_dir(record.parent)
        cache.write_atomic(record, json.dumps({"version": PROBE_VERSION, "ok": error is None,
                                               "error": error, "file": str(path)}).encode())
    if error is not None:
        raise BackendError(error)
