"""One quantcheck session: the models a pytest run evaluates, their metrics computed once, the
checks' outcomes, and the baselines. Lives in ``config.stash``; knows nothing of pytest itself.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pytest_quantcheck import baseline, cache
from pytest_quantcheck.backends import Backend, RunOptions
from pytest_quantcheck.checks import Against, Check, Context, Outcome, apply_holm, evaluate
from pytest_quantcheck.config import Settings
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.gguf_file import GGUFError, read_gguf
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.metrics.perplexity import PerplexityResult
from pytest_quantcheck.variants import FILE_TYPES, Variant, VariantError, from_path, quantize

BASE = "base"


class QuantModel:
    """A model under test: a file and its metrics, each computed once per session."""

    def __init__(self, session: QuantSession, variant: Variant) -> None:
        self._session = session
        self.name = variant.name
        self.path = variant.path
        self.file_type = variant.file_type
        self.size_bytes = variant.size_bytes

    @functools.cached_property
    def bits_per_weight(self) -> float:
        """Tensor data bits per weight, as llama.cpp's loader prints them."""
        try:
            contents = read_gguf(self.path)
        except GGUFError:
            return math.nan
        n_weights = sum(math.prod(t.shape) for t in contents.tensors.values())
        return (self.size_bytes - contents.data_offset) * 8 / max(1, n_weights)

    def perplexity(self) -> PerplexityResult:
        return self._session.perplexity(self)

    def kl_divergence(self) -> KLDResult:
        """KL divergence from the session's reference model."""
        return self._session.kl_divergence(self)

    def reference(self) -> QuantModel:
        """The model relative checks compare this one with by default."""
        return self._session.reference()

    def __repr__(self) -> str:
        return f"QuantModel({self.name!r}, {self.path})"


