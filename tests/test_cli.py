from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quantcheck.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_missing_model_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path, text_file: Path) -> None:
    code, out, err = run(capsys, "perplexity", tmp_path / "nope.gguf", "-f", text_file)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "nope.gguf: model file not found" in err


def test_non_gguf_model_is_a_one_line_error(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, text_file: Path) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"{\"__metadata__\": {}}")
    code, _, err = run(capsys, "kld", model, model, "-f", text_file)
    assert code == 2 and err.count("\n") == 1 and "not a GGUF file" in err


def test_unknown_type_lists_valid_types(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base = tmp_path / "base.gguf"
    base.write_bytes(b"GGUF" + b"\0" * 20)
    code, _, err = run(capsys, "quantize", base, "Q4_K_Z")
    assert code == 2 and "Q4_K_Z" in err and "Q4_K_M" in err and err.count("\n") == 1


def test_bad_numbers_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str],
                                               text_file: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["perplexity", "m.gguf", "-f", str(text_file), "-c", "0"])
    assert info.value.code == 2
    assert "expected a positive number" in capsys.readouterr().err


def test_batch_not_a_multiple_of_context_is_explained(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path, text_file: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 20)
    code, _, err = run(capsys, "perplexity", model, "-f", text_file, "-c", "512", "-b", "700")
    assert code == 2 and "multiple of n_ctx" in err


@pytest.mark.real
def test_perplexity_and_kld_on_the_demo_model(capsys: pytest.CaptureFixture[str],
                                              demo_model: Path, demo_text: Path) -> None:
    code, out, _ = run(capsys, "perplexity", demo_model, "-f", demo_text, "-c", 256,
                       "--chunks", 8, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["n_chunks"] == 8 and len(data["token_nll"]) == 8 and data["ppl"] > 1
    code, out, _ = run(capsys, "perplexity", demo_model, "-f", demo_text, "-c", 256, "--chunks", 8)
    assert f"perplexity  {data['ppl']:.4f} +/- {data['ppl_err']:.5f}" in out

    code, out, _ = run(capsys, "quantize", demo_model, "Q4_K_M")
    variant = Path(out.strip())
    assert code == 0 and variant.exists()
    code, out, _ = run(capsys, "kld", demo_model, variant, "-f", demo_text, "-c", 256,
                       "--chunks", 8)
    assert code == 0 and "Mean    KLD:" in out and "Same top p:" in out
    code, out, _ = run(capsys, "kld", demo_model, variant, "-f", demo_text, "-c", 256,
                       "--chunks", 8, "--json")
    data = json.loads(out)
    assert 0 < data["kld"]["value"] < 5 and data["ref_tail_mass"] < 1e-4


@pytest.mark.real
def test_quantize_output_copy(capsys: pytest.CaptureFixture[str], demo_model: Path,
                              tmp_path: Path) -> None:
    out_path = tmp_path / "q8.gguf"
    code, out, _ = run(capsys, "quantize", demo_model, "Q8_0", "-o", out_path)
    assert code == 0 and out.strip() == str(out_path)
    assert out_path.read_bytes()[:4] == b"GGUF"
