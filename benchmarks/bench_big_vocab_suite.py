"""Real vocabularies, the plugin: a 3-variant quality suite at a 262,144-token vocabulary, its
time, peak memory and where the memory goes, next to the same work done by hand with
llama-perplexity.

    python benchmarks/bench_big_vocab_suite.py [--model F16.gguf] [--vocab 262144] [-c 512]
        [--chunks 4] [-t 2] [-r 1] [--variants Q8_0,Q4_K_M,Q2_K] [--work DIR] [--no-trace]

The base model is ``--model`` or, without it, the synthetic F16 model ``bench_big_vocab.py``
builds (random weights, a generated tokenizer; nothing is downloaded). Each variant is quantized
once with ``llama-quantize`` into ``--work``; both sides evaluate the same files, so neither
side's time includes quantizing.

* **The plugin suite**: a temporary folder with a ``pyproject.toml`` (model, the variants'
  files, the demo's evaluation text, ``n_ctx``, ``chunks``, ``threads``) and one test gated by
  ``perplexity_within`` and ``kl_divergence_at_most`` per variant, run as ``python -m pytest``
  in a subprocess with a fresh result cache (file hashes and crash probes kept, as in a user's
  second run). Peak RSS is that of the process tree: the run's own high-water mark
  (``VmHWM``, exact, written by ``suite_memory_probe.py`` as pytest exits), the largest
  process of the tree (``wait4``'s ``ru_maxrss``, exact) and the tree's summed ``VmRSS``
  sampled from ``/proc`` every 50 ms (children included: the plugin runs probes and memory
  measurements in child processes); the largest of the three is reported.
* **By hand**: ``llama-perplexity --kl-divergence-base`` on the base (its perplexity and the
  KLD base file), then ``--kl-divergence`` per variant (each variant's perplexity and KLD):
  times added, the largest peak (``ru_maxrss``; the runs follow each other).
* **Where the plugin's memory goes**: a second, instrumented run of the suite
  (``suite_memory_probe.py`` with tracing: ``/proc/self/smaps`` by kind of mapping and
  ``tracemalloc``, every 0.2 s); figures llama.cpp holds in its own buffers are derived from
  the model's shape and labelled so. ``--no-trace`` skips it.

The values (each variant's perplexity and mean KLD) are printed side by side, so the table
shows the two sides did the same work. The llama.cpp tools are found as ``bench_big_vocab.py``
finds them (``$QUANTCHECK_LLAMA_TOOLS/bin``, the cache, ``PATH``).
"""

from __future__ import annotations

import argparse
import json
import linecache
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_big_vocab import build_models, grab
from bench_perplexity import find_llama_perplexity, measure

from pytest_quantcheck.backends.probe import probe
from pytest_quantcheck.demo.model import data_path
from pytest_quantcheck.gguf_file import read_gguf
from pytest_quantcheck.metrics.logprobs import ROW_BLOCK

HERE = Path(__file__).parent
MiB = 2**20

TEST_FILE = '''"""The benchmark's suite: every variant gated as the demo suite gates it. The model has random
weights, so the limits are loose: the gates are here to make the plugin do its work."""

import pytest


@pytest.mark.perplexity_within(pct={pct})
@pytest.mark.kl_divergence_at_most({kld})
def test_variant_quality(quant_model):
    assert quant_model.size_bytes > 0
'''


def quantized(tools: Path, f16: Path, ftype: str, work: Path) -> Path:
    """``f16`` quantized to ``ftype`` by ``llama-quantize``, once."""
    dest = work / f"{f16.stem.removesuffix('-f16')}-{ftype.lower()}.gguf"
    if not dest.exists():
        subprocess.run([str(tools / "llama-quantize"), str(f16), str(dest), ftype], check=True,
                       capture_output=True)
    return dest


def write_suite(folder: Path, base: Path, variants: list[Path], args: argparse.Namespace) -> None:
    listed = ", ".join(json.dumps(str(v)) for v in variants)
    (folder / "pyproject.toml").write_text(f"""[tool.pytest.ini_options]
addopts = ["-p", "suite_memory_probe", "-p", "no:cacheprovider"]

[tool.quantcheck]
model = {json.dumps(str(base))}
variants = [{listed}]
eval_text = {json.dumps(str(data_path("eval.txt")))}
n_ctx = {args.ctx_size}
n_batch = 2048
chunks = {args.chunks}
threads = {args.threads}
sequential = false  # every chunk, as llama-perplexity decodes every chunk
baseline_dir = "baselines"
""", encoding="utf-8")
    (folder / "test_big_vocab_suite.py").write_text(
        TEST_FILE.format(pct=args.ppl_pct, kld=args.kld_limit), encoding="utf-8")


