from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                   request: pytest.FixtureRequest) -> None:
    """Unit tests get an empty cache each; real-model tests share one per session, so the demo
    model and its variants are built once."""
    if request.node.get_closest_marker("real"):
        root = tmp_path_factory.getbasetemp() / "real-cache"
    else:
        root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("QUANTCHECK_CACHE_DIR", str(root))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    rng = __import__("numpy").random.default_rng(7)
    words = ["alpha", "beta", "gamma", "delta", "quant", "check", "model", "token"]
    path = tmp_path / "eval.txt"
    path.write_text(" ".join(rng.choice(words, size=900)) + "\n")
    return path


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "real-cache"


@pytest.fixture(scope="session")
def demo_model(real_cache: Path) -> Path:
    """The built-in demo model, built once per test session."""
    from pytest_quantcheck.demo.model import demo_model_path

    return demo_model_path(cache_dir=real_cache)


@pytest.fixture(scope="session")
def demo_text() -> Path:
    from pytest_quantcheck.demo.model import data_path

    return data_path("eval.txt")
