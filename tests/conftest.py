from __future__ import annotations

import os
from pathlib import Path

import pytest
import scipy.stats  # noqa: F401

pytest_plugins = ["pytester"]
# scipy.stats is imported up front: the plugin imports it on first use, and a first use inside
# an in-process pytester run would be undone afterwards (pytester restores sys.modules), so the
# next run would import numpy's C extensions a second time, which numpy refuses.


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
    from fakes import word_text

    path = tmp_path / "eval.txt"
    path.write_text(word_text(900) + "\n")
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


@pytest.fixture
def qc_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user project on the fake backend: base.gguf, eval.txt, [tool.quantcheck] settings."""
    from fakes import word_text, write_fake_gguf

    write_fake_gguf(pytester.path / "base.gguf")
    write_fake_gguf(pytester.path / "one_pct.gguf", noise=0.3)
    write_fake_gguf(pytester.path / "nine_pct.gguf", noise=0.6)
    (pytester.path / "eval.txt").write_text(word_text(1500) + "\n")
    pytester.makepyprojecttoml(
        '[tool.quantcheck]\nmodel = "base.gguf"\nvariants = ["Q8_0", "Q2_K"]\n'
        'eval_text = "eval.txt"\nn_ctx = 64\nn_batch = 256\n'
    )
    pytester.makeconftest(
        "from pathlib import Path\nfrom fakes import FakeBackend\n\n"
        "def pytest_quantcheck_make_backend(config):\n"
        "    return FakeBackend(log=Path(config.rootpath) / 'backend.log')\n"
    )
    return pytester


# Plugins the projects under test do not use, left out of the three processes of a -n 2 run
# (hypothesis' pytest plugin alone costs each of them about a second of start-up).
XDIST_QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


class RunBothWays:
    """Runs a pytester project in-process (``serial``) or with ``-n 2`` (pytest-xdist) in a
    subprocess (``xdist``); ``xdist`` says which, for the few assertions that must differ."""

    def __init__(self, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mode = mode
        self.xdist = mode == "xdist"
        self._monkeypatch = monkeypatch

    def __call__(self, project: pytest.Pytester, *args: str) -> pytest.RunResult:
        if not self.xdist:
            return project.runpytest(*args)
        # the fake backend, before a PYTHONPATH already set (a worktree's sources)
        self._monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent), prepend=os.pathsep)
        return project.runpytest_subprocess("-n", "2", *XDIST_QUIET, *args)


@pytest.fixture(params=["serial", "xdist"])
def run_both_ways(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> RunBothWays:
    """Run a pytester project in-process, and with ``-n 2`` (pytest-xdist) in a subprocess:
    integration tests that use this must give the same outcomes both ways."""
    return RunBothWays(request.param, monkeypatch)
