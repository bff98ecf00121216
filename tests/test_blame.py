"""Blame: groups, mixes, the share estimator, and the ranking against a brute-force computation
(every mix written by hand, every KLD over every chunk, shares by plain arithmetic)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.blame import (
    BlameError,
    blame,
    group_key,
    group_tensors,
    kind_of,
    plot_blame,
    ratio_interval,
)
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.tensor_mix import read_mix

from fake_mix import MixBackend, noise_of_types, stock_types, tensor_names, write_base, write_typed

PROTO = ScoringProtocol(n_ctx=128, n_batch=128)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write_base(tmp_path / "base-f32.gguf")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(MixBackend(), cache_dir=tmp_path / "cache")


def test_kinds_and_layer_bands() -> None:
    assert kind_of("blk.12.ffn_down.weight") == "ffn_down"
    assert kind_of("token_embd.weight") == "token_embd"
    key = group_key("layer", 10)  # 4 bands of 10 layers: 0-1, 2-4, 5-6, 7-9
    assert [key(f"blk.{i}.attn_q.weight") for i in (0, 2, 4, 5, 9)] == [
        "attn_q[0-1]", "attn_q[2-4]", "attn_q[2-4]", "attn_q[5-6]", "attn_q[7-9]"]
    assert group_key("layer", 2)("blk.1.attn_q.weight") == "attn_q[1]"
    assert key("output.weight") == "output"
    with pytest.raises(BlameError, match="unknown grouping 'row'"):
        group_key("row", 1)


def test_groups_hold_the_changed_tensors(tmp_path: Path, base: Path) -> None:
    types = stock_types(15)
    types["blk.0.attn_q.weight"] = "F32"  # kept at the base's type: blamed for nothing
    variant = write_typed(tmp_path / "v.gguf", types)
    groups = {g.name: g for g in group_tensors(read_mix(base), read_mix(variant), "kind")}
    assert set(groups) == {"token_embd", "output", "attn_q", "attn_v", "ffn_down"}
    assert groups["attn_q"].tensors == ("blk.1.attn_q.weight",)
    assert groups["output"].bytes_base == 4 * 256 * 4
    assert groups["output"].bytes_variant == 4 * 210  # Q6_K: 210 bytes a block of 256
    by_tensor = group_tensors(read_mix(base), read_mix(variant), "tensor")
    assert len(by_tensor) == len(tensor_names()) - 1


def test_ratio_interval_is_the_delta_method() -> None:
    rng = np.random.default_rng(3)
    whole = rng.uniform(0.5, 1.5, 40)
    part = 0.3 * whole + rng.normal(0, 0.05, 40)
    got = ratio_interval(part, whole, 0.95)
    r = part.mean() / whole.mean()
    residual = part - r * whole
    se = math.sqrt(np.sum((residual - residual.mean()) ** 2) / 39 / 40) / whole.mean()
    from scipy.stats import t

    assert got.value == pytest.approx(r)
    assert got.high - got.value == pytest.approx(t.ppf(0.975, 39) * se)
    assert got.low < 0.3 < got.high


def test_ratio_interval_covers_at_its_level() -> None:
    """Over many draws of a ratio whose truth is known, the 90 % interval covers it about 90 %
    of the time (chunks independent, as the estimator assumes)."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(2000):
        whole = rng.gamma(4.0, 0.25, 30)
        part = 0.4 * whole * rng.gamma(20.0, 0.05, 30)  # truth: 0.4 * E[gamma(20, .05)] = 0.4
        iv = ratio_interval(part, whole, 0.90)
        covered += iv.low <= 0.4 <= iv.high
    assert 0.87 < covered / 2000 < 0.93


def test_nothing_to_blame(tmp_path: Path, base: Path, engine: Engine, text_file: Path) -> None:
    same = write_typed(tmp_path / "same.gguf", dict.fromkeys(tensor_names(), "F32"))
    with pytest.raises(BlameError, match="every tensor has the base's type"):
        blame(base, same, text_file, PROTO, engine=engine)


def test_a_variant_of_another_model_is_refused(tmp_path: Path, base: Path, engine: Engine,
                                               text_file: Path) -> None:
    types = stock_types(2)
    del types["blk.1.ffn_down.weight"]
    other = write_typed(tmp_path / "other.gguf", types)
    with pytest.raises(BlameError, match=r"other.gguf: is not a quantization of .*base-f32.gguf"):
        blame(base, other, text_file, PROTO, engine=engine)


def _brute_force(tmp_path: Path, base: Path, variant: dict[str, str], text: Path,
                 engine: Engine) -> tuple[float, dict[str, float]]:
    """Each kind's share from mixes written directly (no quantizer, no overrides), measured on
    every chunk."""
    v = engine.kl_divergence(base, write_typed(tmp_path / "whole.gguf", variant), text,
                             PROTO).kld.value
    shares = {}
    for kind in {kind_of(n) for n in variant}:
        only = {n: t if kind_of(n) == kind else "F32" for n, t in variant.items()}
        restored = {n: "F32" if kind_of(n) == kind else t for n, t in variant.items()}
        a = engine.kl_divergence(base, write_typed(tmp_path / f"only-{kind}.gguf", only), text,
                                 PROTO).kld.value
        r = engine.kl_divergence(base, write_typed(tmp_path / f"rest-{kind}.gguf", restored),
                                 text, PROTO).kld.value
        shares[kind] = (a + v - r) / (2 * v)
    return v, shares


