"""Metrics of model files: the entry points the ``quantcheck`` command and the pytest plugin share.

They take paths, check them, load models through the backend, apply the scoring protocol, and
fetch or build the cached reference log-probabilities.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_quantcheck import cache
from pytest_quantcheck.backends import Backend, RunOptions, default_backend
from pytest_quantcheck.evaluation import (
    EvalTextError,
    ScoringProtocol,
    check_length,
    kl_divergence,
    perplexity,
    read_eval_text,
    tokens_digest,
)
from pytest_quantcheck.metrics.kld import DEFAULT_MAX_TOKENS, DEFAULT_TAIL_MASS, KLDResult
from pytest_quantcheck.metrics.perplexity import PerplexityResult
from pytest_quantcheck.refstore import (
    ReferenceStore,
    ReferenceStoreError,
    is_valid,
    open_reference,
    write_reference,
)
from pytest_quantcheck.variants import check_gguf_path

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Engine:
    backend: Backend
    options: RunOptions = RunOptions()
    cache_dir: Path | None = None

    @classmethod
    def default(cls, options: RunOptions = RunOptions(), cache_dir: Path | None = None) -> Engine:
        return cls(default_backend(), options, cache_dir)

    def perplexity(
        self, model_path: Path, text_path: Path, proto: ScoringProtocol,
        progress: Progress | None = None,
    ) -> PerplexityResult:
        check_gguf_path(model_path)
        text = read_eval_text(text_path)
        model = self.backend.load(model_path, self.options)
        try:
            return perplexity(model, text, proto, source=str(text_path), progress=progress)
        finally:
            model.close()

    def reference(
        self, ref_path: Path, text_path: Path, proto: ScoringProtocol,
        tail_mass: float = DEFAULT_TAIL_MASS, max_tokens: int = DEFAULT_MAX_TOKENS,
        progress: Progress | None = None,
    ) -> ReferenceStore:
        """The reference's log-probabilities on this text, from the cache or computed now."""
        check_gguf_path(ref_path)
        text = read_eval_text(text_path)
        root = self.cache_dir or cache.cache_root()
        ref_sha = cache.file_sha256(ref_path, root=root)
        text_sha = hashlib.sha256(text).hexdigest()
        key = cache.key_digest(ref_sha, text_sha, proto.describe(), proto.n_chunks, tail_mass, max_tokens,
                               self.backend.version)
        final = root / "reference" / f"{ref_path.stem}-{key[:20]}"

        def build(tmp: Path) -> None:
            model = self.backend.load(ref_path, self.options)
            try:
                tokens = model.tokenize(text)
                n_chunks = check_length(tokens, proto, str(text_path))
                meta = {"model_sha256": ref_sha, "text_sha256": text_sha,
                        "tokens_sha256": tokens_digest(tokens[: n_chunks * proto.n_ctx]),
                        "backend": self.backend.version}
                write_reference(tmp, model, tokens, proto, n_chunks, meta, tail_mass, max_tokens,
                                progress)
            finally:
                model.close()

        cache.publish(final, build, is_valid)
        return open_reference(final)

    def kl_divergence(
        self, ref_path: Path, model_path: Path, text_path: Path, proto: ScoringProtocol,
        tail_mass: float = DEFAULT_TAIL_MASS, max_tokens: int = DEFAULT_MAX_TOKENS,
        progress: Progress | None = None,
    ) -> KLDResult:
        store = self.reference(ref_path, text_path, proto, tail_mass, max_tokens, progress)
        check_gguf_path(model_path)
        text = read_eval_text(text_path)
        model = self.backend.load(model_path, self.options)
        try:
            tokens = model.tokenize(text)
            n_chunks = check_length(tokens, proto, str(text_path))
            if n_chunks != store.n_chunks or model.n_vocab != store.meta["n_vocab"] or (
                tokens_digest(tokens[: n_chunks * proto.n_ctx]) != store.meta["tokens_sha256"]
            ):
                raise EvalTextError(
                    f"{model_path}: tokenizes {text_path} differently from the reference"
                    f" {ref_path}; KL divergence needs models that share a vocabulary"
                )
            return kl_divergence(model, tokens, proto, store.rows(), n_chunks=n_chunks,
                                 progress=progress)
        finally:
            model.close()


__all__ = ["Engine", "ReferenceStoreError"]
