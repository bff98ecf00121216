"""A fixture that builds the same file type without the importance matrix.

The ``imatrix`` setting applies to every file type of the run, so the plain variant is built with
the engine's :func:`pytest_quantcheck.variants.quantize` (cached by content like every variant)
and handed to the ``quantize`` fixture by path, under a readable file name: checks then name it
``IQ3_M-no-imatrix``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import pytest

from pytest_quantcheck.session import QuantModel, QuantSession
from pytest_quantcheck.variants import quantize as build_variant


@pytest.fixture(scope="session")
def without_imatrix(quant_session: QuantSession, quantize: Callable[[str], QuantModel],
                    tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], QuantModel]:
    folder = tmp_path_factory.mktemp("no-imatrix")

    @cache
    def build(file_type: str) -> QuantModel:
        plain = build_variant(quant_session.base_path(), file_type,
                              backend=quant_session.engine.backend,
                              n_threads=quant_session.settings.threads)  # imatrix: none
        link = folder / f"{file_type}-no-imatrix.gguf"
        link.symlink_to(plain.path)
        return quantize(str(link))

    return build
