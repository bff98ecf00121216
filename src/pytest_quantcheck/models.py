"""The models of one run: resolved from their specs (``base``, a file type, a ``.gguf`` path),
each metric computed once, and the passes planned from what the collected checks need (a variant
whose checks need the KL pass gets its perplexity from that pass, not from a second decode).

No pytest here; the session (:mod:`pytest_quantcheck.session`) owns one :class:`Models`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypeVar

from pytest_quantcheck import cache
from pytest_quantcheck.blame import BlameResult, blame
from pytest_quantcheck.checks.outcome import Outcome
from pytest_quantcheck.checks.registry import KL, MACRO, Check, text_of
from pytest_quantcheck.demo.task_sets import task_specs
from pytest_quantcheck.gguf_file import GGUFError, read_gguf
from pytest_quantcheck.machine import Fingerprint
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.metrics.memory import MemoryUsage
from pytest_quantcheck.metrics.perplexity import PerplexityResult, perplexity_from_nll
from pytest_quantcheck.metrics.task_answers import TaskResult
from pytest_quantcheck.metrics.throughput import ThroughputRun
from pytest_quantcheck.refstore import ReferenceStore
from pytest_quantcheck.run.store import BASE as BASE
from pytest_quantcheck.run.store import ModelStore
from pytest_quantcheck.run.timings import Timings
from pytest_quantcheck.tensor_mix import TensorMix, read_mix
from pytest_quantcheck.variants import (
    Variant,
    VariantError,
)

REFERENCE = "reference"  # an assertion helper's default of=: the run's reference model


class PassKey(NamedTuple):
    """What a perplexity or KL pass is held by: the model's name, the named text (None: the
    default), and the model a KL pass is taken from (None: the run's reference). Baselines and
    plots keep the default text against the reference; the others are kept apart."""

    model: str
    text: str | None = None
    reference: str | None = None


def _first_chunks(res: PerplexityResult, upto: int | None) -> PerplexityResult:
    if upto is None or upto >= res.n_chunks:
        return res
    return perplexity_from_nll(res.token_nll[:upto], res.n_ctx, res.tokens_sha256,
                               res.n_available)


def _first_kld_chunks(res: KLDResult, upto: int | None) -> KLDResult:
    """The chunk-level arrays of the first ``upto`` chunks (what checks are decided on); the
    summary figures stay those of every chunk computed."""
    if upto is None or upto >= res.n_chunks:
        return res
    return replace(res, n_chunks=upto, n_tokens=upto * res.token_kld.shape[1],
                   token_kld=res.token_kld[:upto], token_nll=res.token_nll[:upto],
                   chunk_kld=res.chunk_kld[:upto], chunk_nll=res.chunk_nll[:upto],
                   chunk_nll_ref=res.chunk_nll_ref[:upto], chunk_same_top=res.chunk_same_top[:upto])


R = TypeVar("R", PerplexityResult, KLDResult)


def _held(full: dict[PassKey, R], partial: dict[PassKey, R], name: PassKey, upto: int | None,
          cut: Callable[[R, int | None], R]) -> R | None:
    """The result of ``name`` this run holds for ``upto`` chunks (None: all), if any."""
    if name in full:
        return cut(full[name], upto)
    some = partial.get(name)
    if some is not None and upto is not None and some.n_chunks >= upto:
        return cut(some, upto)
    return None


def _keep(full: dict[PassKey, R], partial: dict[PassKey, R], name: PassKey, res: R, n_available: int) -> None:
    """Hold a new result: complete when it covers every chunk, else partial."""
    if res.n_chunks >= n_available:
        full[name] = res
        partial.pop(name, None)
    else:
        partial[name] = res


class QuantModel:
    """A model under test: a file and its metrics, each computed once per run."""

    def __init__(self, models: Models, variant: Variant) -> None:
        self.models = models
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

    def perplexity(self, text: str | None = None) -> PerplexityResult:
        """Perplexity on the default evaluation text, or the one named ``text``."""
        return self.models.perplexity(self, text=text)

    def kl_divergence(self, reference: QuantModel | None = None,
                      text: str | None = None) -> KLDResult:
        """KL divergence from the run's reference model, or from ``reference``, on the default
        evaluation text or the one named ``text``."""
        return self.models.kl_divergence(self, reference=reference, text=text)

    @functools.cache  # noqa: B019 (a model lives for the session; every failing check shares one)
    def blame(self, by: str = "kind", text: str | None = None) -> BlameResult:
        """Each tensor group's share of this model's KL divergence from the base model
        (:mod:`pytest_quantcheck.blame`), on the default evaluation text or the one named."""
        store = self.models.store
        return blame(store.base_path(), self.path, store.eval_text(text), store.protocol, by=by,
                     engine=store.engine, name=self.name)

    def reference(self) -> QuantModel:
        """The model relative checks compare this one with by default."""
        return self.models.reference()

    def throughput(self) -> ThroughputRun:
        """llama-bench's pp and tg tests, timed with the machine to itself."""
        return self.models.timings.throughput(self)

    def memory(self) -> MemoryUsage:
        """Resident (and GPU) memory of load plus one scored chunk."""
        return self.models.timings.memory(self)

    def task(self, name: str) -> TaskResult:
        """Accuracy on the task set ``name`` (from the ``tasks`` setting), per task."""
        return self.models.task(self, name)

    def fingerprint(self) -> Fingerprint:
        return self.models.timings.fingerprint()

    def tensor_mix(self) -> TensorMix:
        """The tensor types llama.cpp wrote into this file, and a hash per tensor."""
        return self.models.tensor_mix(self)

    def __repr__(self) -> str:
        return f"QuantModel({self.name!r}, {self.path})"


@dataclass
class Models:
    """The models of one run and their measurements: memo tables of results (whole, or as far
    as a look needed), the plan of passes, and the models table; files and texts come from
    the ``store``, throughput and memory from the ``timings``."""

    store: ModelStore
    timings: Timings

    # Decides an assertion helper's check on one of these models as the run decides a marker's
    # (check, model, alpha, mode, (node id, file, line)), keeping its fate for the reports.
    decide: Callable[[Check, QuantModel, float, str, tuple[str, str, int]], Outcome] | None = None
    ppl: dict[PassKey, PerplexityResult] = field(default_factory=dict)
    kld: dict[PassKey, KLDResult] = field(default_factory=dict)
    task_results: dict[tuple[str, str], TaskResult] = field(default_factory=dict)  # (model, task)
    tasks_scored: dict[str, int] = field(default_factory=dict)  # per model, scored in this run
    _partial_ppl: dict[PassKey, PerplexityResult] = field(default_factory=dict)
    _partial_kld: dict[PassKey, KLDResult] = field(default_factory=dict)
    _by_spec: dict[str, QuantModel] = field(default_factory=dict)
    _wants_kl: set[tuple[str, str | None]] = field(default_factory=set)  # (variant spec, text)
    # log-probabilities of the reference, and of other models a check's of= names, by
    # (model name, text), each kept as the reference's are, by content
    _stores: dict[tuple[str, str | None], ReferenceStore] = field(default_factory=dict)
    _mixes: dict[str, TensorMix] = field(default_factory=dict)

    def texts_of(self, name: str) -> list[str]:
        """The named texts other than the default this run measured ``name`` on."""
        return sorted({key.text for table in self._tables() for key in table
                       if key.model == name and key.text and key.reference is None})

    def model(self, spec: str) -> QuantModel:
        """``base``, a llama.cpp file type, or a path to a .gguf file."""
        if spec not in self._by_spec:
            with self.store.step(f"preparing {spec}"):
                model = QuantModel(self, self.store.variant(spec))
            same = [(other, m) for other, m in self._by_spec.items() if m.name == model.name]
            if same and same[0][1].path.resolve() == model.path.resolve():
                model = same[0][1]  # one file named two ways: one model, measured once
            elif same:  # metrics and baseline records are kept by name: refuse to mix two files
                raise VariantError(
                    f"variants {same[0][0]!r} and {spec!r} are both named {model.name!r} (a .gguf"
                    " variant is named after its file name); rename one of the files")
            self._by_spec[spec] = model
        return self._by_spec[spec]

    def reference(self) -> QuantModel:
        return self.model(self.store.settings.reference)

    def named(self, name: str) -> QuantModel:
        """A model of the run by its name (an assertion helper's ``of=`` model: a .gguf
        variant's name is its file's stem, not its spec), else the model ``name`` specifies."""
        for model in self._by_spec.values():
            if model.name == name:
                return model
        return self.model(name)

    def chunks_available(self, model: QuantModel, first: int, text: str | None = None,
                         reference: QuantModel | None = None) -> int:
        """The chunks the text offers under the protocol, learnt from the pass a check will
        use: the model's own (perplexity, or KL against the run's reference), or the
        log-probabilities of ``reference`` for a KL check from another model; ``first``: the
        chunks to decode for it (the first look)."""
        if reference is not None:
            other = None if reference.name == self.reference().name else reference
            return self._reference_store(first, other, self.store.named_text(text)).n_available
        return self.perplexity(model, first, text).n_available

    def plan(self, needs: Iterable[tuple[str, frozenset[str]]]) -> None:
        """Note what each variant's collected checks need (pairs of variant and needs). A
        variant that needs the KL pass gets its perplexity from it (the same float64 per-token
        NLL, bit for bit), and the reference's cached log-probabilities yield its perplexity,
        so neither is decoded twice."""
        self._wants_kl = set()
        for variant, wants in needs:
            if KL in wants:
                text = text_of(wants)
                texts = self.store.texts() if text == MACRO else (text,)
                self._wants_kl |= {(variant, self.store.named_text(t)) for t in texts or (None,)}

    def perplexity(self, model: QuantModel, upto: int | None = None,
                   text: str | None = None) -> PerplexityResult:
        """The model's perplexity over all chunks, or the first ``upto`` (a sequential look), on
        the default text or the one named ``text``."""
        text = self.store.named_text(text)
        key = PassKey(model.name, text)
        held = _held(self.ppl, self._partial_ppl, key, upto, _first_chunks)
        if held is not None:
            return held
        # planned by spec, held by name (a .gguf variant is named after its file)
        wants_kl = any(t == text and spec in self._by_spec and self._by_spec[spec].name == model.name
                       for spec, t in self._wants_kl)
        if key in self.kld or wants_kl:
            kld = self.kl_divergence(model, upto, text=text)
            store = self._reference_store(upto, text=text)
            res = perplexity_from_nll(kld.token_nll, self.store.protocol.n_ctx,
                                      str(store.meta["tokens_sha256"]), store.n_available)
        elif model.name == self.reference().name and any(t == text for _v, t in self._wants_kl):
            res = self._reference_store(upto, text=text).perplexity()
        else:
            with self.store.decoding(model.name, "perplexity", text is None) as (note, progress):
                res = self.store.engine.perplexity(model.path, self.store.eval_text(text),
                                                   self.store.protocol, progress, upto)
                note(res.n_chunks, res.decoded)
        _keep(self.ppl, self._partial_ppl, key, res, res.n_available)
        return _first_chunks(res, upto)

    def _reference_store(self, upto: int | None = None, other: QuantModel | None = None,
                         text: str | None = None) -> ReferenceStore:
        """The log-probabilities of the reference (or of ``other``, a check's of=) on a text,
        of every chunk or at least the first ``upto``: opened once per run, and built further
        only when a look needs more."""
        ref = self.reference() if other is None else other
        store = self._stores.get((ref.name, text))
        if store is None or (not store.meta.get("complete") and (
                upto is None or store.n_chunks < upto)):
            with self.store.decoding(ref.name, "reference log-probs",
                                other is None and text is None) as (note, progress):
                store = self.store.engine.reference(ref.path, self.store.eval_text(text), self.store.protocol,
                                              progress=progress, upto=upto)
                note(store.n_chunks, store.decoded)
            self._stores[(ref.name, text)] = store
        return store

    def kl_divergence(self, model: QuantModel, upto: int | None = None,
                      reference: QuantModel | None = None,
                      text: str | None = None) -> KLDResult:
        """The model's KL pass against the run's reference, or against ``reference`` (another
        model of the run or a file), over every chunk or the first ``upto``, on the default
        text or the one named ``text``."""
        text = self.store.named_text(text)
        if reference is not None and reference.name == self.reference().name:
            reference = None
        key = PassKey(model.name, text, None if reference is None else reference.name)
        held = _held(self.kld, self._partial_kld, key, upto, _first_kld_chunks)
        if held is not None:
            return held
        store = self._reference_store(upto, reference, text)
        ref_path = (reference or self.reference()).path
        with self.store.decoding(model.name, "KL divergence (reference log-probs cached)",
                            text is None and reference is None) as (note, progress):
            res = self.store.engine.kl_divergence(
                ref_path, model.path, self.store.eval_text(text), self.store.protocol,
                progress=progress, upto=upto)
            note(res.n_chunks, res.decoded)
        _keep(self.kld, self._partial_kld, key, res, store.n_available)
        return _first_kld_chunks(res, upto)

    def chunks_used(self, name: str) -> int:
        """The most chunks of ``name`` this run has looked at."""
        found = [r.n_chunks for table in self._tables() for key, r in table.items()
                 if key == PassKey(name)]
        if name == self.reference().name and (name, None) in self._stores:
            found.append(self._stores[(name, None)].n_chunks)  # its log-probabilities
        return max(found, default=0)

    def tensor_mix(self, model: QuantModel) -> TensorMix:
        """The tensor types and per-tensor hashes of the model's file (read once per file
        content, see tensor_mix.py)."""
        if model.name not in self._mixes:
            with self.store.step(f"tensor hashes of {model.name}"):
                self._mixes[model.name] = read_mix(model.path, self.store.engine.cache_dir)
        return self._mixes[model.name]

    def task(self, model: QuantModel, name: str, upto: int | None = None) -> TaskResult:
        """The model's answers on the task set ``name``: every selected task, or the first
        ``upto`` (a sequential look), scored once and extended when a look needs more."""
        key = (model.name, name)
        held = self.task_results.get(key)
        if held is None or held.n_tasks < (held.task_numbers.size if upto is None else
                                           min(upto, held.task_numbers.size)):
            specs = task_specs(self.store.settings)
            if name not in specs:
                raise VariantError(f"task set {name!r} is not in the tasks setting"
                                   f" ({', '.join(specs) or 'none are set'}); add it there")
            spec = specs[name]
            limit = spec.limit if spec.limit is not None else self.store.settings.task_limit
            s = self.store.settings
            with self.store.step(f"{name} tasks of {model.name}", "tasks",
                           detail=lambda: f"{scored} tasks scored") as progress:
                held = self.store.engine.tasks(
                    model.path, spec.file, spec.mode, limit, n_ctx=s.n_ctx,
                    n_parallel=s.task_parallel, n_batch=s.n_batch, progress=progress,
                    name=name, upto=upto)
                scored = held.decoded
            self.task_results[key] = held
            self.tasks_scored[model.name] = self.tasks_scored.get(model.name, 0) + scored
        return held.first(upto)

    def by_name(self) -> dict[str, QuantModel]:
        return {m.name: m for m in self._by_spec.values()}

    def names(self) -> set[str]:
        """Every model this run decoded, measured, scored or read log-probabilities of."""
        names = set(self.store.decoded) | set(self.measured())
        names |= {key.model for table in self._tables() for key in table}
        return names | {model for model, _task in self.task_results} | {m for m, _t in self._stores}

    def measured(self) -> dict[str, QuantModel]:
        """Models with at least one measurement, by name (a path variant's name is its stem)."""
        with_tasks = {model for model, _task in self.task_results}
        return {m.name: m for m in self._by_spec.values() if m.name in with_tasks
                or self.has_quality(m.name) or m.name in self.timings.speed
                or m.name in self.timings.memory_usage
                or m.name in self._mixes or self.texts_of(m.name)}

    def has_quality(self, name: str) -> bool:
        """Whether this run computed perplexity (or KL divergence) of ``name``, in full or in
        part."""
        return any(PassKey(name) in table for table in self._tables())

    def has_kl(self, name: str) -> bool:
        return PassKey(name) in self.kld or PassKey(name) in self._partial_kld

    def _tables(self) -> tuple[dict[PassKey, PerplexityResult] | dict[PassKey, KLDResult], ...]:
        return (self.ppl, self._partial_ppl, self.kld, self._partial_kld)

    def tasks_of(self, name: str, complete: bool = False) -> dict[str, TaskResult]:
        """The task results of the model ``name``, by task set: as far as this run scored them,
        or (``complete``) every selected task, scoring the rest of a set a look stopped early."""
        found = {task: r for (model, task), r in self.task_results.items() if model == name}
        if complete:
            by_name = {m.name: m for m in self._by_spec.values()}
            found = {task: r if r.complete else self.task(by_name[name], task)
                     for task, r in found.items()}
        return found

    def quality_keys(self) -> dict[str, object]:
        """What the run's quality numbers depend on, as baseline keys."""
        ref = self.perplexity(self.reference())
        return {
            "model_sha256": cache.file_sha256(self.store.base_path()),
            "text_sha256": cache.sha256_of(self.store.eval_text()),
            "tokens_sha256": ref.tokens_sha256,
            "n_ctx": self.store.settings.n_ctx,
            "protocol": {**self.store.protocol.describe(), "n_chunks": ref.n_chunks},
            "llama_cpp": self.store.engine.backend.version,
        }
