"""Crash isolation: a file that kills llama.cpp fails its tests instead of the pytest process."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import pytest_quantcheck.backends
from pytest_quantcheck.backends import BackendError
from pytest_quantcheck.backends.probe import probe

SEGFAULT = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
FINE = [sys.executable, "-c", "pass"]
LOAD_ERROR = [sys.executable, "-c", "raise SystemExit(1)"]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    return path


def test_a_crash_is_a_clear_error_and_is_remembered(model: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"m.gguf: llama.cpp crashed \(SIGSEGV\) while loading"):
        probe(model, "v1", command=SEGFAULT, root=tmp_path / "c")
    with pytest.raises(BackendError, match="crashed"):  # no child needed the second time
        probe(model, "v1", command=FINE, root=tmp_path / "c")


def test_a_new_llama_cpp_build_probes_again(model: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        probe(model, "v1", command=SEGFAULT, root=tmp_path / "c")
    probe(model, "v2", command=FINE, root=tmp_path / "c")


def test_a_clean_load_is_remembered(model: Path, tmp_path: Path) -> None:
    probe(model, "v1", command=FINE, root=tmp_path / "c")
    probe(model, "v1", command=SEGFAULT, root=tmp_path / "c")  # not run again: remembered


def test_an_ordinary_load_error_is_left_to_the_main_process(model: Path, tmp_path: Path) -> None:
    probe(model, "v1", command=LOAD_ERROR, root=tmp_path / "c")
    assert not (tmp_path / "c" / "probes").exists()


@pytest.mark.parametrize("parent", ["probe.py", "memory.py"])
def test_the_parent_side_does_not_import_llama_cpp(parent: str) -> None:
    # llamacpp imports probe and memory: importing it back (even lazily) would close a cycle
    source = Path(pytest_quantcheck.backends.__file__).with_name(parent).read_text()
    imported = {node.module for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import)
                 for a in node.names}
    assert not imported & {"llama_cpp", "pytest_quantcheck.backends.llamacpp",
                           "pytest_quantcheck.backends.child"}


@pytest.mark.real
def test_the_child_refuses_a_file_llama_cpp_cannot_load(model: Path, tmp_path: Path) -> None:
    probe(model, "v1", root=tmp_path / "c")  # the real child: a clean refusal, exit status 1
    assert not (tmp_path / "c" / "probes").exists()


@pytest.mark.real
def test_the_demo_model_loads_in_isolation(demo_model: Path, real_cache: Path) -> None:
    from pytest_quantcheck.backends.llamacpp import LlamaCppBackend

    probe(demo_model, LlamaCppBackend.version, root=real_cache)
    assert list((real_cache / "probes").glob("*.json"))
