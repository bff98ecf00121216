"""pytest-xdist's hooks, in one object the plugin registers only when pytest-xdist is present
(as syrupy does): the controller hands every worker the run's exchange folder, schedules a
variant's tests on one worker, and merges each worker's payload when it goes down.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from pytest_quantcheck.session import QuantSession


class XdistHooks:
    """The controller's side of a pytest-xdist run, for one session."""

    def __init__(self, session: QuantSession) -> None:
        self.session = session

    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist controller: give every worker the run's exchange folder, where a Holm
        correction's outcomes are shared (each variant evaluated by one worker)."""
        qs = self.session
        if qs.settings.correction == "holm":
            if qs.exchange is None:
                qs.exchange = Path(tempfile.mkdtemp(prefix="quantcheck-run-"))
            node.workerinput["quantcheck_exchange"] = str(qs.exchange)

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Under pytest-xdist, send all tests of one variant to one worker, so each model is loaded
        and evaluated once; other tests are distributed one by one, as ``--dist load`` does."""
        if getattr(config.option, "dist", None) != "load":
            return None  # the user chose a distribution mode: keep it
        from xdist.scheduler import LoadScopeScheduling

        variants = set(self.session.settings.variants)

        class VariantScheduling(LoadScopeScheduling):  # type: ignore[misc]
            def _split_scope(self, nodeid: str) -> str:
                if nodeid.endswith("]"):
                    params = nodeid[nodeid.rfind("[") + 1 : -1]
                    for part in (params, *params.split("-")):
                        if part in variants:
                            return f"quantcheck-{part}"
                return nodeid

        return VariantScheduling(config, log)

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """pytest-xdist controller: merge a worker's outcomes, steps and baseline records."""
        data = getattr(node, "workeroutput", {}).get("quantcheck")
        if data:
            worker = node.gateway.id if getattr(node, "gateway", None) is not None else "worker"
            self.session.merge(data, worker)
