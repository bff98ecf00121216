"""Variants from recipes: a file type plus llama-quantize's options (token embedding and output
types, per-tensor types by pattern, pure, an importance matrix), validated in one line, built
through the backend with those options and cached by the recipe's content."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.backends import QuantizeOptions
from pytest_quantcheck.config import ConfigError, Layer, Recipe, merge
from pytest_quantcheck.gguf_file import write_gguf
from pytest_quantcheck.imatrix import ImatrixError
from pytest_quantcheck.variants import VariantError, recipe_options

from fakes import FakeBackend, write_fake_gguf

RECIPE = {"name": "Q4_K_M-q8embed", "type": "q4_k_m", "token_embedding_type": "q8_0",
          "output_tensor_type": "Q8_0", "tensor_types": {"weight": "Q5_K"}, "pure": False}


def test_a_variant_table_is_a_recipe(tmp_path: Path) -> None:
    settings = merge([Layer("pyproject.toml", tmp_path, {
        "variants": ["Q8_0", {**RECIPE, "imatrix": "m.imatrix"}]})])
    assert settings.variants == ("Q8_0", "Q4_K_M-q8embed")
    recipe = settings.recipes["Q4_K_M-q8embed"]
    assert recipe == Recipe("Q4_K_M-q8embed", "Q4_K_M", "Q8_0", "Q8_0", (("weight", "Q5_K"),),
                            (tmp_path / "m.imatrix").resolve(), False)
    base = write_fake_gguf(tmp_path / "base.gguf")
    assert recipe_options(recipe, base) == QuantizeOptions(8, 8, (("weight", 13),), False)


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "x", "type": "Q4_K_M", "embedding": "Q8_0"}, "a variant table takes name and type"),
    ({"name": "Q4_K_M", "type": "Q4_K_M"}, "its name is a file type's"),
    ({"name": "x", "type": "Q4_K_Z"}, "variant 'x': unknown type 'Q4_K_Z'; types: F32, "),
    ({"name": "x", "type": "Q4_K_M", "output_tensor_type": "Q9"},
     "variant 'x': output_tensor_type 'Q9' is not a tensor type; types: F32, F16"),
    ({"name": "x", "type": "Q4_K_M", "tensor_types": {"ffn_(down": "Q5_K"}},
     "variant 'x': tensor_types pattern 'ffn_(down' is not a regular expression"),
])
def test_bad_recipes_are_one_line_errors(tmp_path: Path, entry: dict[str, object],
                                         message: str) -> None:
    with pytest.raises(ConfigError) as info:
        merge([Layer("pyproject.toml [tool.quantcheck]", tmp_path, {"variants": [entry]})])
    text = str(info.value)
    assert "\n" not in text and text.startswith("pyproject.toml [tool.quantcheck]: variants: ")
    assert message in text


def test_a_pattern_matching_no_tensor_names_the_fix(tmp_path: Path) -> None:
    base = write_fake_gguf(tmp_path / "base.gguf")
    recipe = Recipe("r", "Q4_K_M", tensor_types=(("ffn_down", "Q5_K"),))
    with pytest.raises(VariantError, match=r"^variant 'r': tensor_types pattern 'ffn_down' matches"
                       r" no tensor of base.gguf \(names look like 'weight'\); fix the pattern$"):
        recipe_options(recipe, base)


def test_an_imatrix_of_another_model_is_refused(tmp_path: Path) -> None:
    from pytest_quantcheck.variants import quantize

    base = write_fake_gguf(tmp_path / "base.gguf")  # one tensor, "weight", rows of 256
    path = tmp_path / "other.imatrix"
    write_gguf(path, {"imatrix.chunk_count": 1},
               {"blk.0.ffn_up.weight.in_sum2": np.ones(64, np.float32),
                "blk.0.ffn_up.weight.counts": np.ones(1, np.float32)})
    with pytest.raises(ImatrixError, match=r"other.imatrix: made for another model:"
                       r" blk.0.ffn_up.weight is not a tensor of base.gguf; make one for this"
                       r" model with llama-imatrix"):
        quantize(base, "Q4_K_M", backend=FakeBackend(), imatrix=path, cache_dir=tmp_path / "c")
    write_gguf(path, {"imatrix.chunk_count": 1},
               {"weight.in_sum2": np.ones(100, np.float32), "weight.counts": np.ones(1, np.float32)})
    with pytest.raises(ImatrixError, match=r"weight has 100 values, not a multiple of its rows'"
                       r" 256 in base\.gguf"):
        quantize(base, "Q4_K_M", backend=FakeBackend(), imatrix=path, cache_dir=tmp_path / "c")


SUITE = """
import pytest

