"""An assertion helper against the marker with the same arguments, on a real model: both are
decided by the run's one decider, so the helper decodes no more chunks than the marker.

    python benchmarks/bench_helper_looks.py [--model M.gguf] [--text T.txt] [-c 256]
                                            [--variant Q8_0] [--pct 1] [--mode prove]

Two fresh pytest processes over the same project and cache folder (the variant is built once;
per-chunk results and the reference's log-probabilities are removed before each run): one with
``@pytest.mark.perplexity_within(pct=...)`` under ``--quant-mode``, one with
``assert_perplexity_within(quantize(variant), pct=..., mode=...)``. Prints the chunks each
decoded for the variant, the chunks the decision rests on, and the verdicts, side by side.
Defaults: the built-in demo model and its held-out text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MARKER = """
import pytest

@pytest.mark.perplexity_within(pct={pct})
def test_gate(quant_model):
    pass
"""

HELPER = """
from pytest_quantcheck.assertions import assert_perplexity_within

def test_gate(quantize):
    assert_perplexity_within(quantize("{variant}"), pct={pct}, mode="{mode}")
"""


def run(project: Path, cache: Path, suite: str, *flags: str) -> dict[str, object]:
    (project / "test_suite.py").write_text(suite)
    shutil.rmtree(cache / "results", ignore_errors=True)
    shutil.rmtree(cache / "reference", ignore_errors=True)
    env = {**os.environ, "QUANTCHECK_CACHE_DIR": str(cache)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "--quant-json", "report.json", *flags], cwd=project, env=env,
                   capture_output=True, text=True, check=False)
    data: dict[str, object] = json.loads((project / "report.json").read_text())
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--text", type=Path, default=None)
    parser.add_argument("-c", "--ctx-size", type=int, default=256)
    parser.add_argument("--variant", default="Q8_0")
    parser.add_argument("--pct", type=float, default=1.0)
    parser.add_argument("--mode", default="prove", choices=("detect", "prove"))
    args = parser.parse_args()
    if args.model is None:
        from pytest_quantcheck.demo.model import data_path, demo_model_path

        args.model, args.text = demo_model_path(), args.text or data_path("eval.txt")
    work = Path(tempfile.mkdtemp(prefix="bench-helper-"))
    project, cache = work / "project", work / "cache"
    project.mkdir()
    shutil.copyfile(args.text, project / "eval.txt")
    (project / "pyproject.toml").write_text(
        f'[tool.quantcheck]\nmodel = "{args.model}"\neval_text = "eval.txt"\n'
        f'variants = ["{args.variant}"]\nn_ctx = {args.ctx_size}\n')
    pct = f"{args.pct:g}"
    runs = {"marker": run(project, cache, MARKER.format(pct=pct), "--quant-mode", args.mode),
            "helper": run(project, cache, HELPER.format(variant=args.variant, pct=pct,
                                                        mode=args.mode))}
    print(f"| perplexity_within(pct={pct}), mode {args.mode}, {args.variant} | chunks decoded"
          " | decided on | verdict |")
    print("|---|---:|---|---|")
    for name, data in runs.items():
        models: dict[str, dict[str, object]] = data["models"]  # type: ignore[assignment]
        checks: list[dict[str, object]] = data["checks"]  # type: ignore[assignment]
        (check,) = [c for c in checks if c["variant"] == args.variant]
        print(f"| {name} | {models[args.variant]['chunks_decoded']} |"
              f" {check['n']} of {check['n_available']} chunks | {check['verdict']} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
