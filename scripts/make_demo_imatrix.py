"""Regenerate ``examples/imatrix/demo.imatrix.gguf``: llama.cpp's ``llama-imatrix`` run on the
built-in demo model over its TRAINING text (never the held-out evaluation text the gates score).

    python scripts/make_demo_imatrix.py [--llama-imatrix PATH] [--threads N]

``llama-imatrix`` is looked up as the benchmarks look up llama.cpp's tools: ``--llama-imatrix``,
then ``$QUANTCHECK_LLAMA_TOOLS/bin``, then ``<cache>/llama-tools/bin`` (where
``benchmarks/build_llama_tools.sh`` builds them from the llama.cpp that llama-cpp-python vendors),
then ``PATH``. The text is passed by its path relative to the repository root, so the file's
``imatrix.datasets`` entry is the same on every machine; the output does not depend on the thread
count. The tensor names and shapes follow the demo model's fixed architecture, so the file fits
the demo model wherever it is built.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN_TEXT = Path("src/pytest_quantcheck/demo/data/train.txt")  # relative to ROOT, as recorded
OUT = ROOT / "examples" / "imatrix" / "demo.imatrix.gguf"
N_CTX = 256  # the chunk length the demo model was fitted on and the example scores with


def find_tool(given: str | None) -> Path:
    if given:
        return Path(given)
    from pytest_quantcheck.cache import cache_root

    folders = []
    if os.environ.get("QUANTCHECK_LLAMA_TOOLS"):
        folders.append(Path(os.environ["QUANTCHECK_LLAMA_TOOLS"]) / "bin")
    folders.append(cache_root() / "llama-tools" / "bin")
    for folder in folders:
        if (folder / "llama-imatrix").exists():
            return folder / "llama-imatrix"
    found = shutil.which("llama-imatrix")
    if found is None:
        sys.exit("llama-imatrix not found: run benchmarks/build_llama_tools.sh, or pass"
                 " --llama-imatrix PATH")
    return Path(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-imatrix", help="path of llama.cpp's llama-imatrix binary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=OUT)
    args = parser.parse_args()

    from pytest_quantcheck.demo.model import demo_model_path
    from pytest_quantcheck.imatrix import load_imatrix

    tool = find_tool(args.llama_imatrix)
    model = demo_model_path(log=lambda msg: print(f"demo model: {msg}"))
    output = args.output.resolve()
    env = dict(os.environ)  # the tools' shared libraries sit next to them
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(tool.resolve().parent), env.get("LD_LIBRARY_PATH")) if p)
    cmd = [str(tool), "-m", str(model), "-f", str(TRAIN_TEXT), "-c", str(N_CTX), "-b", "2048",
           "-t", str(args.threads), "--no-ppl", "-o", str(output)]
    print(" ".join(cmd))
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        return result.returncode
    entries = load_imatrix(output)  # readable the way quantization reads it
    print(f"{output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}:"
          f" {len(entries)} tensors, {output.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
