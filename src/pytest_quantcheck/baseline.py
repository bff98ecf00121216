"""Baseline files and the records in them (made, read, merged, migrated here, and nowhere else):
one self-describing JSON file per base model, human-diffable, committed by
users, written only when asked (``--quant-update-baseline``).

A file holds its schema version, the tool and llama.cpp versions, the keys that determine quality
(base model SHA-256, evaluation text SHA-256, its tokens' SHA-256, n_ctx, the scoring protocol),
and one record per variant with summaries and the per-chunk values paired tests need. Speed and
memory depend on the machine too: a record keeps a list of ``machines``, each a fingerprint with
the throughput samples and memory measured there. Writes merge into the existing file under a
lock and replace it atomically.

Schema history: version 1 had no ``machines``; version 2 kept one throughput run per machine
(``throughput``); version 3 also keeps the last few separate runs (``runs``: per test, a list of
runs, oldest first), so a comparison can weigh the drift between runs. Older files are read as
version 3 (their one run becomes a list of one) and written as version 3 by the next update.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck import __version__, cache
from pytest_quantcheck.config import KEY_FIELDS
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.machine import Fingerprint
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.metrics.memory import MemoryUsage
from pytest_quantcheck.metrics.perplexity import PerplexityResult
from pytest_quantcheck.metrics.task_answers import TaskResult, pack_bits, unpack_bits
from pytest_quantcheck.metrics.throughput import BenchResult, ThroughputRun

SCHEMA = "pytest-quantcheck baseline"
SCHEMA_VERSION = 3
SPEED_KEY_FIELDS = ("model_sha256", "llama_cpp")  # what the variant files' bytes depend on
UPDATE_FLAG = "--quant-update-baseline"


class BaselineError(QuantcheckError, ValueError):
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


def _from_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 -> 3: each machine's one throughput run becomes its list of runs."""
    records = {}
    for name, record in (data.get("records") or {}).items():
        if isinstance(record, dict) and isinstance(record.get("machines"), list):
            machines = []
            for m in record["machines"]:
                if isinstance(m, dict) and isinstance(m.get("throughput"), dict):
                    m = {**m, "runs": {phase: [r] for phase, r in m["throughput"].items()}}
                machines.append(m)
            record = {**record, "machines": machines}
        records[name] = record
    return {**data, "records": records, "schema_version": 3}


_MIGRATIONS = {1: _from_v1, 2: _from_v2}


def _same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Entries of one machine, as comparisons tell machines apart (a kernel's build tag aside):
    a new run joins the runs it will be compared with."""
    fa, fb = (m.get("fingerprint") for m in (a, b))
    if not (isinstance(fa, dict) and isinstance(fb, dict)):
        return fa == fb
    return not Fingerprint.from_dict(fa).differing(Fingerprint.from_dict(fb))


def merge_record(old: dict[str, Any], new: dict[str, Any], keep_runs: int = 10) -> dict[str, Any]:
    """A variant's stored record updated with a new one: sections the new one has replace the
    old; a machine's entry is merged with the new entry of the same fingerprint (its latest
    throughput tests and memory replaced one by one, its new runs appended and the last
    ``keep_runs`` kept), other machines' entries are kept."""
    merged = {**old, **{k: v for k, v in new.items() if k != "machines"}}
    for section in ("tasks", "texts"):  # task sets and named texts merge by name
        if isinstance(old.get(section), dict) and section in new:
            merged[section] = {**old[section], **new[section]}
    machines = [dict(m) for m in old.get("machines", []) if isinstance(m, dict)]
    for entry in new.get("machines", []):
        same = next((m for m in machines if _same_machine(m, entry)), None)
        if same is None:
            same = {"fingerprint": entry.get("fingerprint")}
            machines.append(same)
        tests = {**same.get("throughput", {}), **entry.get("throughput", {})}
        runs = {phase: list(r) for phase, r in same.get("runs", {}).items() if isinstance(r, list)}
        for phase, new_runs in entry.get("runs", {}).items():
            runs[phase] = (runs.get(phase, []) + list(new_runs))[-keep_runs:]
        same.update({k: v for k, v in entry.items() if k not in ("throughput", "runs")})
        if tests:
            same["throughput"] = tests
        if runs:
            same["runs"] = runs
    if machines:
        merged["machines"] = machines
    return merged


def merge_documents(documents: Iterable[tuple[dict[str, Any], dict[str, dict[str, Any]]]],
                    keep_runs: int = 10) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """One baseline document (keys, records by variant) from several processes' documents of
    one run: the workers of a pytest-xdist run, or the shards merged by ``quantcheck merge``.
    A model measured by several of them (the reference, typically) keeps every one's sections
    (tasks, named texts, machines) through :func:`merge_record`, not only the last one's."""
    keys: dict[str, Any] | None = None
    records: dict[str, dict[str, Any]] = {}
    for doc_keys, doc_records in documents:
        keys = doc_keys if keys is None else keys
        for name, rec in doc_records.items():
            records[name] = merge_record(records.get(name, {}), rec, keep_runs)
    if keys is None:
        raise ValueError("no baseline documents to merge")
    return keys, records


