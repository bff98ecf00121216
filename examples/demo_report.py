"""What quantization costs the built-in demo model: the main job behind `make demo`.

Builds the demo model (once, cached), quantizes it to a few llama.cpp types (cached by content),
and prints perplexity and KL divergence against the F32 base with the same protocol as
`llama-perplexity`. It uses only the public engine API, so it doubles as an example of it.
"""

from __future__ import annotations

import sys
import time

from pytest_quantcheck.backends import default_backend
from pytest_quantcheck.demo.model import data_path, demo_model_path
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.variants import quantize

TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]


def main() -> int:
    t0 = time.perf_counter()
    backend = default_backend()
    engine = Engine(backend)
    base = demo_model_path(backend, log=lambda msg: print(f"  demo model: {msg}"))
    text = data_path("eval.txt")
    proto = ScoringProtocol(n_ctx=256, n_batch=2048)
    ref = engine.perplexity(base, text, proto)
    print(f"base  {base.name}: PPL {ref.ppl:.4f} ± {ref.ppl_err:.4f} over {ref.n_tokens} tokens"
          f" ({ref.n_chunks} chunks of {proto.n_ctx})")
    print(f"{'type':8} {'MiB':>6} {'PPL':>9} {'PPL ratio':>16} {'mean KLD':>18} {'same top':>10}")
    for name in TYPES:
        variant = quantize(base, name, backend=backend)
        res = engine.kl_divergence(base, variant.path, text, proto)
        print(f"{name:8} {variant.size_bytes / 2**20:6.2f} {res.ppl.value:9.4f}"
              f" {res.ppl_ratio.value:8.4f} ± {res.ppl_ratio.err:.4f}"
              f" {res.kld.value:9.6f} ± {res.kld.err:.6f} {100 * res.same_top.value:9.2f}%")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
