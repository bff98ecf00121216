"""Stands in for your release pipeline: writes ``build/Q3_K_M-q8-embed.gguf`` when it is missing.

The recipe is one that no llama.cpp file-type name describes: Q3_K_M, but with the token
embeddings and the output matrix kept at Q8_0 (``llama-quantize --token-embedding-type q8_0
--output-tensor-type q8_0 base.gguf out.gguf Q3_K_M``), made here with llama-cpp-python's own
``llama_model_quantize``. With your own files, delete this and list their paths in ``variants``.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

CANDIDATE = Path(__file__).parent / "build" / "Q3_K_M-q8-embed.gguf"


def build_candidate(dest: Path) -> None:
    import llama_cpp as lc

    from pytest_quantcheck.demo.model import demo_model_path

    params = lc.llama_model_quantize_default_params()
    params.nthread = 2
    params.ftype = lc.LLAMA_FTYPE_MOSTLY_Q3_K_M
    params.token_embedding_type = lc.GGML_TYPE_Q8_0
    params.output_tensor_type = lc.GGML_TYPE_Q8_0
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    if lc.llama_model_quantize(str(demo_model_path()).encode(), str(tmp).encode(),
                               ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not write {dest}")
    tmp.replace(dest)  # never a half-written candidate


def pytest_configure(config):
    if not CANDIDATE.exists() and not hasattr(config, "workerinput"):  # xdist: controller only
        build_candidate(CANDIDATE)