def update(path: Path, keys: dict[str, Any], records: dict[str, dict[str, Any]],
           keep_runs: int = 10) -> Path | None:
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
            existing[name] = merge_record(existing.get(name, {}), record, keep_runs)
        document = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "tool": f"pytest-quantcheck {__version__}",
            "keys": keys,
            "records": {name: existing[name] for name in sorted(existing)},
        }
        cache.write_atomic(path, (json.dumps(document, indent=1) + "\n").encode())
    return kept_aside


# ---- records ---------------------------------------------------------------------------------


class MeasuredElsewhere(Exception):
    """A speed or memory record exists, but only for machines unlike this one. Such a
    comparison is skipped, never failed; :meth:`reason` says what differs and the fix."""

    def __init__(self, stored: Fingerprint, here: Fingerprint, fields: list[str]) -> None:
        super().__init__("; ".join(f"{name} {_shown(stored, name)} in the baseline,"
                                   f" {_shown(here, name)} here" for name in fields))
        self.stored, self.here, self.fields = stored, here, fields

    def reason(self, what: str) -> str:
        """Why ``what`` (``"the tg throughput baseline of Q8_0"``) is not compared, and the fix:
        for a thread count or an offload alone, the setting that matches the baseline's."""
        flags = {"threads": "--quant-threads", "n_gpu_layers": "--quant-n-gpu-layers"}
        if len(self.fields) == 1 and self.fields[0] in flags:
            field = self.fields[0]
            kind = "thread count" if field == "threads" else "GPU offload"
            return (f"{what} was measured with another {kind} ({self}); run with"
                    f" {flags[field]} {_shown(self.stored, field)} as the baseline was, or record"
                    f" {field} {_shown(self.here, field)} with {UPDATE_FLAG}")
        return (f"{what} was measured on another machine ({self}); compare on that machine,"
                f" record this one with {UPDATE_FLAG}, or list the field in fingerprint_ignore")


def _shown(fingerprint: Fingerprint, field: str) -> str:
    value = fingerprint.to_dict()[field]
    if isinstance(value, list):
        return " ".join(map(str, value)) if value else "none"
    return str(value)


def make_record(*, file_type: str | None, size_bytes: int, bits_per_weight: float,
                ppl: PerplexityResult | None = None, kld: KLDResult | None = None,
                fingerprint: Fingerprint | None = None, speed: ThroughputRun | None = None,
                memory: MemoryUsage | None = None,
                tasks: Mapping[str, TaskResult] | None = None,
                tensors: Mapping[str, list[str]] | None = None,
                texts: Mapping[str, tuple[str, PerplexityResult]] | None = None) -> dict[str, Any]:
    """A variant's record: what paired comparisons need, per chunk and per task (one bit a
    task), per machine the throughput samples and memory measured there, and per tensor its
    type and the SHA-256 of its bytes."""
    record: dict[str, Any] = {"file_type": file_type, "size_bytes": size_bytes,
                              "bits_per_weight": bits_per_weight}
    if tensors is not None:
        record["tensors"] = dict(tensors)
    if texts:  # named evaluation texts beyond the default: (text's SHA-256, its perplexity)
        record["texts"] = {name: {"text_sha256": sha, "ppl": r.ppl, "n_chunks": r.n_chunks,
                                  "chunk_nll": r.chunk_nll.tolist()}
                           for name, (sha, r) in sorted(texts.items())}
    if ppl is not None:
        record["perplexity"] = {"ppl": ppl.ppl, "ppl_err": ppl.ppl_err, "n_chunks": ppl.n_chunks,
                                "chunk_nll": ppl.chunk_nll.tolist()}
    if kld is not None:
        record["kl_divergence"] = {"mean": kld.kld.value, "same_top": kld.same_top.value,
                                   "chunk_kld": kld.chunk_kld.tolist(),
                                   "chunk_same_top": kld.chunk_same_top.tolist()}
    if tasks:
        record["tasks"] = {name: {"mode": r.mode, "file_sha256": r.file_sha256,
                                  "selection_sha256": r.selection(), "n_tasks": r.n_tasks,
                                  "accuracy": r.accuracy, "correct": pack_bits(r.correct)}
                           for name, r in sorted(tasks.items())}
    if fingerprint is not None and (speed is not None or memory is not None):
        entry: dict[str, Any] = {"fingerprint": fingerprint.to_dict()}
        if speed is not None:
            entry["throughput"] = {phase: r.to_dict() for phase, r in speed.tests.items()}
            entry["runs"] = {phase: [r.to_dict()] for phase, r in speed.tests.items()}
            entry["bandwidth_gb_s"] = None if speed.bandwidth is None else speed.bandwidth / 1e9
        if memory is not None:
            entry["memory"] = memory.to_dict()
        record["machines"] = [entry]
    return record


def chunk_nll(stored: BaselineFile, variant: str, keys: dict[str, Any],
              ignore: tuple[str, ...]) -> NDArray[np.float64]:
    """The stored per-chunk NLL of ``variant``, after checking the quality keys."""
    record = stored.record(variant, keys, ignore)
    try:
        values = record["perplexity"]["chunk_nll"]
    except (KeyError, TypeError):
        raise BaselineError(f"{stored.path}: record of {variant} has no per-chunk NLL; recreate"
                            f" it with {UPDATE_FLAG}") from None
    return np.asarray(values, dtype=np.float64)


