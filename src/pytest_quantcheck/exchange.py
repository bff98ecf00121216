"""Decided outcomes shared between the processes of one run (pytest-xdist workers), so that a
run-wide correction (Holm) sees every check's p-value while each model is still evaluated once.

Each variant's checks are evaluated by the first process that claims the variant (an exclusive
create of ``<digest>.claim`` holding its pid); the outcomes are published as
``<digest>.json`` (written atomically). Every other process waits for that file. A claimant that
died without publishing is noticed by its pid, and the variant is claimed again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_quantcheck import cache
from pytest_quantcheck.checks import CheckSkipped, Outcome
from pytest_quantcheck.errors import QuantcheckError

Decided = dict[tuple[str, str], Outcome | Exception]  # (check label, model name) -> result


def encode(decided: Decided) -> str:
    entries: list[dict[str, Any]] = []
    for (label, name), found in decided.items():
        entry: dict[str, Any] = {"label": label, "name": name}
        if isinstance(found, Outcome):
            entry["outcome"] = found.to_dict()
        elif isinstance(found, CheckSkipped):
            entry["skipped"] = str(found)
        else:
            entry["error"] = str(found) if isinstance(found, QuantcheckError) else repr(found)
            entry["user_error"] = isinstance(found, QuantcheckError)
        entries.append(entry)
    return json.dumps(entries)


def decode(text: str) -> Decided:
    decided: Decided = {}
    for entry in json.loads(text):
        key = (entry["label"], entry["name"])
        if "outcome" in entry:
            decided[key] = Outcome.from_dict(entry["outcome"])
        elif "skipped" in entry:
            decided[key] = CheckSkipped(entry["skipped"])
        elif entry.get("user_error"):
            decided[key] = QuantcheckError(entry["error"])
        else:  # a bug in another process: reported at this check's turn, not hidden
            decided[key] = RuntimeError(f"evaluating in another worker failed: {entry['error']}")
    return decided


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def _claimant_died(claim: Path) -> bool:
    try:
        pid = int(claim.read_text() or "0")
    except (OSError, ValueError):
        return False  # being written right now
    return pid > 0 and not _alive(pid)


def share(folder: Path, groups: dict[str, Callable[[], Decided]],
          poll_s: float = 0.05) -> Decided:
    """Every group's outcomes (group: a variant's spec), each evaluated by one process."""
    decided: Decided = {}
    waiting: dict[str, Path] = {}
    for spec in groups:
        stem = folder / cache.key_digest("variant", spec)
        if _claim(stem.with_suffix(".claim")):
            found = groups[spec]()
            cache.write_atomic(stem.with_suffix(".json"), encode(found).encode())
            decided.update(found)
        else:
            waiting[spec] = stem
    while waiting:
        for spec, stem in list(waiting.items()):
            published = stem.with_suffix(".json")
            if published.exists():
                decided.update(decode(published.read_text()))
                del waiting[spec]
            elif _claimant_died(stem.with_suffix(".claim")):  # take the variant over
                found = groups[spec]()
                cache.write_atomic(published, encode(found).encode())
                decided.update(found)
                del waiting[spec]
        if waiting:
            time.sleep(poll_s)
    return decided
