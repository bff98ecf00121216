"""pytest glue. Loading it must stay cheap and must not import llama_cpp."""

from __future__ import annotations

import pytest

from pytest_quantcheck import __version__
from pytest_quantcheck.cache import cache_root


def pytest_report_header(config: pytest.Config) -> str:
    return f"quantcheck: {__version__}, cache {cache_root()}"
