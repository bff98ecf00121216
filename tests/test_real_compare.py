"""Issue 14's capabilities together on the demo model: a recipe variant, KL divergence from
another variant, a second evaluation text and the macro average, tensors against another variant,
the tensor-type table and the plot; the numbers checked against the engine's own computation on
this machine (llama.cpp's last digits are the CPU's, never pinned)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.real
SRC = Path(__file__).resolve().parent.parent / "src" / "pytest_quantcheck"


def test_recipe_texts_kl_from_a_variant_and_tensors(pytester: pytest.Pytester, demo_model: Path,
                                                    demo_text: Path, real_cache: Path) -> None:
    from pytest_quantcheck.backends import default_backend
    from pytest_quantcheck.engine import Engine
    from pytest_quantcheck.evaluation import ScoringProtocol
    from pytest_quantcheck.variants import quantize

    code = pytester.path / "code.txt"  # this package's own sources: a second kind of text
    code.write_text("".join(p.read_text() for p in sorted(SRC.glob("*.py"))))
    pytester.makepyprojecttoml(
        f'[tool.quantcheck]\nmodel = "{demo_model}"\nn_ctx = 256\nchunks = 24\n'
        f'eval_text = {{ prose = "{demo_text}", code = "code.txt" }}\n'
        'variants = ["Q8_0", "Q4_K_M", { name = "Q4_K_M-q8embed", type = "Q4_K_M",'
        ' token_embedding_type = "Q8_0" }]\n')
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.kl_divergence_at_most(0.05, of="Q8_0")
        @pytest.mark.perplexity_within(pct=5, text="macro")
        @pytest.mark.tensors_unchanged(of="Q4_K_M")
        def test_gate(quant_model):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--quant-sequential", "false", "--quant-json",
                                           "r.json", "--quant-plot", "p.png")
    result.assert_outcomes(failed=3)  # each variant fails one of the three, as expected below
    report = json.loads((pytester.path / "r.json").read_text())
    by = {(c["variant"], c["check"].split("(")[0]): c for c in report["checks"]}
    verdicts = {k: c["verdict"] for k, c in by.items()}
    assert verdicts == {
        ("Q8_0", "kl_divergence_at_most"): "pass", ("Q8_0", "perplexity_within"): "pass",
        ("Q8_0", "tensors_unchanged"): "fail",
        ("Q4_K_M", "kl_divergence_at_most"): "fail", ("Q4_K_M", "perplexity_within"): "fail",
        ("Q4_K_M", "tensors_unchanged"): "pass",
        ("Q4_K_M-q8embed", "kl_divergence_at_most"): "pass",
        ("Q4_K_M-q8embed", "perplexity_within"): "pass",
        ("Q4_K_M-q8embed", "tensors_unchanged"): "fail"}
    assert "token_embd.weight (Q4_K -> Q8_0)" in by[("Q4_K_M-q8embed", "tensors_unchanged")]["note"]
    assert "Q8_0" in report["models"]["Q4_K_M-q8embed"]["tensor_types"]
    assert (pytester.path / "p.png").stat().st_size > 10_000

    # the same numbers from the engine directly
    engine = Engine(default_backend(), cache_dir=real_cache)
    proto = ScoringProtocol(n_ctx=256, n_batch=2048, n_chunks=24)
    q8, q4 = (quantize(demo_model, t, backend=engine.backend, cache_dir=real_cache).path
              for t in ("Q8_0", "Q4_K_M"))
    direct = engine.kl_divergence(q8, q4, demo_text, proto)
    assert by[("Q4_K_M", "kl_divergence_at_most")]["measured"] == pytest.approx(
        float(direct.chunk_kld.mean()), rel=1e-12)
    ratios = [float(np.mean(engine.perplexity(q4, text, proto).chunk_nll)
                    - np.mean(engine.perplexity(demo_model, text, proto).chunk_nll))
              for text in (demo_text, code)]
    assert math.log1p(by[("Q4_K_M", "perplexity_within")]["change"]) == pytest.approx(
        float(np.mean(ratios)), rel=1e-9)
