"""One quantcheck run, as the plugin sees it: its models (:mod:`pytest_quantcheck.models`),
what their checks compare with (:mod:`pytest_quantcheck.run.comparands`), the one decider of
markers and helpers (:mod:`pytest_quantcheck.run.decider`) and what the run leaves behind
(:mod:`pytest_quantcheck.run.outputs`), built once and tied together here. Lives in
``config.stash``; knows nothing of pytest, so it is unit-tested directly and
:mod:`pytest_quantcheck.plugin` only translates hooks into calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_quantcheck.backends import Backend
from pytest_quantcheck.checks import Check, Outcome
from pytest_quantcheck.config import Settings
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.models import Models, QuantModel
from pytest_quantcheck.run import workers
from pytest_quantcheck.run.comparands import Comparands
from pytest_quantcheck.run.decider import CheckedTest, Decider
from pytest_quantcheck.run.outputs import BaselinePayload, Outputs, ReportPaths
from pytest_quantcheck.run.store import ModelStore
from pytest_quantcheck.run.timings import Timings

__all__ = ["BaselinePayload", "CheckedTest", "QuantSession", "ReportPaths"]


@dataclass
class QuantSession:
    settings: Settings
    backend_factory: Callable[[], Backend]
    baseline_mode: str = "off"  # "off", "compare" or "update"
    notes: list[tuple[str, bool]] = field(default_factory=list)  # (text, is_error), shown last
    annotations: list[str] = field(default_factory=list)  # GitHub workflow commands to print
    models: Models = field(init=False)
    comparands: Comparands = field(init=False)
    decider: Decider = field(init=False)
    shard: tuple[int, int] | None = None  # (K, N): this run decides the K-th of N shards
    outputs: Outputs = field(init=False)

    def __post_init__(self) -> None:
        store = ModelStore(self.settings, self.backend_factory)
        self.models = Models(store, Timings(store))
        self.comparands = Comparands(self.settings, self.models, self.baseline_mode)
        self.decider = Decider(self.settings, self.models, self.comparands)
        self.models.decide = self.decider.decide_helper
        self.outputs = Outputs(self.settings, self.models, self.comparands, self.decider,
                               self.notes, self.shard)

    # ---- the decider's, here for the plugin and for callers of the session -------------------

    @property
    def outcomes(self) -> list[Outcome]:
        return self.decider.outcomes

    @property
    def collected(self) -> list[tuple[Check, str]]:
        return self.decider.collected

    @property
    def exchange(self) -> Path | None:
        """pytest-xdist: a folder of the whole run where workers share decided outcomes."""
        return self.decider.exchange

    @exchange.setter
    def exchange(self, folder: Path | None) -> None:
        self.decider.exchange = folder

    def run_check(self, check: Check, model: QuantModel,
                  where: tuple[str, str, int] = ("", "", 0)) -> Outcome:
        return self.decider.run_check(check, model, where)

    def decide_test(self, found: list[Check], model: QuantModel,
                    where: tuple[str, str, int]) -> CheckedTest:
        return self.decider.decide_test(found, model, where)

    def not_decided(self, found: list[Check], variant: str, why: str,
                    where: tuple[str, str, int]) -> None:
        self.decider.not_decided(found, variant, why, where)

    def record(self, outcome: Outcome) -> None:
        self.decider.record(outcome)

    def baseline_path(self) -> Path:
        return self.comparands.baseline_path()

    def variants(self) -> tuple[str, ...]:
        """The variants this run checks: all of them, or its shard's (every N-th, from K)."""
        if self.shard is None:
            return self.settings.variants
        k, n = self.shard
        return tuple(v for i, v in enumerate(self.settings.variants) if i % n == k - 1)

    @property
    def steps(self) -> list[str]:
        return self.models.store.steps

    # ---- models and checks -------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self.models.store.engine

    def base_path(self) -> Path:
        """The base model's file (the built-in demo model's, built once, if none is set)."""
        return self.models.store.base_path()

    def eval_text(self) -> Path:
        return self.models.store.eval_text()

    def model(self, spec: str) -> QuantModel:
        """``base``, a llama.cpp file type, or a path to a .gguf file."""
        return self.models.model(spec)

    def reference(self) -> QuantModel:
        return self.models.reference()

    def collect(self, checks: list[tuple[Check, str]]) -> None:
        """The checks this run will decide, each with its variant: the plan of every model's
        passes comes from what they need."""
        self.decider.collected[:] = checks
        self.models.plan((variant, check.needs) for check, variant in checks)

    # ---- baselines ---------------------------------------------------------------------------

    # ---- the outputs' ------------------------------------------------------------------------

    def points(self) -> dict[str, dict[str, Any]]:
        return self.outputs.points()

    def worker_payload(self) -> str:
        return workers.payload(self.outputs)

    def merge(self, data: str, worker: str = "worker") -> None:
        workers.take_in(self.outputs, data, worker)

    def model_table(self) -> dict[str, dict[str, Any]]:
        return self.outputs.model_table()

    def tensor_notes(self) -> list[str]:
        return self.outputs.tensor_notes()

    def cache_note(self) -> str | None:
        return self.outputs.cache_note()

    def baseline_document(self) -> BaselinePayload | None:
        return self.outputs.baseline_document()

    def write_baseline(self) -> bool:
        return self.outputs.write_baseline()

    def write_reports(self, to: ReportPaths) -> list[str]:
        return self.outputs.write_reports(to)
