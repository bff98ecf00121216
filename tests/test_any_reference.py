"""KL divergence and top-1 agreement from any model, not only the run's reference: another
variant of the run or a .gguf file (``of=``), with that model's log-probabilities kept by content
as the reference's are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck import checks
from pytest_quantcheck.engine import Engine
from test_session import make_session

from fakes import FakeBackend


def test_kl_from_another_model_is_the_engines_pass_against_it(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    worse, q8 = session.model("worse.gguf"), session.model("Q8_0")
    shutil.copyfile(q8.path, tmp_path / "q8-copy.gguf")
    copy = session.model(str(tmp_path / "q8-copy.gguf"))
    from_q8 = session.models.kl_divergence(worse, reference=q8)
    from_copy = session.models.kl_divergence(worse, reference=copy)
    direct = Engine(FakeBackend(), cache_dir=tmp_path / "direct").kl_divergence(
        q8.path, worse.path, session.eval_text(), session.models.store.protocol)
    for res in (from_q8, from_copy):  # the same bytes under another name: the same numbers
        np.testing.assert_array_equal(res.token_kld, direct.token_kld)
        np.testing.assert_array_equal(res.chunk_same_top, direct.chunk_same_top)
    default = session.models.kl_divergence(worse)  # from the run's reference, the base model
    assert float(default.chunk_kld.mean()) != float(from_q8.chunk_kld.mean())
    assert session.models.kl_divergence(q8, reference=q8).token_kld.max() == 0.0
    # the default pass is what baselines and plots keep; the others are not mixed into it
    assert session.models.has_kl("worse") and not session.models.has_kl("Q8_0")
    # the chunk counts describe the default passes; building Q8_0's log-probabilities shows as
    # its time
    row = session.model_table()["Q8_0"]
    assert row["chunks_used"] == row["chunks_decoded"] == 0 and row["seconds"] > 0


def test_of_is_a_model_not_the_baseline() -> None:
    with pytest.raises(checks.CheckArgumentError, match=r"of must be a variant name or a \.gguf"
                       r" path, got .baseline. .a baseline keeps no log-probabilities"):
        checks.parse("kl_divergence_at_most", (0.1,), {"of": "baseline"})
    assert checks.parse("top1_agreement_at_least", (0.9,), {"of": "Q8_0"}).label == (
        "top1_agreement_at_least(fraction=0.9, of='Q8_0')")


def test_markers_and_helpers_take_kl_from_another_variant(qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile(
        """
        import pytest
        from pytest_quantcheck.assertions import assert_kl_divergence_at_most

        @pytest.mark.kl_divergence_at_most(0.05, of="Q8_0")
        @pytest.mark.top1_agreement_at_least(0.5, of="Q8_0")
        def test_vs_q8(quant_model):
            pass

        def test_helper(quantize):
            q8, q2 = quantize("Q8_0"), quantize("Q2_K")
            same = assert_kl_divergence_at_most(q8, 0.0001, of=q8)
            assert same.measured == 0.0 and same.metric == "KLD mean from Q8_0"
            with pytest.raises(AssertionError, match="KLD p99 from Q8_0"):
                assert_kl_divergence_at_most(q2, 1e-6, stat="p99", of=q8)
        """
    )
    result = qc_project.runpytest("--quant-json", "report.json")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*kl_divergence_at_most(value=0.05, stat='mean', of='Q8_0') FAIL"
                                 " for Q2_K: KLD mean from Q8_0 * vs 0.05 (limit)*"])
    checks_ = json.loads((qc_project.path / "report.json").read_text())["checks"]
    by = {(c["variant"], c["check"].split("(")[0]): c for c in checks_
          if c["nodeid"].endswith("test_vs_q8[" + c["variant"] + "]")}
    assert by[("Q8_0", "kl_divergence_at_most")]["measured"] == 0.0
    assert by[("Q8_0", "top1_agreement_at_least")]["measured"] == 1.0
    assert by[("Q2_K", "kl_divergence_at_most")]["measured"] > 0.05
    assert "sequential: decided after" in by[("Q2_K", "kl_divergence_at_most")]["note"]
