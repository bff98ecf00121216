"""Quantized variants of a base GGUF: llama.cpp file-type names, in-process quantization, and a
content-addressed cache of the results.

A variant is identified by what determines its bytes: the base file's SHA-256, the file type,
the importance matrix's SHA-256 (if any) and the llama.cpp build. Two processes asking for the
same variant build it once; a cached file is checked against its recorded size and hash before
it is used again.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pytest_quantcheck import cache
from pytest_quantcheck.backends import FILE_TYPE_MIX, Backend, QuantizeOptions, physical_cores
from pytest_quantcheck.config import Recipe, Settings
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.gguf_check import check_model_file
from pytest_quantcheck.gguf_file import read_gguf

# FILE_TYPES and FileType re-exported: they were first defined here, and users import them here
from pytest_quantcheck.gguf_types import FILE_TYPES as FILE_TYPES
from pytest_quantcheck.gguf_types import GGML_TYPE_NAMES, TYPE_IDS, file_type_name
from pytest_quantcheck.gguf_types import FileType as FileType
from pytest_quantcheck.imatrix import check_matches, load_imatrix


class VariantError(QuantcheckError, ValueError):
    """An unknown file type, a missing file, or a type that needs an importance matrix."""


def file_type(name: str) -> FileType:
    try:
        return FILE_TYPES[name.upper()]
    except KeyError:
        raise VariantError(
            f"unknown quantization type {name!r}; valid types: {', '.join(FILE_TYPES)}"
        ) from None


@dataclass(frozen=True)
class Variant:
    """A GGUF file to evaluate: built from a base model, or given as a path."""

    name: str
    path: Path
    file_type: str | None  # None for a file given by path
    base: Path | None = None

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def check_gguf_path(path: Path) -> None:
    """Everything short of loading: the file exists, is GGUF, and its header is sound
    (:mod:`pytest_quantcheck.gguf_check`), so llama.cpp never sees a malformed file."""
    if not path.exists():
        raise VariantError(f"{path}: model file not found; pass the path of a .gguf file")
    if not path.is_file():
        raise VariantError(f"{path}: is not a file; pass the path of a .gguf file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise VariantError(
            f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); convert it with"
            " llama.cpp's convert_hf_to_gguf.py"
        )
    check_model_file(path)


def from_path(path: Path, name: str | None = None) -> Variant:
    check_gguf_path(path)
    return Variant(name=name or path.stem, path=path, file_type=None)


FULL_PRECISION = (0, 1, 30)  # ggml types llama.cpp quantizes from: F32, F16, BF16


def check_unquantized(base: Path) -> None:
    """llama.cpp quantizes only from F32, F16 or BF16 weights; asked to quantize a quantized
    file it fails with nothing more than an error code, so the base's file type (and, where it
    is not recorded or is a float type, its tensors' types) is read first and a quantized base
    is refused, saying what it is and what to use."""
    contents = read_gguf(base, decode_strings=False)
    ftype = contents.metadata.get("general.file_type")
    named = file_type_name(ftype) if isinstance(ftype, int) else None
    quantized = sorted({GGML_TYPE_NAMES.get(t.ggml_type, str(t.ggml_type))
                        for t in contents.tensors.values() if t.ggml_type not in FULL_PRECISION
                        and len(t.shape) > 1})  # 1-d tensors (norms) stay F32 in any file
    if named in (None, "F32", "F16", "BF16") and not quantized:
        return
    what = (f"is {named}, a quantized file" if named not in (None, "F32", "F16", "BF16")
            else f"holds quantized tensors ({', '.join(quantized)})")
    raise VariantError(f"{base}: {what}; quantize from an F32, F16 or BF16 GGUF (as"
                       " convert_hf_to_gguf.py writes it)")


def built_for_comparison(spec: str, settings: Settings) -> bool:
    """Whether the model a check's ``of=`` names is built for that comparison alone: a file type
    that is neither a variant nor the reference (False: a variant, the reference, ``base``,
    ``baseline`` or a .gguf file). A name that is none of these is a :class:`VariantError`
    naming the closest, found at collection rather than when the check runs."""
    named = (*settings.variants, settings.reference, "base")
    if spec in (*named, "baseline"):
        return False
    if spec.upper() in FILE_TYPES:
        return spec.upper() not in {name.upper() for name in named}
    path = Path(spec).expanduser()  # relative to where pytest runs, as the model store reads it
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise VariantError(f"of={spec!r}: {path.absolute()} is not a file; fix the path")
        return False
    if path.exists():
        return False
    close = difflib.get_close_matches(spec, [*named, "baseline", *FILE_TYPES], n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    raise VariantError(f"of={spec!r} names no model: not a variant ({', '.join(settings.variants)}),"
                       f" 'base', 'baseline', a file type nor an existing .gguf file{guess}")


def _entry_is_valid(path: Path) -> bool:
    sidecar = path.with_name(path.name + ".json")
    try:
        meta = json.loads(sidecar.read_text())
        if path.stat().st_size != meta["size"]:
            return False
        return bool(cache.file_sha256(path) == meta["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def quantize(
    base: Path,
    type_name: str,
    *,
    backend: Backend,
    imatrix: Path | None = None,
    n_threads: int | None = None,
    cache_dir: Path | None = None,
    options: QuantizeOptions = FILE_TYPE_MIX,
    name: str | None = None,
) -> Variant:
    """The variant of ``base`` quantized to ``type_name`` (with a recipe's ``options``, under
    the recipe's ``name``), from the cache or built now."""
    ft = file_type(type_name)
    check_gguf_path(base)
    check_unquantized(base)
    if ft.needs_imatrix and imatrix is None:
        raise VariantError(
            f"{ft.name} needs an importance matrix; pass one made by llama-imatrix (imatrix=...)"
        )
    root = cache_dir or cache.cache_root()
    base_sha = cache.file_sha256(base, root=root)
    imatrix_sha = cache.file_sha256(imatrix, root=root) if imatrix else None
    parts: list[object] = [base_sha, ft.name, ft.ftype, imatrix_sha, backend.version]
    if options != FILE_TYPE_MIX:  # a recipe: its options are part of what the bytes depend on
        parts.append(repr(options))
    key = cache.key_digest(*parts)
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in (name or ft.name))
    final = root / "variants" / f"{base.stem}-{label}-{key[:16]}.gguf"
    threads = n_threads or physical_cores()

    def build(tmp: Path) -> None:
        weights = None
        if imatrix is not None:
            weights = load_imatrix(imatrix)
            check_matches(weights, imatrix, base)
        backend.quantize(base, tmp, ft.ftype, n_threads=threads, imatrix=weights,
                         options=options)
        # The record goes in before the rename: an entry is never visible without one.
        meta = {
            "sha256": cache.sha256_of(tmp),
            "size": tmp.stat().st_size,
            "base": str(base),
            "base_sha256": base_sha,
            "type": ft.name,
            "imatrix_sha256": imatrix_sha,
            "backend": backend.version,
            "options": repr(options),
        }
        cache.write_atomic(final.with_name(final.name + ".json"), json.dumps(meta, indent=1).encode())

    cache.publish(final, build, _entry_is_valid)
    return Variant(name=name or ft.name, path=final, file_type=ft.name, base=base)