@pytest.mark.perplexity_within(pct=50)
def test_quality(quant_model):
    pass
"""


def test_recipes_build_with_their_options_and_are_cached_by_content(
        qc_project: pytest.Pytester) -> None:
    toml = qc_project.path / "pyproject.toml"
    plain = toml.read_text()

    def use(recipe: str) -> None:
        toml.write_text(plain.replace('variants = ["Q8_0", "Q2_K"]',
                                      f'variants = ["Q4_K_M", {recipe}]'))

    use('{ name = "Q4_K_M-q8embed", type = "Q4_K_M", token_embedding_type = "Q8_0",'
        ' tensor_types = { "weig" = "Q5_K" } }')
    qc_project.makepyfile(SUITE)
    result = qc_project.runpytest("--quant-json", "r.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*Q4_K_M-q8embed*perplexity_within(pct=50)*PASS*"])
    log = (qc_project.path / "backend.log").read_text().splitlines()
    built = [line for line in log if line.startswith("quantize")]
    assert built == ["quantize 15",
                     "quantize 15 QuantizeOptions(token_embedding_type=8, output_tensor_type=None,"
                     " tensor_types=(('weig', 13),), pure=False)"]
    # the same recipe again: nothing is built; another recipe is another file
    qc_project.runpytest().assert_outcomes(passed=2)
    use('{ name = "Q4_K_M-q8embed", type = "Q4_K_M", token_embedding_type = "Q6_K" }')
    qc_project.runpytest().assert_outcomes(passed=2)
    built = [line for line in (qc_project.path / "backend.log").read_text().splitlines()
             if line.startswith("quantize")]
    assert len(built) == 3 and "token_embedding_type=14" in built[-1]
    # a pattern that matches nothing fails that variant's checks in one line
    use('{ name = "typo", type = "Q4_K_M", tensor_types = { "ffn_dwn" = "Q5_K" } }')
    result = qc_project.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*variant 'typo': tensor_types pattern 'ffn_dwn' matches no"
                                 " tensor of base.gguf (names look like 'weight'); fix the"
                                 " pattern*"])


def test_a_later_layer_naming_a_recipe_keeps_it(tmp_path: Path) -> None:
    settings = merge([Layer("pyproject.toml", tmp_path, {"variants": ["Q8_0", RECIPE]}),
                      Layer("command line", tmp_path, {"variants": "Q4_K_M-q8embed"})])
    assert settings.variants == ("Q4_K_M-q8embed",)
    assert settings.recipes["Q4_K_M-q8embed"].type == "Q4_K_M"


def test_a_missing_recipe_imatrix_is_a_settings_error(qc_project: pytest.Pytester) -> None:
    toml = qc_project.path / "pyproject.toml"
    toml.write_text(toml.read_text().replace(
        'variants = ["Q8_0", "Q2_K"]',
        'variants = [{ name = "r", type = "Q4_K_M", imatrix = "gone.imatrix" }]'))
    qc_project.makepyfile("def test_nothing():\n    pass\n")
    result = qc_project.runpytest()
    assert result.ret != 0
    assert "variants.r.imatrix: " in result.stderr.str()
    assert "gone.imatrix is not a file; fix the path" in result.stderr.str()
