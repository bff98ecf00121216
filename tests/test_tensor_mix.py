"""What llama.cpp wrote: tensor types and bytes, per-tensor hashes, fallback and identical-file
notices, and the tensors_unchanged check against the baseline or another file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.gguf_file import write_gguf
from pytest_quantcheck.tensor_mix import (
    Tensor,
    TensorMix,
    changed_tensors,
    fallback_notice,
    identical_notices,
    read_mix,
)


def _file(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    tensors = {"token_embd.weight": rng.standard_normal((10, 64)).astype(np.float16),
               "blk.0.attn_norm.weight": np.ones(64, np.float32),
               "output.weight": rng.standard_normal((10, 64)).astype(np.float32)}
    write_gguf(path, {"general.architecture": "llama", "general.file_type": 1}, tensors)
    return tensors


def test_mix_counts_bytes_and_hashes_each_tensor(tmp_path: Path) -> None:
    arrays = _file(tmp_path / "m.gguf")
    mix = read_mix(tmp_path / "m.gguf", tmp_path / "cache")
    assert mix.file_type == 1
    assert mix.by_type() == {"F32": {"tensors": 2, "bytes": 64 * 4 + 640 * 4},
                             "F16": {"tensors": 1, "bytes": 640 * 2}}
    for name, arr in arrays.items():  # the hash of the bytes as written
        assert mix.hashes()[name] == [{np.float16: "F16", np.float32: "F32"}[arr.dtype.type],
                                      hashlib.sha256(arr.tobytes()).hexdigest()]
    assert [t.name for t in mix.tensors] == list(arrays)  # file order
    # read once per content: the cache entry answers next time, a damaged one is read again
    entry = next((tmp_path / "cache" / "tensors").glob("*.json"))
    assert read_mix(tmp_path / "m.gguf", tmp_path / "cache") == mix
    entry.write_text("{not json")
    assert read_mix(tmp_path / "m.gguf", tmp_path / "cache") == mix
    assert json.loads(entry.read_text())["format"] == 1
    # the same tensors under other metadata hold the same data
    write_gguf(tmp_path / "n.gguf", {"general.architecture": "llama", "general.file_type": 7,
                                     "general.name": "renamed"}, arrays)
    other = read_mix(tmp_path / "n.gguf", tmp_path / "cache")
    assert other.data_sha256() == mix.data_sha256() and other.file_type == 7


def _mix(ftype: int, *tensors: tuple[str, str, int]) -> TensorMix:
    return TensorMix(tuple(Tensor(name, type_name, (ncols, 32), ncols * 32, name + type_name)
                           for name, type_name, ncols in tensors), ftype)


def test_fallbacks_name_the_tensors_their_types_and_why() -> None:
    # Q6_K (llama_ftype 18) on rows of 64: llama.cpp writes Q8_0, as its tensor_type_fallback
    q6 = _mix(18, ("token_embd.weight", "Q8_0", 64), ("blk.0.attn_q.weight", "Q8_0", 64),
              ("blk.0.ffn_down.weight", "Q6_K", 256), ("blk.0.attn_norm.weight", "F32", 64))
    notice = fallback_notice("Q6_K", "Q6_K", q6)
    assert notice == ("Q6_K: 2 of 3 quantized tensors are not Q6_K's 256-value blocks, because"
                      " their rows (64 values) are not a multiple of 256; llama.cpp fell back:"
                      " 2 to Q8_0 (token_embd.weight, blk.0.attn_q.weight)")
    # a 32-block file type, an unquantized file, and whole blocks: nothing to say
    assert fallback_notice("Q8_0", "Q8_0", _mix(7, ("a", "Q8_0", 64))) is None
    assert fallback_notice("F16", "F16", _mix(1, ("a", "F16", 65))) is None
    assert fallback_notice("Q4_K_M", None, _mix(15, ("a", "Q4_K", 512))) is None


def test_identical_and_changed_tensors() -> None:
    assert identical_notices({"Q6_K": "d1", "Q8_0": "d1", "Q4_K_M": "d2"}) == [
        "Q6_K and Q8_0 hold identical tensors (every tensor's type and bytes are equal): the"
        " same model under different names, so their numbers agree"]
    stored = {"a": ["Q4_K", "h1"], "b": ["Q4_K", "h2"], "c": ["Q6_K", "h3"]}
    now = {"a": ["Q4_K", "h1"], "b": ["Q5_K", "h9"], "c": ["Q6_K", "h4"], "d": ["F32", "h5"]}
    assert changed_tensors(now, stored) == ["b (Q4_K -> Q5_K)", "c (Q6_K, other bytes)",
                                            "d (new)"]
    assert changed_tensors(stored, stored) == []


SUITE = """
import pytest
from pytest_quantcheck.assertions import assert_tensors_unchanged