def tree_rss(root: int) -> int:
    """Summed VmRSS of ``root`` and its descendants, from /proc (no psutil)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    members, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in members} - members
        members |= more
        grew = bool(more)
    total = 0
    for pid in members:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
        total += int(match.group(1)) * 1024 if match else 0
    return total


def run_suite(folder: Path, env: dict[str, str], trace: bool) -> dict[str, Any]:
    """One pytest run of the suite: seconds, peaks, its probe's JSON and its report."""
    probe_out, report = folder / "probe.json", folder / "report.json"
    run_env = {**env, "QC_SUITE_PROBE": str(probe_out), "QC_SUITE_TRACE": "1" if trace else "0"}
    cmd = [sys.executable, "-m", "pytest", "-c", str(folder / "pyproject.toml"), "--rootdir",
           str(folder), str(folder), "--quant-json", str(report)]
    for sub in ("reference", "results"):  # every run builds its reference and results anew
        shutil.rmtree(Path(env["QUANTCHECK_CACHE_DIR"]) / sub, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=run_env,
                            cwd=folder)
    sampled, done = [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            sampled[0] = max(sampled[0], tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if os.waitstatus_to_exitcode(status) not in (0, 1):  # 1: a gate failed; still measured
        raise SystemExit(f"the suite run failed:\n{out[-3000:]}")
    data = json.loads(probe_out.read_text())
    hwm, largest = data["vm_hwm"], usage.ru_maxrss * 1024
    return {"seconds": seconds, "peak": max(hwm, largest, sampled[0]), "hwm": hwm,
            "largest": largest, "sampled": sampled[0], "probe": data, "output": out,
            "report": json.loads(report.read_text())}


def llama_by_hand(llama_ppl: Path, base: Path, variants: list[Path], ppl_args: list[str],
                  base_file: Path) -> dict[str, Any]:
    """The base run writing the KLD base, then one KLD run per variant."""
    runs = [measure([str(llama_ppl), "-m", str(base), *ppl_args, "--kl-divergence-base",
                     str(base_file)])]
    for variant in variants:
        runs.append(measure([str(llama_ppl), "-m", str(variant), *ppl_args,
                             "--kl-divergence-base", str(base_file), "--kl-divergence"]))
    base_file.unlink(missing_ok=True)
    return {"seconds": sum(r[0] for r in runs), "peak": max(r[1] for r in runs) * MiB,
            "runs": runs}


def model_values(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The models table entry of ``name`` in a --quant-json report."""
    if name not in report["models"]:
        raise SystemExit(f"{name} not in the report's models: {sorted(report['models'])}")
    return dict(report["models"][name])


def number(entry: dict[str, Any], key: str, field: str) -> float:
    value = entry.get(key, {}).get(field)
    if not isinstance(value, int | float):
        raise SystemExit(f"no {key}.{field} in the report's model entry {entry}")
    return float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="base F16 model (default: build the synthetic one in --work)")
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--logit-scale", type=float, default=6.0)
    parser.add_argument("-c", "--ctx-size", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("-t", "--threads", type=int, default=2)
    parser.add_argument("-r", "--repetitions", type=int, default=1)
    parser.add_argument("--variants", default="Q8_0,Q4_K_M,Q2_K")
    parser.add_argument("--ppl-pct", type=float, default=1e6, help="perplexity_within(pct=)")
    parser.add_argument("--kld-limit", type=float, default=100.0, help="kl_divergence_at_most")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "qc-big-vocab")
    parser.add_argument("--no-trace", action="store_true",
                        help="skip the instrumented run that says where the memory goes")
    args = parser.parse_args()
    llama_ppl = find_llama_perplexity()
    if llama_ppl is None:  # the by-hand side is the point of the comparison
        raise SystemExit("llama-perplexity not found: run benchmarks/build_llama_tools.sh first")
    tools = llama_ppl.parent
    args.work.mkdir(parents=True, exist_ok=True)
    base = args.model or build_models(args.work, args.vocab, args.logit_scale, tools)[0]
    variants = [quantized(tools, base, t, args.work) for t in args.variants.split(",")]
    qc_cache = args.work / "suite-cache"
    from pytest_quantcheck.backends.llamacpp import LlamaCppBackend

    for model in (base, *variants):  # a user's first run hashes and probes each file once
        probe(model, LlamaCppBackend.version, root=qc_cache)
    env = {**os.environ, "QUANTCHECK_CACHE_DIR": str(qc_cache),
           "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH"))
                                         if p)}
    ppl_args = ["-f", str(data_path("eval.txt")), "-c", str(args.ctx_size), "-b", "2048", "-t",
                str(args.threads), "--chunks", str(args.chunks)]
    with tempfile.TemporaryDirectory(prefix="qc-suite-") as tmp:
        folder = Path(tmp)
        write_suite(folder, base, variants, args)
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        for rep in range(args.repetitions):
            order = ("ours", "theirs") if rep % 2 == 0 else ("theirs", "ours")
            for side in order:  # alternate who goes first: load drifts on a shared machine
                if side == "ours":
                    ours.append(run_suite(folder, env, trace=False))
                else:
                    theirs.append(llama_by_hand(llama_ppl, base, variants, ppl_args,
                                                args.work / "llama-kld-base.bin"))
                done = (ours if side == "ours" else theirs)[-1]
                print(f"# {side} rep {rep + 1}: {done['seconds']:.1f} s,"
                      f" {done['peak'] / MiB:.0f} MiB", file=sys.stderr)
        traced = None if args.no_trace else run_suite(folder, env, trace=True)
    print_tables(args, base, variants, ours, theirs, traced)
    return 0


def print_tables(args: argparse.Namespace, base: Path, variants: list[Path],
                 ours: list[dict[str, Any]], theirs: list[dict[str, Any]],
                 traced: dict[str, Any] | None) -> None:
    meta = read_gguf(base).metadata
    arch = str(meta["general.architecture"])
    n_vocab = len(meta["tokenizer.ggml.tokens"])
    n_layer, n_embd = int(meta[f"{arch}.block_count"]), int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    n_embd_kv = n_embd * int(meta.get(f"{arch}.attention.head_count_kv", heads)) // heads
    sizes = ", ".join(f"{v.stem.rsplit('-', 1)[-1].upper()} {v.stat().st_size / MiB:.0f} MiB"
                      for v in variants)
    print(f"model: {base.name}, {n_vocab:,} tokens, {base.stat().st_size / MiB:.0f} MiB;"
          f" variants {sizes}; n_ctx {args.ctx_size}, {args.chunks} chunks, {args.threads}"
          f" threads; {args.repetitions} alternating repetition(s), median (min-max)")

    def spread(values: list[float], fmt: str) -> str:
        if len(values) == 1:
            return f"{values[0]:{fmt}}"
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    def ratio(a: list[float], b: list[float]) -> str:
        return f"{statistics.median(b) / statistics.median(a):.2f}x"

    t_theirs, t_ours = [r["seconds"] for r in theirs], [r["seconds"] for r in ours]
    m_theirs, m_ours = [r["peak"] / MiB for r in theirs], [r["peak"] / MiB for r in ours]
    steps = " + ".join(f"{s:.1f}" for s, _, _ in theirs[-1]["runs"])
    print("| measure | llama-perplexity by hand | plugin suite | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| time, s | {spread(t_theirs, '.1f')} (last: {steps}) | {spread(t_ours, '.1f')} |"
          f" {ratio(t_theirs, t_ours)} |")
    print(f"| peak RSS, MiB | {spread(m_theirs, '.0f')} (largest run) | {spread(m_ours, '.0f')}"
          f" (process tree) | {ratio(m_theirs, m_ours)} |")
    last = ours[-1]
    print(f"| plugin peak: own VmHWM / largest process (wait4) / tree sampled, MiB | |"
          f" {last['hwm'] / MiB:.0f} / {last['largest'] / MiB:.0f} / {last['sampled'] / MiB:.0f}"
          " | |")
    outs = [r[2] for r in theirs[-1]["runs"]]
    report = last["report"]
    base_ppl = grab(r"Final estimate: PPL = ([0-9.]+)", outs[0], "llama-perplexity")
    ours_base = number(model_values(report, "base"), "perplexity", "ppl")
    print(f"| perplexity, {base.stem} | {base_ppl:.4f} | {ours_base:.4f} |"
          f" {ours_base / base_ppl - 1:+.1e} |")
    for variant, out in zip(variants, outs[1:], strict=True):
        name = variant.stem.rsplit("-", 1)[-1].upper()
        entry = model_values(report, variant.stem)
        ppl = grab(r"Mean PPL\(Q\)\s*:\s*([0-9.e+]+)", out, "llama-perplexity")
        kld = grab(r"Mean\s+KLD:\s+([0-9.]+)", out, "llama-perplexity")
        mine_ppl, mine_kld = number(entry, "perplexity", "ppl"), number(entry, "kl_divergence", "mean")
        print(f"| perplexity, {name} | {ppl:.4f} | {mine_ppl:.4f} | {mine_ppl / ppl - 1:+.1e} |")
        print(f"| mean KLD, {name} | {kld:.6f} (16-bit base) | {mine_kld:.6f} |"
              f" {mine_kld / kld - 1:+.2%} |")
    lines = last["output"].splitlines()
    first = next((i for i, line in enumerate(lines) if "quantcheck steps" in line), len(lines))
    print(f"plugin run: {[line for line in lines if line.startswith('=')][-1]}")
    for line in lines[first + 1:]:  # where its time went, as the plugin reports it
        if line.startswith("="):
            break
        print(f"  {line}")
    if traced is not None:
        print_breakdown(args, traced, n_vocab, n_layer, n_embd_kv, len(variants))


def print_breakdown(args: argparse.Namespace, traced: dict[str, Any], n_vocab: int,
                    n_layer: int, n_embd_kv: int, n_variants: int) -> None:
    data = traced["probe"]
    samples: list[dict[str, float]] = data["samples"]
    start, peak = samples[0], max(samples, key=lambda s: s["rss"])
    scored = args.ctx_size - args.ctx_size // 2
    logits = scored * n_vocab * 4
    kv = 2 * n_layer * args.ctx_size * n_embd_kv * 2  # K and V, F16, one chunk's context
    blocks = args.threads * ROW_BLOCK * n_vocab * 4
    ours = peak["traced"] - start["traced"]
    llama = peak["anon"] - start["anon"] - ours - data["tracemalloc_own"]
    print()
    print(f"Where the plugin's memory goes (instrumented run: {traced['seconds']:.0f} s,"
          f" peak {traced['peak'] / MiB:.0f} MiB; samples every 0.2 s of /proc/self/smaps and"
          f" tracemalloc; at the sample of the largest RSS, t = {peak['t']:.0f} s)")
    print("| part | MiB | how |")
    print("|---|---:|---|")
    rows = [
        ("pytest process, resident at the peak sample", peak["rss"], "measured (VmRSS)"),
        ("model weights: mapped .gguf pages resident", peak["weights"],
         f"measured (smaps); largest over the run {max(s['weights'] for s in samples) / MiB:.0f}"),
        ("stored reference: mapped cache pages resident", peak["store"],
         f"measured (smaps); largest {max(s['store'] for s in samples) / MiB:.0f}"),
        ("ours: Python objects and NumPy arrays, grown since start", ours,
         f"measured (tracemalloc); largest {(data['traced_peak'] - start['traced']) / MiB:.0f}"),
        (f"  of it: scoring blocks, {args.threads} threads x {ROW_BLOCK} rows x n_vocab float32",
         blocks, "derived"),
        ("llama.cpp's buffers: anonymous growth less ours and tracemalloc's own", llama,
         "by difference (smaps, tracemalloc)"),
        (f"  of it: logits buffer, {scored} scored rows x n_vocab x 4 B (one chunk)", logits,
         "derived"),
        (f"  of it: the output projection's result in the compute buffer, {scored} rows x"
         " n_vocab x 4 B", logits, "derived"),
        (f"  of it: KV cache, 2 x {n_layer} layers x {args.ctx_size} x {n_embd_kv} x F16", kv,
         "derived"),
        ("  llama-perplexity -b 2048 for comparison: logits of 4 chunks", 4 * logits, "derived"),
        ("interpreter, pytest, NumPy, llama-cpp-python (anonymous, at start)", start["anon"],
         "measured (smaps)"),
        ("shared libraries and other mapped files", peak["files"], "measured (smaps)"),
        ("tracemalloc's own bookkeeping (not in a timed run)", data["tracemalloc_own"],
         "measured"),
    ]
    for what, value, how in rows:
        print(f"| {what} | {value / MiB:.0f} | {how} |")
    print(f"NumPy allocation sites at the largest traced moment ({n_variants} variants):")
    for site, size in data["numpy_sites"]:
        file, _, line = site.rpartition(":")
        code = linecache.getline(file, int(line)).strip() if line.isdigit() else ""
        print(f"  {size / MiB:8.1f} MiB  {Path(file).name}:{line}  {code}")


if __name__ == "__main__":
    sys.exit(main())