@dataclass
class QuantSession:
    settings: Settings
    backend_factory: Callable[[], Backend]
    baseline_mode: str = "off"  # "off", "compare" or "update"
    log: Callable[[str], None] = lambda _message: None  # progress of long steps
    outcomes: list[Outcome] = field(default_factory=list)
    _engine: Engine | None = None
    _models: dict[str, QuantModel] = field(default_factory=dict)
    _ppl: dict[str, PerplexityResult] = field(default_factory=dict)
    _kld: dict[str, KLDResult] = field(default_factory=dict)
    _holm: dict[tuple[str, str], Outcome] | None = None

    # ---- models ----------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            options = RunOptions(self.settings.threads, self.settings.n_gpu_layers,
                                 self.settings.verbose)
            self._engine = Engine(self.backend_factory(), options)
        return self._engine

    def base_path(self) -> Path:
        if self.settings.model is not None:
            return self.settings.model
        from pytest_quantcheck.demo.model import demo_model_path

        return demo_model_path(self.engine.backend, self.engine.options,
                               log=lambda msg: self.log(f"demo model: {msg}"))

    def eval_text(self) -> Path:
        if self.settings.eval_text is not None:
            return self.settings.eval_text
        from pytest_quantcheck.demo.model import data_path

        return data_path("eval.txt")

    @property
    def protocol(self) -> ScoringProtocol:
        s = self.settings
        return ScoringProtocol(n_ctx=s.n_ctx, n_batch=s.n_batch, n_chunks=s.chunks)

    def model(self, spec: str) -> QuantModel:
        """``base``, a llama.cpp file type, or a path to a .gguf file."""
        if spec not in self._models:
            with self._step(f"preparing {spec}"):
                self._models[spec] = QuantModel(self, self._variant(spec))
        return self._models[spec]

    @contextlib.contextmanager
    def _step(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        if seconds >= 0.5:  # cache hits stay quiet
            self.log(f"{what}: {seconds:.1f} s")

    def _variant(self, spec: str) -> Variant:
        base = self.base_path()
        if spec == BASE:
            return from_path(base, name=BASE)
        if spec.upper() in FILE_TYPES:
            return quantize(base, spec, backend=self.engine.backend, imatrix=self.settings.imatrix,
                            n_threads=self.settings.threads)
        path = Path(spec)
        if path.suffix.lower() == ".gguf" or path.exists():
            return from_path(path)
        raise VariantError(
            f"variant {spec!r} is neither a quantization type, 'base', nor an existing .gguf file;"
            f" types: {', '.join(FILE_TYPES)}"
        )

    def reference(self) -> QuantModel:
        return self.model(self.settings.reference)

    def perplexity(self, model: QuantModel) -> PerplexityResult:
        if model.name not in self._ppl:
            with self._step(f"perplexity of {model.name}"):
                self._ppl[model.name] = self.engine.perplexity(model.path, self.eval_text(),
                                                               self.protocol)
        return self._ppl[model.name]

    def kl_divergence(self, model: QuantModel) -> KLDResult:
        if model.name not in self._kld:
            with self._step(f"KL divergence of {model.name} (reference log-probs cached)"):
                self._kld[model.name] = self.engine.kl_divergence(
                    self.reference().path, model.path, self.eval_text(), self.protocol)
        return self._kld[model.name]

    # ---- checks ----------------------------------------------------------------------------

    def context(self) -> Context:
        return Context(self.settings.alpha, self.settings.mode, self.resolve)

    def resolve(self, subject: Any, of: str | None) -> Against:
        if of == "baseline":
            return self.baseline_against(subject)
        other = self.reference() if of is None else self.model(of)
        label = f"{other.name} (reference)" if of is None else other.name
        return Against(label, other.perplexity().chunk_nll)

    def run_check(self, check: Check, model: QuantModel, all_checks: list[tuple[Check, str]],
                  where: tuple[str, str, int] = ("", "", 0)) -> Outcome:
        """Evaluate one check (``where``: the test's node id, file and line); with Holm
        correction, all collected checks are evaluated together the first time, since an
        adjusted p-value depends on every p-value of the run."""
        if self.settings.correction == "holm":
            if self._holm is None:
                raw = [evaluate(c, self.model(v), self.context()) for c, v in all_checks]
                self._holm = {(c.label, v): o for (c, v), o in zip(all_checks, apply_holm(raw),
                                                                    strict=True)}
            outcome = self._holm[(check.label, model.name)]
        else:
            outcome = evaluate(check, model, self.context())
        outcome = replace(outcome, nodeid=where[0], file=where[1], line=where[2])
        self.outcomes.append(outcome)
        return outcome

    def points(self) -> dict[str, dict[str, float]]:
        """Size and quality of every model evaluated so far, for the trade-off plot."""
        out: dict[str, dict[str, float]] = {}
        for name, model in self._models.items():
            if name not in self._ppl and name not in self._kld:
                continue
            out[name] = {
                "bits_per_weight": model.bits_per_weight,
                "size_bytes": model.size_bytes,
                "ppl": self._ppl[name].ppl if name in self._ppl else self._kld[name].ppl.value,
                "kld": self._kld[name].kld.value if name in self._kld else math.nan,
            }
        return out

    def settings_summary(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v)
                for k, v in self.settings.__dict__.items() if k != "sources"}

    # ---- baselines -------------------------------------------------------------------------

    def baseline_path(self) -> Path:
        return self.settings.baseline_dir / baseline.file_name(self.base_path().stem)

    def baseline_keys(self) -> dict[str, Any]:
        ref = self.perplexity(self.reference())
        return {
            "model_sha256": cache.file_sha256(self.base_path()),
            "text_sha256": cache.sha256_of(self.eval_text()),
            "tokens_sha256": ref.tokens_sha256,
            "n_ctx": self.settings.n_ctx,
            "protocol": {**self.protocol.describe(), "n_chunks": ref.n_chunks},
            "llama_cpp": self.engine.backend.version,
        }

    def baseline_against(self, subject: Any) -> Against:
        if self.baseline_mode == "off":
            raise baseline.BaselineError(
                "comparison with the baseline is off; run pytest with --quant-baseline")
        if self.baseline_mode == "update":
            # Being rewritten from this run's numbers: compare with them.
            return Against("baseline (being updated)", subject.perplexity().chunk_nll, True)
        stored = baseline.load(self.baseline_path())
        record = stored.record(subject.name, self.baseline_keys(), self.settings.baseline_ignore)
        try:
            chunk_nll = record["perplexity"]["chunk_nll"]
        except (KeyError, TypeError):
            raise baseline.BaselineError(
                f"{stored.path}: record of {subject.name} has no per-chunk NLL; recreate it with"
                f" {baseline.UPDATE_FLAG}") from None
        return Against(f"baseline {stored.path.name}", np.asarray(chunk_nll, dtype=np.float64),
                       True)

    def baseline_record(self, model: QuantModel) -> dict[str, Any]:
        ppl = self.perplexity(model)
        record: dict[str, Any] = {
            "file_type": model.file_type,
            "size_bytes": model.size_bytes,
            "bits_per_weight": model.bits_per_weight,
            "perplexity": {"ppl": ppl.ppl, "ppl_err": ppl.ppl_err, "n_chunks": ppl.n_chunks,
                           "chunk_nll": ppl.chunk_nll.tolist()},
        }
        if model.name in self._kld:
            kld = self._kld[model.name]
            record["kl_divergence"] = {"mean": kld.kld.value, "same_top": kld.same_top.value,
                                       "chunk_kld": kld.chunk_kld.tolist(),
                                       "chunk_same_top": kld.chunk_same_top.tolist()}
        return record

    def baseline_payload(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        """Keys and records of every model this session evaluated, for the baseline file."""
        names = [name for name in self._models if name in self._ppl or name in self._kld]
        if not names:
            return None
        records = {name: self.baseline_record(self._models[name]) for name in names}
        return self.baseline_keys(), records
