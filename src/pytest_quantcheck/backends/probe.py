"""Crash isolation: load a model file, and decode a few tokens with it, once in a child process
before the main process does.

A file can pass the header validation and still make llama.cpp abort (an unsupported
architecture detail, a bug in a new loader), while loading or at its first decode. Aborting the
pytest process would lose every result of the run, so the first load of each file version
happens in a child; a clean exit is remembered
(by the file's SHA-256, in the cache), a crash becomes a :class:`BackendError` naming the file and
the signal, remembered too so later runs fail at once. Run as a module, it is that child.
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
    cmd = [*(command or [sys.executable, "-m", "pytest_quantcheck.backends.probe"]), str(path)]
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


def main(argv: Sequence[str]) -> int:
    import numpy as np

    from pytest_quantcheck.backends import RunOptions
    from pytest_quantcheck.backends.llamacpp import LlamaCppModel

    # Some files load and then abort llama.cpp at context creation or the first decode (a
    # weight type with no CPU kernel, a bad norm epsilon): decode a few tokens too.
    try:
        model = LlamaCppModel(Path(argv[0]), RunOptions(n_threads=1))
        ctx = model.open_context(8, 1, 8)
        ctx.score_chunks(np.zeros((1, 8), dtype=np.int32) + min(1, model.n_vocab - 1), 4)
        ctx.close()
        model.close()
    except (BackendError, ValueError):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
