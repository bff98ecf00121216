"""The recipe search on the fake whose quantizer honours per-tensor types: a target met and
verified, the entry accepted by the settings' own validation, honest failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from pytest_quantcheck.blame import BlameError
from pytest_quantcheck.config import Layer, Recipe, merge
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.recipe_search import search, toml_entry
from pytest_quantcheck.report import plot_tradeoffs
from pytest_quantcheck.tensor_mix import read_mix
from pytest_quantcheck.variants import quantize, recipe_options

from fake_mix import MixBackend, write_base

PROTO = ScoringProtocol(n_ctx=128, n_batch=128)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write_base(tmp_path / "base-f32.gguf")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return Engine(MixBackend(), cache_dir=tmp_path / "cache")


def _settings_recipe(entry: str, tmp_path: Path) -> Recipe:
    """The entry as a user pastes it into pyproject.toml, through the settings' validation."""
    data = tomllib.loads(f"[tool.quantcheck]\nvariants = [{entry}]\n")
    settings = merge([Layer("pyproject.toml", tmp_path, data["tool"]["quantcheck"])])
    (recipe,) = settings.recipes.values()
    return recipe


def test_max_kld_of_the_next_stock_type(tmp_path: Path, base: Path, engine: Engine,
                                        text_file: Path) -> None:
    q5 = engine.kl_divergence(base, quantize(base, "Q5_0", backend=engine.backend,
                                             cache_dir=engine.cache_dir).path, text_file, PROTO)
    result = search(base, "Q4_0", text_file, PROTO, max_kld=q5.kld.value, engine=engine)
    stock = {s.name: s for s in result.stock}
    assert result.met and result.recipe is not None
    assert result.verified.kld.value <= q5.kld.value
    assert stock["Q5_0"].kld.value == pytest.approx(q5.kld.value)
    assert result.verified.size_bytes < stock["Q5_0"].size_bytes
    # the greedy walk raised the costliest group first (the fake's output weighs most)
    assert result.steps[0].group == "output"
    assert "attn_q" in " ".join(result.notes)  # too cheap to be worth a pass

    recipe = _settings_recipe(result.entry, tmp_path)
    assert recipe == result.recipe
    # built from the pasted entry, it is the file that was verified (same cache entry)
    again = quantize(base, recipe.type, backend=engine.backend, cache_dir=engine.cache_dir,
                     options=recipe_options(recipe, base), name=recipe.name)
    assert again.path == result.verified.path
    types = {t.name: t.type_name for t in read_mix(again.path).tensors}
    assert types["output.weight"] != "Q4_0"
    doc = result.to_dict()
    assert {"recipe", "size_bytes", "kld", "stock"} <= set(doc)
    points = result.tradeoff_points()
    assert set(points) == {"Q4_0", "Q4_K_M", "Q5_0", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0-recipe"}
    plot_tradeoffs(tmp_path / "tradeoffs.png", points, {"Q4_0-recipe": "pass"})
    assert (tmp_path / "tradeoffs.png").read_bytes()[:4] == b"\x89PNG"
    assert doc["recipe"]["type"] == "Q4_0" and doc["kld"]["value"] <= q5.kld.value


def test_max_size_spends_the_bytes_it_has(base: Path, engine: Engine, text_file: Path) -> None:
    stock = quantize(base, "Q4_0", backend=engine.backend, cache_dir=engine.cache_dir)
    budget = stock.size_bytes + 600
    result = search(base, "Q4_0", text_file, PROTO, max_size=budget, engine=engine,
                    compare=["Q4_0"])
    assert result.met and result.verified.size_bytes <= budget
    assert result.verified.kld.value < result.stock[0].kld.value
    with pytest.raises(BlameError, match=r"already .* bytes, above --max-size 10"):
        search(base, "Q4_0", text_file, PROTO, max_size=10, engine=engine, compare=["Q4_0"])


def test_an_unreachable_target_is_said_so(base: Path, engine: Engine, text_file: Path) -> None:
    result = search(base, "Q4_0", text_file, PROTO, max_kld=1e-9, engine=engine,
                    compare=["Q4_0"])
    assert not result.met
    assert any("no recipe raising Q4_0's groups met KLD 1e-09" in n for n in result.notes)
    assert result.lines()[0].startswith("NOT met")


def test_entry_patterns_survive_toml(tmp_path: Path) -> None:
    recipe = Recipe("Q4_0-recipe", "Q4_0", tensor_types=(
        (r"(^|\.)token_embd\.weight$", "Q8_0"), (r"^(?:blk\.0\.ffn_down\.weight)$", "Q6_K")))
    assert _settings_recipe(toml_entry(recipe), tmp_path) == recipe


def test_start_must_be_quantized(base: Path, engine: Engine, text_file: Path) -> None:
    with pytest.raises(BlameError, match="--from 'F16': name a quantized"):
        search(base, "F16", text_file, PROTO, max_kld=0.1, engine=engine)


@pytest.mark.parametrize(("argv", "message"), [
    (["recipe", "m.gguf", "-f", "t.txt", "--from", "Q4_0"], "one of the arguments --max-kld"),
    (["recipe", "m.gguf", "-f", "t.txt", "--from", "Q4_0", "--max-kld", "0.1", "--max-size",
      "9"], "not allowed with argument"),
    (["blame", "m.gguf", "Q4_0", "-f", "t.txt", "--by", "row"], "invalid choice: 'row'"),
])
def test_command_arguments(argv: list[str], message: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_quantcheck.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_command_names_a_missing_model(tmp_path: Path, text_file: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_quantcheck.cli import main

    missing = tmp_path / "nope.gguf"
    assert main(["blame", str(missing), "Q4_0", "-f", str(text_file)]) == 2
    assert f"{missing}: model file not found" in capsys.readouterr().err
