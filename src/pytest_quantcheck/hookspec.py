"""Hooks pytest-quantcheck offers to conftest.py files and plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_quantcheck.backends import Backend


@pytest.hookspec(firstresult=True)
def pytest_quantcheck_make_backend(config: pytest.Config) -> Backend | None:
    """Return the inference backend quantcheck should use (default: llama.cpp).

    Useful to test a suite's wiring without llama.cpp, or to plug in another runtime::

        # conftest.py
        def pytest_quantcheck_make_backend(config):
            from my_fakes import FakeBackend
            return FakeBackend()
    """
