"""Baseline records: one self-describing JSON file per base model, human-diffable, committed by
users, written only when asked (``--quant-update-baseline``).

A file holds its schema version, the tool and llama.cpp versions, the keys that determine quality
(base model SHA-256, evaluation text SHA-256, its tokens' SHA-256, n_ctx, the scoring protocol),
and one record per variant with summaries and the per-chunk values paired tests need. Speed and
memory depend on the machine too: a record keeps a list of ``machines``, each a fingerprint with
the throughput samples and memory measured there. Writes merge into the existing file under a
lock and replace it atomically.

Schema history: version 1 had no ``machines``; it is read as version 2 (its quality records are
unchanged) and written as version 2 by the next update.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_quantcheck import __version__, cache

SCHEMA = "pytest-quantcheck baseline"
SCHEMA_VERSION = 2
KEY_FIELDS = ("model_sha256", "text_sha256", "tokens_sha256", "n_ctx", "protocol", "llama_cpp")
SPEED_KEY_FIELDS = ("model_sha256", "llama_cpp")  # what the variant files' bytes depend on
UPDATE_FLAG = "--quant-update-baseline"


class BaselineError(ValueError):
    """A baseline that is missing, unreadable, or made for other inputs."""


def file_name(model_name: str) -> str:
    """``<model>.quantcheck.json``, with anything but letters, digits, ``-_.`` replaced."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model_name).lstrip(".") or "model"
    return f"{safe}.quantcheck.json"


@dataclass(frozen=True)
class BaselineFile:
    path: Path
    keys: dict[str, Any]
    records: dict[str, dict[str, Any]]

    def record(self, variant: str, keys: dict[str, Any], ignore: tuple[str, ...],
               fields: tuple[str, ...] = KEY_FIELDS) -> dict[str, Any]:
        """The variant's record, after checking every key (of ``fields``) that determines it."""
        for name in fields:
            if name in ignore:
                continue
            if self.keys.get(name) != keys.get(name):
                raise BaselineError(
                    f"{self.path}: baseline was made with a different {name}"
                    f" ({_short(self.keys.get(name))}, now {_short(keys.get(name))}); refresh it with"
                    f" {UPDATE_FLAG} if the change is intended, or list {name} in baseline_ignore"
                )
        if variant not in self.records:
            raise BaselineError(
                f"{self.path}: no baseline for variant {variant}; create it with {UPDATE_FLAG}"
            )
        return self.records[variant]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "…"


def load(path: Path) -> BaselineFile:
    if not path.exists():
        raise BaselineError(f"{path}: no baseline file; create it with {UPDATE_FLAG}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaselineError(f"{path}: unreadable baseline ({exc}); restore it from version"
                            f" control or recreate it with {UPDATE_FLAG}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise BaselineError(f"{path}: not a pytest-quantcheck baseline; recreate it with {UPDATE_FLAG}")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise BaselineError(f"{path}: baseline schema version {version} was written by a newer"
                            f" pytest-quantcheck (this one reads up to {SCHEMA_VERSION}); upgrade"
                            " pytest-quantcheck")
    if version not in _MIGRATIONS and version != SCHEMA_VERSION:
        raise BaselineError(f"{path}: baseline schema version {version!r} is unknown; recreate it"
                            f" with {UPDATE_FLAG}")
    while version != SCHEMA_VERSION:
        data, version = _MIGRATIONS[version](data), version + 1
    keys, records = data.get("keys"), data.get("records")
    if not isinstance(keys, dict) or not isinstance(records, dict) or not all(
            isinstance(r, dict) for r in records.values()):
        raise BaselineError(f"{path}: baseline lacks keys or records; recreate it with {UPDATE_FLAG}")
    return BaselineFile(path, keys, records)


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: records gain ``machines``; a v1 file has none to carry over."""
    return {**data, "schema_version": 2}


_MIGRATIONS = {1: _from_v1}


def _same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a.get("fingerprint") == b.get("fingerprint"))


def merge_record(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A variant's stored record updated with a new one: sections the new one has replace the
    old; a machine's entry is merged with the new entry of the same fingerprint (its
    throughput tests and memory replaced one by one), other machines' entries are kept."""
    merged = {**old, **{k: v for k, v in new.items() if k != "machines"}}
    machines = [dict(m) for m in old.get("machines", []) if isinstance(m, dict)]
    for entry in new.get("machines", []):
        same = next((m for m in machines if _same_machine(m, entry)), None)
        if same is None:
            machines.append(entry)
            continue
        tests = {**same.get("throughput", {}), **entry.get("throughput", {})}
        same.update({k: v for k, v in entry.items() if k != "throughput"})
        if tests:
            same["throughput"] = tests
    if machines:
        merged["machines"] = machines
    return merged


def update(path: Path, keys: dict[str, Any], records: dict[str, dict[str, Any]]) -> Path | None:
    """Merge ``records`` into the file at ``path`` (new keys replace old ones), atomically.

    A file that cannot be read as a baseline is never overwritten silently: it is moved aside
    first, and the path it was moved to is returned so the caller can say where it is.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise BaselineError(f"{path.parent}: cannot write baselines here ({exc.strerror}); make the"
                            " directory writable or point baseline_dir elsewhere") from None
    kept_aside = None
    with cache.locked(path, lock_dir=cache.cache_root() / "locks"):
        existing: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                old = load(path)
                if all(old.keys.get(k) == keys.get(k) for k in KEY_FIELDS):
                    existing = dict(old.records)  # records of other variants stay valid
            except BaselineError:
                kept_aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, kept_aside)
        for name, record in records.items():
            existing[name] = merge_record(existing.get(name, {}), record)
        document = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": f"pytest-quantcheck {__version__}",
            "keys": keys,
            "records": {name: existing[name] for name in sorted(existing)},
        }
        cache.write_atomic(path, (json.dumps(document, indent=1) + "\n").encode())
    return kept_aside