def test_ranking_matches_brute_force(tmp_path: Path, base: Path, engine: Engine,
                                     text_file: Path) -> None:
    variant = stock_types(2)  # Q4_0 everywhere
    whole, truth = _brute_force(tmp_path, base, variant, text_file, engine)
    full = blame(base, "Q4_0", text_file, PROTO, engine=engine, sequential=False)
    # on every chunk blame computes exactly what brute force does
    assert full.variant_kld.value == pytest.approx(whole)
    assert {g.group.name: g.share.value for g in full.groups} == pytest.approx(truth)
    expected = sorted(truth, key=lambda k: -truth[k])
    assert [g.group.name for g in full.groups] == expected
    assert expected[:3] == ["output", "ffn_down", "attn_v"]  # the fake's weights, by design
    for g in full.groups:
        assert g.share.low < g.share.value < g.share.high
        assert g.stopped == "last look" and g.n_chunks == full.n_chunks
    # squared noises add, so the parts nearly add up to the whole
    assert 0.8 < full.additivity_only.value < 1.2

    looked = blame(base, "Q4_0", text_file, PROTO, engine=engine, min_chunks=4)
    assert [g.group.name for g in looked.groups][:3] == expected[:3]
    assert any(g.n_chunks < looked.n_chunks for g in looked.groups), "no group stopped early"
    assert looked.looks[-1] == looked.n_chunks
    for g in looked.groups:  # an early stop still covers the truth
        assert g.share.low < truth[g.group.name] < g.share.high


def test_mixes_hold_the_planned_types_and_are_cached(tmp_path: Path, base: Path, engine: Engine,
                                                     text_file: Path) -> None:
    blame(base, "Q4_0", text_file, PROTO, engine=engine, sequential=False)
    mixes = sorted((tmp_path / "cache" / "variants").glob("*-only-output-*.gguf"))
    assert len(mixes) == 1
    types = {t.name: t.type_name for t in read_mix(mixes[0]).tensors}
    assert types["output.weight"] == "Q4_0"
    assert {t for n, t in types.items() if n not in ("output.weight", "output_norm.weight")} == {
        "F32"}
    again = blame(base, "Q4_0", text_file, PROTO, engine=engine, sequential=False)
    assert again.passes == 0 and again.chunks_decoded == 0  # every pass from the cache


def test_a_quantizer_that_ignores_overrides_is_caught(tmp_path: Path, base: Path,
                                                      text_file: Path) -> None:
    class Stubborn(MixBackend):
        def quantize(self, source: Path, dest: Path, ftype: int, **kw: object) -> None:
            write_typed(dest, stock_types(ftype), ftype)

    with pytest.raises(BlameError, match=r"did not give .* the type asked"):
        blame(base, "Q4_0", text_file, PROTO, engine=Engine(Stubborn(), cache_dir=tmp_path))


def test_by_layer_and_json_and_plot(tmp_path: Path, base: Path, engine: Engine,
                                    text_file: Path) -> None:
    result = blame(base, "Q4_0", text_file, PROTO, by="layer", engine=engine)
    names = {g.group.name for g in result.groups}
    assert {"ffn_down[0]", "ffn_down[1]", "output", "token_embd"} <= names
    doc = result.to_dict()
    assert doc["by"] == "layer" and doc["groups"][0]["share"]["low"] <= doc["groups"][0][
        "share"]["value"]
    lines = result.table()
    assert lines[0].startswith("Q4_0: mean KLD") and "additivity" in lines[-2]
    plot_blame(tmp_path / "blame.png", result)
    assert (tmp_path / "blame.png").read_bytes()[:4] == b"\x89PNG"


def test_fake_noise_is_what_the_weights_say() -> None:
    assert noise_of_types({"output.weight": "Q4_0"}) == pytest.approx(1.2 * 0.2)


@pytest.fixture
def mix_project(pytester: pytest.Pytester) -> pytest.Pytester:
    from fakes import word_text

    write_base(pytester.path / "base.gguf")
    (pytester.path / "eval.txt").write_text(word_text(900) + "\n")
    pytester.makepyprojecttoml(
        '[tool.quantcheck]\nmodel = "base.gguf"\nvariants = ["Q4_0"]\neval_text = "eval.txt"\n'
        'n_ctx = 128\nn_batch = 128\n')
    pytester.makeconftest(
        "from fake_mix import MixBackend\n\n"
        "def pytest_quantcheck_make_backend(config):\n"
        "    return MixBackend()\n")
    return pytester


def test_quant_model_blame_in_a_suite(mix_project: pytest.Pytester) -> None:
    """``quant_model.blame()`` hands a test the table, named as the run names the variant."""
    pytester = mix_project
    pytester.makepyfile(
        "def test_culprits(quant_model):\n"
        "    table = quant_model.blame()\n"
        "    assert table.variant_name == 'Q4_0'\n"
        "    assert table.groups[0].group.name == 'output'\n"
        "    assert quant_model.blame(by='layer').by == 'layer'\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


SUITE = """
import pytest

@pytest.mark.kl_divergence_at_most(0.0001)
def test_gate(quant_model):
    pass
"""


def test_a_failing_gate_names_its_culprits_when_asked(mix_project: pytest.Pytester) -> None:
    mix_project.makepyfile(SUITE)
    plain = mix_project.runpytest("-p", "no:cacheprovider")
    plain.assert_outcomes(failed=1)
    assert "blame:" not in plain.stdout.str()  # it costs passes: only when asked
    asked = mix_project.runpytest("-p", "no:cacheprovider", "--quant-blame", "true")
    asked.assert_outcomes(failed=1)
    asked.stdout.re_match_lines([r".*blame: of Q4_0's KLD from base.gguf, \d+\.\d% from output"
                                 r" \(CI \d+\.\d-\d+\.\d%\), \d+\.\d% from ffn_down.*"])
