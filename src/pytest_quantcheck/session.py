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

from pytest_quantcheck import baseline, cache, machine
from pytest_quantcheck.backends import Backend, RunOptions
from pytest_quantcheck.checks import (
    Against,
    Check,
    CheckSkipped,
    Context,
    Outcome,
    SpeedAgainst,
    apply_holm,
    evaluate,
)
from pytest_quantcheck.config import Settings
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.gguf_file import GGUFError, read_gguf
from pytest_quantcheck.machine import Fingerprint
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.metrics.memory import MemoryUsage
from pytest_quantcheck.metrics.perplexity import PerplexityResult, perplexity_from_nll
from pytest_quantcheck.metrics.throughput import BenchResult, ThroughputRun
from pytest_quantcheck.refstore import ReferenceStore
from pytest_quantcheck.variants import FILE_TYPES, Variant, VariantError, from_path, quantize

BASE = "base"
KLD_MARKERS = ("kl_divergence_at_most", "top1_agreement_at_least")


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

    def throughput(self) -> ThroughputRun:
        """llama-bench's pp and tg tests, timed with the machine to itself."""
        return self._session.throughput(self)

    def memory(self) -> MemoryUsage:
        """Resident (and GPU) memory of load plus one evaluation batch."""
        return self._session.memory(self)

    def fingerprint(self) -> Fingerprint:
        return self._session.fingerprint()

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
    _speed: dict[str, ThroughputRun] = field(default_factory=dict)
    _memory: dict[str, MemoryUsage] = field(default_factory=dict)
    _fingerprint: Fingerprint | None = None
    _wants_kld: set[str] = field(default_factory=set)
    _store: ReferenceStore | None = None
    _holm: dict[tuple[str, str], Outcome | Exception] | None = None

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
                model = QuantModel(self, self._variant(spec))
            same = [(other, m) for other, m in self._models.items() if m.name == model.name]
            if same and same[0][1].path.resolve() == model.path.resolve():
                model = same[0][1]  # one file named two ways: one model, measured once
            elif same:  # metrics and baseline records are kept by name: refuse to mix two files
                raise VariantError(
                    f"variants {same[0][0]!r} and {spec!r} are both named {model.name!r} (a .gguf"
                    " variant is named after its file name); rename one of the files")
            self._models[spec] = model
        return self._models[spec]

    @contextlib.contextmanager
    def _step(self, what: str) -> Iterator[None]:
        """A heavy step: logged when slow, and never run beside a throughput timing."""
        start = time.perf_counter()
        with machine.heavy_step():
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
        if not path.is_absolute() and spec in (*self.settings.variants, self.settings.reference):
            # a path in the settings is relative to the file that set it
            key = "variants" if spec in self.settings.variants else "reference"
            path = self.settings.bases.get(key, Path.cwd()) / path
        if path.suffix.lower() == ".gguf" or path.exists():
            return from_path(path)
        raise VariantError(
            f"variant {spec!r} is neither a quantization type, 'base', nor an existing .gguf file;"
            f" types: {', '.join(FILE_TYPES)}"
        )

    def reference(self) -> QuantModel:
        return self.model(self.settings.reference)

    def plan(self, checks: list[tuple[Check, str]]) -> None:
        """Note which variants the collected checks will compare with the reference's
        distribution: their KL pass yields their perplexity too (the same float64 per-token
        NLL, bit for bit), and the reference's cached log-probabilities yield its perplexity,
        so neither is decoded twice."""
        self._wants_kld = {v for c, v in checks if c.marker in KLD_MARKERS}

    def perplexity(self, model: QuantModel) -> PerplexityResult:
        if model.name not in self._ppl:
            if model.name not in self._kld and model.name in self._wants_kld:
                self.kl_divergence(model)
            if model.name in self._kld:
                store = self._reference_store()
                self._ppl[model.name] = perplexity_from_nll(
                    self._kld[model.name].token_nll, self.protocol.n_ctx,
                    str(store.meta["tokens_sha256"]))
            elif self._wants_kld and model.name == self.reference().name:
                with self._step(f"perplexity of {model.name} (from its cached log-probs)"):
                    self._ppl[model.name] = self._reference_store().perplexity()
            else:
                with self._step(f"perplexity of {model.name}"):
                    self._ppl[model.name] = self.engine.perplexity(model.path, self.eval_text(),
                                                                   self.protocol)
        return self._ppl[model.name]

    def _reference_store(self) -> ReferenceStore:
        if self._store is None:  # the text is hashed and the store opened once per session
            with self._step("reference log-probs"):
                self._store = self.engine.reference(self.reference().path, self.eval_text(),
                                                    self.protocol)
        return self._store

    def kl_divergence(self, model: QuantModel) -> KLDResult:
        if model.name not in self._kld:
            with self._step(f"KL divergence of {model.name} (reference log-probs cached)"):
                self._kld[model.name] = self.engine.kl_divergence(
                    self.reference().path, model.path, self.eval_text(), self.protocol)
        return self._kld[model.name]

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:
            self._fingerprint = self.engine.fingerprint()
        return self._fingerprint

    def throughput(self, model: QuantModel) -> ThroughputRun:
        if model.name not in self._speed:
            s = self.settings
            fingerprint = self.fingerprint()
            start = time.perf_counter()
            with machine.timing():  # waits for heavy steps of other workers and processes
                self._speed[model.name] = self.engine.throughput(
                    model.path, s.bench_prompt, s.bench_gen, s.bench_repetitions,
                    n_batch=s.n_batch, fingerprint=fingerprint)
            self.log(f"throughput of {model.name}: {time.perf_counter() - start:.1f} s")
        return self._speed[model.name]

    def memory(self, model: QuantModel) -> MemoryUsage:
        if model.name not in self._memory:
            with self._step(f"memory of {model.name}"):
                self._memory[model.name] = self.engine.memory(model.path, self.protocol)
        return self._memory[model.name]

    # ---- checks ----------------------------------------------------------------------------

    def context(self) -> Context:
        return Context(self.settings.alpha, self.settings.mode, self.resolve, self.resolve_speed)

    def resolve_speed(self, subject: Any, of: str, phase: str) -> SpeedAgainst:
        if of == "baseline":
            return self.baseline_speed(subject, phase)
        other = self.model(of).throughput()
        if phase not in other.tests:
            raise CheckSkipped(f"no {phase} test was run for {of}")
        return SpeedAgainst(of, other.tests[phase])

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
                self._holm = self._holm_outcomes(all_checks)
            found = self._holm[(check.label, model.name)]
            if isinstance(found, Exception):
                raise found  # skipped or failed to evaluate: reported at this check's turn
            outcome = found
        else:
            outcome = evaluate(check, model, self.context())
        outcome = replace(outcome, nodeid=where[0], file=where[1], line=where[2])
        self.outcomes.append(outcome)
        return outcome

    def _holm_outcomes(self, all_checks: list[tuple[Check, str]]
                       ) -> dict[tuple[str, str], Outcome | Exception]:
        found: dict[tuple[str, str], Outcome | Exception] = {}
        for c, v in all_checks:
            try:
                found[(c.label, v)] = evaluate(c, self.model(v), self.context())
            except Exception as exc:
                found[(c.label, v)] = exc
        decided = [k for k, o in found.items() if isinstance(o, Outcome)]
        adjusted = apply_holm([found[k] for k in decided])  # type: ignore[misc]
        found.update(zip(decided, adjusted, strict=True))
        return found

    def points(self) -> dict[str, dict[str, float]]:
        """Size, quality and speed of every model measured so far, for the trade-off plots."""
        out: dict[str, dict[str, float]] = {}
        for name, model in self._measured().items():
            point = {"bits_per_weight": model.bits_per_weight, "size_bytes": model.size_bytes}
            if name in self._ppl or name in self._kld:
                point["ppl"] = self._ppl[name].ppl if name in self._ppl else self._kld[name].ppl.value
            if name in self._kld:
                point["kld"] = self._kld[name].kld.value
            for phase, result in self._speed[name].tests.items() if name in self._speed else ():
                point[f"{phase}_tokens_per_s"] = result.mean
            out[name] = point
        return out

    def settings_summary(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v)
                for k, v in self.settings.__dict__.items() if k not in ("sources", "bases")}

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

    def _stored(self) -> baseline.BaselineFile:
        if self.baseline_mode == "off":
            raise baseline.BaselineError(
                "comparison with the baseline is off; run pytest with --quant-baseline")
        return baseline.load(self.baseline_path())

    def baseline_against(self, subject: Any) -> Against:
        if self.baseline_mode == "update":
            # Being rewritten from this run's numbers: compare with them.
            return Against("baseline (being updated)", subject.perplexity().chunk_nll, True)
        stored = self._stored()
        record = stored.record(subject.name, self.baseline_keys(), self.settings.baseline_ignore)
        try:
            chunk_nll = record["perplexity"]["chunk_nll"]
        except (KeyError, TypeError):
            raise baseline.BaselineError(
                f"{stored.path}: record of {subject.name} has no per-chunk NLL; recreate it with"
                f" {baseline.UPDATE_FLAG}") from None
        return Against(f"baseline {stored.path.name}", np.asarray(chunk_nll, dtype=np.float64),
                       True)

    def baseline_speed(self, subject: Any, phase: str) -> SpeedAgainst:
        """The stored throughput of ``subject`` measured on a machine like this one; a check
        against a baseline from another machine is skipped, with the differences as reason."""
        if self.baseline_mode == "update":
            return SpeedAgainst("baseline (being updated)", subject.throughput().tests[phase], True)
        stored = self._stored()
        keys = {"model_sha256": cache.file_sha256(self.base_path()),
                "llama_cpp": self.engine.backend.version}
        record = stored.record(subject.name, keys, self.settings.baseline_ignore,
                               baseline.SPEED_KEY_FIELDS)
        here = self.fingerprint()
        ignore = self.settings.fingerprint_ignore
        machines = [m for m in record.get("machines", []) if isinstance(m, dict)]
        measured = [m for m in machines if phase in m.get("throughput", {})]
        if not measured:
            raise baseline.BaselineError(
                f"{stored.path}: no {phase} throughput baseline for {subject.name}; create it with"
                f" {baseline.UPDATE_FLAG}")
        fingerprints = [Fingerprint.from_dict(m.get("fingerprint", {})) for m in measured]
        for entry, fp in zip(measured, fingerprints, strict=True):
            if not fp.differences(here, ignore):
                try:
                    result = BenchResult.from_dict(entry["throughput"][phase])
                except (KeyError, TypeError, ValueError):
                    raise baseline.BaselineError(
                        f"{stored.path}: the {phase} throughput record of {subject.name} is"
                        f" damaged; recreate it with {baseline.UPDATE_FLAG}") from None
                return SpeedAgainst(f"baseline {stored.path.name}", result, True)
        nearest = min(fingerprints, key=lambda fp: len(fp.differences(here, ignore)))
        raise CheckSkipped(
            f"the {phase} throughput baseline of {subject.name} was measured on another machine"
            f" ({'; '.join(nearest.differences(here, ignore))}); compare on that machine, record"
            f" this one with {baseline.UPDATE_FLAG}, or list the field in fingerprint_ignore")

    def baseline_record(self, model: QuantModel) -> dict[str, Any]:
        record: dict[str, Any] = {
            "file_type": model.file_type,
            "size_bytes": model.size_bytes,
            "bits_per_weight": model.bits_per_weight,
        }
        if model.name in self._ppl or model.name in self._kld:
            ppl = self.perplexity(model)
            record["perplexity"] = {"ppl": ppl.ppl, "ppl_err": ppl.ppl_err,
                                    "n_chunks": ppl.n_chunks, "chunk_nll": ppl.chunk_nll.tolist()}
        if model.name in self._kld:
            kld = self._kld[model.name]
            record["kl_divergence"] = {"mean": kld.kld.value, "same_top": kld.same_top.value,
                                       "chunk_kld": kld.chunk_kld.tolist(),
                                       "chunk_same_top": kld.chunk_same_top.tolist()}
        speed, memory = self._speed.get(model.name), self._memory.get(model.name)
        if speed is not None or memory is not None:
            entry: dict[str, Any] = {"fingerprint": self.fingerprint().to_dict()}
            if speed is not None:
                entry["throughput"] = {phase: r.to_dict() for phase, r in speed.tests.items()}
                entry["bandwidth_gb_s"] = None if speed.bandwidth is None else speed.bandwidth / 1e9
            if memory is not None:
                entry["memory"] = memory.to_dict()
            record["machines"] = [entry]
        return record

    def _measured(self) -> dict[str, QuantModel]:
        """Models with at least one measurement, by name (a path variant's name is its stem)."""
        return {m.name: m for m in self._models.values() if any(
            m.name in table for table in (self._ppl, self._kld, self._speed, self._memory))}

    def baseline_payload(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | None:
        """Keys and records of every model this session measured, for the baseline file."""
        names = self._measured()
        if not names:
            return None
        records = {name: self.baseline_record(model) for name, model in names.items()}
        return self.baseline_keys(), records