@pytest.mark.tensors_unchanged()
def test_same_bytes(quant_model):
    pass

@pytest.mark.tensors_unchanged(of="Q8_0")
def test_as_q8(quant_model):
    pass

def test_helper(quantize):
    assert_tensors_unchanged(quantize("Q8_0"), quantize("Q8_0"))
    with pytest.raises(AssertionError, match="1 of 1 tensors differ from Q8_0: weight"):
        assert_tensors_unchanged(quantize("Q2_K"), quantize("Q8_0"))
"""


def test_tensors_unchanged_against_the_baseline_and_another_file(
        qc_project: pytest.Pytester) -> None:
    qc_project.makepyfile(SUITE)
    qc_project.runpytest("--quant-update-baseline").assert_outcomes(passed=4, failed=1)
    path = next((qc_project.path / "baselines").glob("*.json"))
    stored = json.loads(path.read_text())
    assert set(stored["records"]["Q2_K"]["tensors"]) == {"weight"}
    result = qc_project.runpytest("--quant-baseline", "--quant-json", "r.json",
                                  "--quant-markdown", "r.md")
    result.assert_outcomes(passed=4, failed=1)  # Q2_K's tensors are not Q8_0's
    result.stdout.fnmatch_lines(["*tensors_unchanged(of='Q8_0') FAIL for Q2_K: tensors changed 1"
                                 " vs 0 (Q8_0)*1 of 1 tensors differ from Q8_0: weight (F16,"
                                 " other bytes)*"])
    report = json.loads((qc_project.path / "r.json").read_text())
    assert report["models"]["Q8_0"]["tensor_types"]["F16"]["tensors"] == 1
    assert "#### Tensor types" in (qc_project.path / "r.md").read_text()
    # a tensor whose bytes differ from the record fails, named; other llama.cpp builds compare
    stored["records"]["Q2_K"]["tensors"]["weight"][1] = "0" * 64
    stored["keys"]["llama_cpp"] = "an older build"
    path.write_text(json.dumps(stored))
    result = qc_project.runpytest("--quant-baseline", "-k", "same_bytes")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*tensors_unchanged(of='baseline') FAIL for Q2_K:*1 of 1 tensors"
                                 " differ from baseline *: weight (F16, other bytes)*"])
    # without --quant-baseline the baseline comparison is skipped, saying why
    result = qc_project.runpytest("-k", "same_bytes", "-rs")
    result.assert_outcomes(skipped=2)


def test_the_tensors_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_quantcheck.cli import main

    arrays = _file(tmp_path / "a.gguf")
    write_gguf(tmp_path / "b.gguf", {"general.architecture": "llama", "general.file_type": 1,
                                     "general.name": "renamed"}, arrays)
    assert main(["tensors", str(tmp_path / "a.gguf"), str(tmp_path / "b.gguf")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'a.gguf'}  (F16, 3 tensors, " in out
    assert "  F16          1 tensors" in out
    assert out.rstrip().endswith("notice: a and b hold identical tensors (every tensor's type and"
                                 " bytes are equal): the same model under different names, so"
                                 " their numbers agree")
    assert main(["tensors", "--json", str(tmp_path / "a.gguf")]) == 0
    data = json.loads(capsys.readouterr().out)
    entry = data["files"][str(tmp_path / "a.gguf")]
    assert entry["file_type"] == "F16" and entry["tensors"]["output.weight"][0] == "F32"
    assert data["notices"] == []
    assert main(["tensors", str(tmp_path / "missing.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.gguf: model file not found" in err


def test_block_sizes_of_file_types() -> None:
    from pytest_quantcheck.tensor_mix import file_type_block

    assert [file_type_block(f) for f in (0, 1, 32, 7, 2, 25, 38, 15, 18, 30, 36, 1024 + 15)] == [
        None, None, None, 32, 32, 32, 32, 256, 256, 256, 256, 256]
    assert file_type_block(99) is None  # unknown: nothing is called a fallback
    # a recipe's chosen type is no fallback
    q = _mix(15, ("token_embd.weight", "Q8_0", 64), ("blk.0.ffn_down.weight", "Q5_0", 64))
    assert len(q.fallbacks()) == 2
    assert [t.name for t in q.fallbacks(lambda n: n == "token_embd.weight")] == [
        "blk.0.ffn_down.weight"]
