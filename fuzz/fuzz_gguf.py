"""Fuzz the GGUF validator with mutated real models, then run what it accepts in llama.cpp.

    python fuzz/fuzz_gguf.py --cases 10000 --seed 0 [--json summary.json] [--jobs 2]

Seeds are the built-in demo model (F32) and its Q4_K_M variant (or ``--seed-file`` GGUFs). Each
case applies one mutation kind of ``gguf_mutations.py`` (round robin over the kinds, alternating
seeds; case N of a given ``--seed`` is always the same file) and checks that
:func:`~pytest_quantcheck.gguf_check.validate_gguf` and
:func:`~pytest_quantcheck.variants.check_gguf_path` either accept the file or raise the project's
one-line error naming it, never anything else.

Files the validator accepts are then run by llama.cpp in a child process, through the project's
crash isolation (:func:`pytest_quantcheck.backends.probe.probe`): the child loads the file and
decodes 64 tokens (``--load-only``: loads it, exactly what the probe does), and the outcome is
ok, a clean llama.cpp error, a crash (signal) while loading or decoding, a Python exception, or
a timeout. llama.cpp's mmap loader reads only the header and the file size, so accepted files
with the same header bytes and size are run once (mutations of tensor data all share the seed's
verdict); ``--load-budget`` bounds the time spent, on a random sample of distinct headers.

Exit status 1 when any case broke the contract (a non-GGUFError exception, a multi-line or
nameless message) or crashed llama.cpp; the files of those cases are kept in ``--findings``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf_mutations import MUTATORS, Layout, header_fields, mutate

from pytest_quantcheck.backends import BackendError, RunOptions
from pytest_quantcheck.backends.probe import probe
from pytest_quantcheck.gguf_check import validate_gguf
from pytest_quantcheck.gguf_file import GGUFError
from pytest_quantcheck.variants import VariantError, check_gguf_path

CLEAN = ("ok", "load error", "decode error")  # what llama.cpp may do with a file we accept
CHILD_MEMORY = 4 << 30  # address space of each llama.cpp child: a runaway allocation fails there
DECODE_TEXT = b"The quick brown fox jumps over the lazy dog, and then it runs away. " * 8


@dataclass(frozen=True)
class Seed:
    name: str
    path: Path
    data: bytes
    layout: Layout


@dataclass
class Case:
    index: int
    kind: str
    seed: str
    what: str
    verdict: str = ""  # accepted, rejected, BUG
    message: str = ""
    validate_s: float = 0.0
    load_key: str | None = None
    llama: str | None = None  # an outcome of run_child(); None: not run
    detail: str = ""


@dataclass
class Run:
    cases: list[Case] = field(default_factory=list)
    findings: list[Case] = field(default_factory=list)


def make_case(seeds: Sequence[Seed], base_seed: int, index: int) -> tuple[Case, bytes]:
    kinds = list(MUTATORS)
    kind = kinds[index % len(kinds)]
    seed = seeds[(index // len(kinds)) % len(seeds)]
    rng = random.Random(f"{base_seed}:{index}")
    _, blob, what = mutate(rng, seed.data, seed.layout, kind)
    return Case(index, kind, seed.name, what), blob


def validate(case: Case, path: Path, blob: bytes) -> None:
    """The validator's verdict on one file; anything but GGUFError (or VariantError from the
    user-facing check) is a bug, and so is a message without the path or over several lines."""
    start = time.perf_counter()
    data_offset = None
    try:
        data_offset = validate_gguf(path).data_offset
        case.verdict = "accepted"
    except GGUFError as exc:
        case.verdict, case.message = "rejected", str(exc)
    except Exception:
        case.verdict, case.message = "BUG", traceback.format_exc()
    case.validate_s = time.perf_counter() - start
    if case.verdict == "BUG":
        return
    try:
        check_gguf_path(path)
        user, user_message = "accepted", ""
    except (GGUFError, VariantError) as exc:  # VariantError: not GGUF at all (the magic)
        user, user_message = "rejected", str(exc)
    except Exception:
        case.verdict, case.message = "BUG", traceback.format_exc()
        return
    bad = [m for m in (case.message, user_message) if m and (str(path) not in m or "\n" in m)]
    if user != case.verdict:
        case.verdict, case.message = "BUG", f"validate_gguf {case.verdict}, check_gguf_path {user}"
    elif bad:
        case.verdict = "BUG"
        case.message = f"the message does not name the file in one line: {bad[0]!r}"
    elif data_offset is not None:
        digest = hashlib.sha256(blob[:data_offset]).hexdigest()
        case.load_key = f"{digest}:{len(blob)}"


def child(mode: str, path: Path) -> int:
    """A llama.cpp child run by probe(): it loads the file and, in mode ``decode``, decodes 64
    tokens; its progress goes to ``<path>.outcome`` (so a crash is placed), its exit status to
    probe (0 fine, 1 clean error; a signal is probe's to see)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = CHILD_MEMORY if hard == resource.RLIM_INFINITY else min(CHILD_MEMORY, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    report = Path(f"{path}.outcome")
    stage = "load"
    try:
        from pytest_quantcheck.backends.llamacpp import LoadedLlamaCpp

        model = LoadedLlamaCpp(path, RunOptions(n_threads=1))
        if mode == "decode":
            import numpy as np

            stage = "decode"
            report.write_text("decode\n")
            tokens = model.tokenize(DECODE_TEXT)
            if len(tokens) == 0:
                raise BackendError(f"{path}: the text tokenizes to nothing")
            ctx = model.open_context(64, 1, 64)
            ctx.score_chunks(np.resize(tokens, 64)[None, :].astype(np.int32), 32)
            ctx.close()
        model.close()
        report.write_text("ok\n")
        return 0
    except (BackendError, ValueError) as exc:
        report.write_text(f"{stage} error\n{exc}")
        return 1
    except BaseException:
        report.write_text(f"{stage} exception\n{traceback.format_exc()}")
        return 1


def run_child(mode: str, path: Path, version: str, timeout: float) -> tuple[str, str]:
    """One isolated llama.cpp run through the project's probe(), with a private record dir:
    ``ok``, ``load error``, ``load crash SIGABRT``, ``decode error``, ``decode crash SIGSEGV``,
    ``... exception`` or ``timeout``, and the message."""
    root = Path(tempfile.mkdtemp(dir=path.parent, prefix="probe-"))
    report = Path(f"{path}.outcome")
    report.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode]
    try:
        probe(path, f"{version} {mode}", command=command, root=root, timeout=timeout)
    except BackendError as exc:
        crashed = re.search(r"crashed \((\w+)\)", str(exc))
        stage = "decode" if report.exists() and report.read_text().startswith("decode") else "load"
        return (f"{stage} crash {crashed.group(1)}" if crashed else "timeout"), str(exc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    try:
        outcome, _, detail = report.read_text().partition("\n")
    except OSError:
        return "load exception", "the child exited with an error before reporting"
    return outcome, detail


def load_all(run: Run, seeds: Sequence[Seed], args: argparse.Namespace, work: Path,
             version: str) -> dict[str, Any]:
    by_key: dict[str, list[Case]] = defaultdict(list)
    for case in run.cases:
        if case.load_key is not None:
            by_key[case.load_key].append(case)
    keys = list(by_key)
    random.Random(args.seed).shuffle(keys)
    if args.max_loads is not None:
        keys = keys[: args.max_loads]
    deadline = time.monotonic() + args.load_budget
    times: list[float] = []

    def one(key: str) -> None:
        if time.monotonic() > deadline:
            return
        first = by_key[key][0]
        _, blob = make_case(seeds, args.seed, first.index)
        path = work / f"load-{first.index:05d}.gguf"
        path.write_bytes(blob)
        start = time.perf_counter()
        outcome, detail = run_child("load" if args.load_only else "decode", path, version,
                                    args.timeout)
        times.append(time.perf_counter() - start)
        for case in by_key[key]:
            case.llama, case.detail = outcome, detail
        if outcome not in CLEAN:
            keep(first, blob, args.findings)
        path.unlink(missing_ok=True)
        Path(f"{path}.outcome").unlink(missing_ok=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, keys))
    return {"unique_headers": len(by_key), "loaded": len(times),
            "seconds_per_load": statistics.mean(times) if times else None}