def recipe_chooses(recipe: Recipe | None) -> Callable[[str], bool]:
    """Whether a recipe sets the type of the tensor of this name on purpose (a tensor_types
    pattern, the token embeddings, the output), so its type is no fallback."""
    if recipe is None:
        return lambda _name: False
    patterns = [re.compile(p) for p, _type in recipe.tensor_types]
    named = {n for n, t in (("token_embd.weight", recipe.token_embedding_type),
                            ("output.weight", recipe.output_tensor_type)) if t is not None}
    return lambda name: name in named or any(p.search(name) for p in patterns)


def recipe_options(recipe: Recipe, base: Path) -> QuantizeOptions:
    """A recipe's llama-quantize options, after checking that each tensor_types pattern matches
    a tensor of ``base`` (llama.cpp matches them with std::regex_search, as re.search here)."""
    names = list(read_gguf(base, decode_strings=False).tensors)
    for pattern, _type in recipe.tensor_types:
        if not any(re.search(pattern, n) for n in names):
            example = next((n for n in names if n.startswith("blk.")), names[0] if names else "")
            raise VariantError(
                f"variant {recipe.name!r}: tensor_types pattern {pattern!r} matches no tensor of"
                f" {base.name} (names look like {example!r}); fix the pattern")

    def type_id(name: str | None) -> int | None:
        return None if name is None else TYPE_IDS[name]

    return QuantizeOptions(type_id(recipe.token_embedding_type),
                           type_id(recipe.output_tensor_type),
                           tuple((p, TYPE_IDS[t]) for p, t in recipe.tensor_types), recipe.pure)
