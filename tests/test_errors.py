"""One base class for every error the user is meant to read, caught by the ``quantcheck`` command
(and the pytest plugin) as one line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_quantcheck.cli
from pytest_quantcheck.backends import BackendError
from pytest_quantcheck.baseline import BaselineError
from pytest_quantcheck.cache import CacheError
from pytest_quantcheck.cli import main
from pytest_quantcheck.config import ConfigError
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.evaluation import EvalTextError
from pytest_quantcheck.gguf_file import GGUFError
from pytest_quantcheck.imatrix import ImatrixError
from pytest_quantcheck.refstore import ReferenceStoreError
from pytest_quantcheck.variants import VariantError

# each class, and the base it had before QuantcheckError: callers catching that still catch it
USER_ERRORS = [(BackendError, RuntimeError), (CacheError, RuntimeError),
               (EvalTextError, ValueError), (GGUFError, ValueError), (ImatrixError, ValueError),
               (BaselineError, ValueError), (ReferenceStoreError, ValueError),
               (VariantError, ValueError), (ConfigError, ValueError)]


@pytest.mark.parametrize(("cls", "old_base"), USER_ERRORS, ids=lambda c: c.__name__)
def test_every_user_error_is_a_quantcheck_error(cls: type[Exception],
                                                old_base: type[Exception]) -> None:
    assert issubclass(cls, QuantcheckError)
    assert issubclass(cls, old_base)


def test_the_errors_module_imports_nothing_of_the_package() -> None:
    # every module subclasses it: one import from the package could close a cycle
    import pytest_quantcheck.errors as errors

    tree = ast.parse(Path(errors.__file__).read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names]
    assert not [m for m in imported if m.startswith("pytest_quantcheck")]


@pytest.mark.parametrize("error", [QuantcheckError("m.gguf: something is wrong; fix it"),
                                   ConfigError("quantcheck.yaml", "n_ctx", "must be positive")])
def test_the_command_prints_any_quantcheck_error_as_one_line(
        error: QuantcheckError, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path) -> None:
        raise error

    monkeypatch.setattr(pytest_quantcheck.cli, "check_gguf_path", refuse)
    code = main(["quantize", str(tmp_path / "base.gguf"), "Q4_K_M"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == f"quantcheck: error: {error}\n"