def task_correct(stored: BaselineFile, variant: str, keys: dict[str, Any],
                 ignore: tuple[str, ...], task: str) -> tuple[NDArray[np.bool_], str]:
    """The stored per-task correctness of ``variant`` on the task set ``task`` and the digest of
    the tasks it was scored on, after checking the keys its answers depend on (the model's
    bytes and llama.cpp)."""
    record = stored.record(variant, keys, ignore, SPEED_KEY_FIELDS)
    entry = record.get("tasks", {}).get(task) if isinstance(record.get("tasks"), dict) else None
    if not isinstance(entry, dict):
        raise BaselineError(f"{stored.path}: record of {variant} has no {task!r} task results;"
                            f" record them with {UPDATE_FLAG}")
    try:
        correct = unpack_bits(str(entry["correct"]), int(entry["n_tasks"]))
        return correct, str(entry["selection_sha256"])
    except (KeyError, TypeError, ValueError):
        raise BaselineError(f"{stored.path}: the {task!r} task results of {variant} are"
                            f" damaged; record them again with {UPDATE_FLAG}") from None


def text_chunk_nll(stored: BaselineFile, variant: str, keys: dict[str, Any],
                   ignore: tuple[str, ...], text: str,
                   text_keys: dict[str, str]) -> NDArray[np.float64]:
    """The stored per-chunk NLL of ``variant`` on the named text ``text``, after checking the
    run's keys (but the default text's) and the named text's own hash."""
    fields = tuple(f for f in KEY_FIELDS if f not in ("text_sha256", "tokens_sha256"))
    record = stored.record(variant, keys, ignore, fields)
    entry = record.get("texts", {}).get(text) if isinstance(record.get("texts"), dict) else None
    if not isinstance(entry, dict):
        raise BaselineError(f"{stored.path}: record of {variant} has no results on text {text!r};"
                            f" record them with {UPDATE_FLAG}")
    if "text_sha256" not in ignore and entry.get("text_sha256") != text_keys["text_sha256"]:
        raise BaselineError(
            f"{stored.path}: baseline was made with a different text {text!r}"
            f" ({_short(entry.get('text_sha256'))}, now {_short(text_keys['text_sha256'])});"
            f" refresh it with {UPDATE_FLAG} if the change is intended, or list text_sha256 in"
            " baseline_ignore")
    try:
        return np.asarray(entry["chunk_nll"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise BaselineError(f"{stored.path}: the {text!r} results of {variant} are damaged;"
                            f" record them again with {UPDATE_FLAG}") from None


def tensor_hashes(stored: BaselineFile, variant: str, keys: dict[str, Any],
                  ignore: tuple[str, ...]) -> dict[str, list[str]]:
    """The stored type and hash of each tensor of ``variant``, after checking only the base
    model's hash: the point is to compare what two llama.cpp builds write for it."""
    record = stored.record(variant, keys, ignore, ("model_sha256",))
    tensors = record.get("tensors")
    if not isinstance(tensors, dict) or not all(
            isinstance(v, list) and len(v) == 2 for v in tensors.values()):
        raise BaselineError(f"{stored.path}: record of {variant} has no tensor hashes; record"
                            f" them with {UPDATE_FLAG}")
    return {str(k): [str(v[0]), str(v[1])] for k, v in tensors.items()}


def throughput(stored: BaselineFile, variant: str, keys: dict[str, Any], ignore: tuple[str, ...],
               phase: str, here: Fingerprint, fingerprint_ignore: tuple[str, ...]
               ) -> list[BenchResult]:
    """The stored ``phase`` throughput runs of ``variant`` (oldest first) measured on a machine
    like ``here``; :class:`MeasuredElsewhere` if only other machines have one."""
    record = stored.record(variant, keys, ignore, SPEED_KEY_FIELDS)
    machines = [m for m in record.get("machines", []) if isinstance(m, dict)]
    measured = [m for m in machines if phase in m.get("runs", {})]
    if not measured:
        raise BaselineError(f"{stored.path}: no {phase} throughput baseline for {variant}; create"
                            f" it with {UPDATE_FLAG}")
    fingerprints = [Fingerprint.from_dict(m.get("fingerprint", {})) for m in measured]
    for entry, fp in zip(measured, fingerprints, strict=True):
        if not fp.differing(here, fingerprint_ignore):
            try:
                runs = [BenchResult.from_dict(r) for r in entry["runs"][phase]]
            except (KeyError, TypeError, ValueError):
                runs = []
            if not runs:
                raise BaselineError(
                    f"{stored.path}: the {phase} throughput record of {variant} is damaged;"
                    f" recreate it with {UPDATE_FLAG}")
            return runs
    nearest = min(fingerprints, key=lambda fp: len(fp.differing(here, fingerprint_ignore)))
    raise MeasuredElsewhere(nearest, here, nearest.differing(here, fingerprint_ignore))
