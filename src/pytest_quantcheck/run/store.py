"""The model store of a run: a spec (``base``, a llama.cpp file type, a recipe, a ``.gguf``
path) turned into a file, the evaluation texts by name, the engines that measure, and the heavy
steps with their progress and times. :class:`~pytest_quantcheck.models.Models` measures with it.

No pytest here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from pytest_quantcheck import cache, machine
from pytest_quantcheck.backends import Backend, RunOptions
from pytest_quantcheck.config import Settings
from pytest_quantcheck.demo.model import data_path, demo_model_path
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.gguf_types import FILE_TYPES
from pytest_quantcheck.progress import LiveProgress, Progress
from pytest_quantcheck.variants import (
    Variant,
    VariantError,
    from_path,
    quantize,
    recipe_options,
)

BASE = "base"


@dataclass
class ModelStore:
    """Specs to files, texts by name, the engines, and the run's heavy steps."""

    settings: Settings
    backend_factory: Callable[[], Backend]
    # Long steps and their times ("KL divergence of Q2_K: 2.4 s"), shown after the run: a line
    # printed while pytest writes its progress dots would split pytest's own output.
    steps: list[str] = field(default_factory=list)
    live: LiveProgress | None = None  # progress of long steps on a terminal, if one is watched
    step_note_after: float = 0.5  # seconds: quicker steps (cache hits) stay out of the steps
    # per model name: chunks decoded in this run, and the seconds its decoding took
    decoded: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    _engine: Engine | None = None
    _timing_engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            options = RunOptions(self.settings.threads, self.settings.n_gpu_layers,
                                 self.settings.verbose)
            self._engine = Engine(self.backend_factory(), options,
                                  result_cache=self.settings.result_cache)
        return self._engine

    @property
    def timing_engine(self) -> Engine:
        """The engine of throughput and memory measurements: the evaluation's, or one on the
        ``timing_threads`` setting's thread count (a pytest-xdist worker's timings run on as
        many threads as a serial run's)."""
        threads = self.settings.timing_threads
        if threads is None or threads == self.engine.options.threads():
            return self.engine
        if self._timing_engine is None:
            self._timing_engine = replace(self.engine,
                                          options=replace(self.engine.options, n_threads=threads))
        return self._timing_engine

    def base_path(self) -> Path:
        if self.settings.model is not None:
            return self.settings.model
        return demo_model_path(self.engine.backend, self.engine.options,
                               log=lambda msg: self.steps.append(f"demo model: {msg}"))

    def eval_text(self, text: str | None = None) -> Path:
        """The default evaluation text, or the one named ``text`` (from a table eval_text)."""
        if text is not None:
            return self.settings.eval_texts[text]
        if self.settings.eval_text is not None:
            return self.settings.eval_text
        return data_path("eval.txt")

    def texts(self) -> tuple[str, ...]:
        """The names of the evaluation texts (none when eval_text is one path)."""
        return tuple(self.settings.eval_texts)

    def text_keys(self, text: str) -> dict[str, str]:
        """What a named text's baseline record depends on beyond the run's quality keys (its
        hash, remembered by path, size and mtime: a look asks again)."""
        return {"text_sha256": cache.file_sha256(self.eval_text(text),
                                                  root=self.engine.cache_dir)}

    def named_text(self, text: str | None) -> str | None:
        """The name of a text other than the default; None for the default, under any of its
        names."""
        names = self.texts()
        if text is None or (names and text == names[0]):
            return None
        if text not in names:
            raise VariantError(f"text {text!r} is not in eval_text"
                               f" ({', '.join(names) or 'a single unnamed text'}); name it there")
        return text

    @property
    def protocol(self) -> ScoringProtocol:
        s = self.settings
        return ScoringProtocol(n_ctx=s.n_ctx, n_batch=s.n_batch, n_chunks=s.chunks)

    @contextlib.contextmanager
    def step(self, what: str, unit: str = "chunks",
             detail: Callable[[], str] = str) -> Iterator[Progress | None]:
        """A heavy step: shown live on a terminal (:attr:`live`; the step gets the progress
        callback, or None), noted when slow (``detail`` adds what it did, once done), and never
        run beside a throughput timing."""
        start = time.perf_counter()
        try:
            with machine.heavy_step():
                yield None if self.live is None else self.live.step(what, unit)
        finally:
            if self.live is not None:
                self.live.end()
        seconds = time.perf_counter() - start
        if seconds >= self.step_note_after:
            done = detail()
            self.steps.append(f"{what}{', ' + done if done else ''}: {seconds:.1f} s")

    @contextlib.contextmanager
    def decoding(self, name: str, what: str, default: bool = True
                 ) -> Iterator[tuple[Callable[[int, int], None], Progress | None]]:
        """A decoding step: its time, and how many chunks it decoded (the step calls the
        function it gets with the chunks it returns and those it decoded, and passes the
        progress callback on to the engine); ``default``: a pass on the default text against
        the run's reference, the one the chunk counts describe (other texts and other models'
        passes add their time only). The steps section names the chunks each look decoded."""
        start = time.perf_counter()
        counts: list[int] = []

        def detail() -> str:
            if not counts:
                return ""
            used, decoded = counts
            return (f"chunks {used - decoded + 1}-{used}" if decoded
                    else f"{used} chunks from the cache")

        with self.step(f"{what} of {name}", detail=detail) as progress:
            yield (lambda used, decoded: counts.extend((used, decoded))), progress
        seconds = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if default:
            self.decoded[name] = self.decoded.get(name, 0) + (counts[1] if counts else 0)

    def variant(self, spec: str) -> Variant:
        base = self.base_path()
        if spec == BASE:
            return from_path(base, name=BASE)
        recipe = self.settings.recipes.get(spec)
        if recipe is not None:
            return quantize(base, recipe.type, backend=self.engine.backend,
                            imatrix=recipe.imatrix or self.settings.imatrix,
                            n_threads=self.settings.threads,
                            options=recipe_options(recipe, base), name=recipe.name)
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

    def speed_keys(self) -> dict[str, object]:
        """What the variant files' bytes depend on: the keys throughput and memory check."""
        return {"model_sha256": cache.file_sha256(self.base_path()),
                "llama_cpp": self.engine.backend.version}