def keep(case: Case, blob: bytes, findings: Path) -> None:
    findings.mkdir(parents=True, exist_ok=True)
    (findings / f"case-{case.index:05d}-{case.kind}.gguf").write_bytes(blob)


def table(run: Run) -> list[str]:
    columns = ["cases", "rejected", "accepted", "BUG", "ok", "load error", "load crash",
               "decode error", "decode crash", "exception", "timeout", "not run"]
    rows: dict[str, Counter[str]] = {kind: Counter() for kind in MUTATORS}
    for case in run.cases:
        row = rows[case.kind]
        row["cases"] += 1
        row[case.verdict] += 1
        if case.verdict == "accepted":
            outcome = case.llama or "not run"
            row[" ".join(outcome.split()[:2]) if "crash" in outcome
                else "exception" if "exception" in outcome else outcome] += 1
    total: Counter[str] = Counter()
    for row in rows.values():
        total.update(row)
    rows["total"] = total
    lines = ["| kind | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kind, row in rows.items():
        lines.append(f"| {kind} | " + " | ".join(str(row[c]) for c in columns) + " |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seed-file", type=Path, action="append",
                        help="GGUF files to mutate (default: the demo model and its Q4_K_M)")
    parser.add_argument("--json", type=Path, help="write the summary and findings as JSON here")
    parser.add_argument("--load-only", action="store_true",
                        help="only load accepted files, as the probe does (default: load and"
                        " decode 64 tokens)")
    parser.add_argument("--max-loads", type=int, default=None,
                        help="load at most this many distinct accepted headers (default: all)")
    parser.add_argument("--load-budget", type=float, default=600.0,
                        help="stop starting llama.cpp children after this many seconds")
    parser.add_argument("--jobs", type=int, default=1, help="llama.cpp children at a time")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per child")
    parser.add_argument("--findings", type=Path,
                        default=Path(tempfile.gettempdir()) / "quantcheck-fuzz-findings",
                        help="where files of failing cases are kept")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], Path(args.child[1]))

    os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # a crashing child attaches no debugger
    seeds = load_seeds(args.seed_file)
    from pytest_quantcheck.backends.llamacpp import LlamaCppBackend

    version = LlamaCppBackend.version
    shm = Path("/dev/shm")
    work = Path(tempfile.mkdtemp(prefix="quantcheck-fuzz-",
                                 dir=shm if os.access(shm, os.W_OK) else None))
    run = Run()
    try:
        start = time.perf_counter()
        for index in range(args.cases):
            case, blob = make_case(seeds, args.seed, index)
            path = work / f"case-{index:05d}.gguf"
            path.write_bytes(blob)
            validate(case, path, blob)
            path.unlink()
            run.cases.append(case)
            if case.verdict == "BUG":
                keep(case, blob, args.findings)
        validate_s = time.perf_counter() - start
        start = time.perf_counter()
        loads = load_all(run, seeds, args, work, version)
        load_s = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    run.findings = [c for c in run.cases
                    if c.verdict == "BUG" or (c.llama is not None and c.llama not in CLEAN)]
    times = sorted(c.validate_s for c in run.cases)
    timing = {
        "validation_phase_s": validate_s,
        "per_case_ms": 1000 * validate_s / max(1, args.cases),
        "validate_mean_ms": 1000 * statistics.mean(times),
        "validate_p99_ms": 1000 * times[int(0.99 * (len(times) - 1))],
        "validate_max_ms": 1000 * times[-1],
        "llama_cpp_phase_s": load_s,
        "seconds_per_llama_cpp_file": loads["seconds_per_load"],
    }
    lines = table(run)
    print(f"quantcheck GGUF fuzz: {args.cases} cases, seed {args.seed}, seeds"
          f" {', '.join(f'{s.name} ({len(s.data)} bytes)' for s in seeds)}; {version}")
    print("\n".join(lines))
    print(f"validation: {timing['per_case_ms']:.2f} ms per case (write + validate_gguf +"
          f" check_gguf_path), validate_gguf mean {timing['validate_mean_ms']:.2f} ms,"
          f" p99 {timing['validate_p99_ms']:.2f} ms, max {timing['validate_max_ms']:.1f} ms")
    each = f"{loads['seconds_per_load']:.2f} s each" if loads["loaded"] else "none"
    print(f"llama.cpp: {loads['unique_headers']} distinct accepted headers, {loads['loaded']} run"
          f" in isolated children ({each}, {load_s:.0f} s), "
          + ("load" if args.load_only else "load and decode 64 tokens"))
    for case in run.findings[:20]:
        print(f"FINDING case {case.index} ({case.kind}, {case.seed}: {case.what}):"
              f" {case.verdict} {case.llama or ''}"
              f" {(case.message or case.detail).strip().splitlines()[-1:]}")
    if run.findings:
        print(f"{len(run.findings)} findings; their files are in {args.findings}")
    if args.json:
        args.json.write_text(json.dumps({
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "cases": args.cases, "seed": args.seed, "llama_cpp": version,
            "seeds": [{"name": s.name, "path": str(s.path), "bytes": len(s.data),
                       "sha256": hashlib.sha256(s.data).hexdigest()} for s in seeds],
            "table": lines, "timing": timing, "llama_cpp_runs": loads,
            "findings": [vars(c) for c in run.findings],
        }, indent=1))
    return 1 if run.findings else 0


def load_seeds(files: Sequence[Path] | None) -> list[Seed]:
    if not files:
        from pytest_quantcheck.backends import default_backend
        from pytest_quantcheck.demo.model import demo_model_path
        from pytest_quantcheck.variants import quantize

        demo = demo_model_path()
        files = [demo, quantize(demo, "Q4_K_M", backend=default_backend()).path]
    seeds = []
    for path in files:
        data = path.read_bytes()
        validate_gguf(path)  # a seed must be sound
        name = path.stem.split("-")[-2] if "-Q" in path.stem else path.stem
        seeds.append(Seed(name, path, data, header_fields(data)))
    return seeds


if __name__ == "__main__":
    sys.exit(main())
