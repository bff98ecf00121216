"""Settings: ``[tool.quantcheck]`` in pyproject.toml, ``quantcheck.yaml``, pytest ini options and
``--quant-*`` flags merged, in that order of precedence (later wins), and validated once into a
frozen :class:`Settings`. Every error names the file (or flag), the key and what is allowed.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.gguf_types import FILE_TYPES, TYPE_IDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MODES = ("detect", "prove")
CORRECTIONS = ("none", "holm")
# What a baseline's quality records are keyed by (baseline.py compares them; settings name
# those to ignore)
KEY_FIELDS = ("model_sha256", "text_sha256", "tokens_sha256", "n_ctx", "protocol", "llama_cpp")
# The fields of a machine fingerprint (machine.Fingerprint; tests/test_architecture.py holds
# them equal), which fingerprint_ignore may name
FINGERPRINT_FIELDS = ("cpu", "cpu_features", "threads", "os", "llama_cpp", "gpu", "n_gpu_layers")


class ConfigError(QuantcheckError, ValueError):
    """A bad setting; ``str()`` is the whole one-line message."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}")


TASK_MODES = ("hellaswag", "winogrande", "multiple-choice")


@dataclass(frozen=True)
class TaskSpec:
    """One entry of the ``tasks`` table: a task file, its layout (None: known from the name or
    the file) and how many tasks to score (None: the ``task_limit`` setting)."""

    file: Path
    mode: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class Recipe:
    """A variant given as a table: a llama.cpp file type and llama-quantize's options on top of
    it (types by name, as llama-quantize spells them; ``tensor_types``: regular expression to
    type, as ``--tensor-type``), built under its own ``name``."""

    name: str
    type: str
    token_embedding_type: str | None = None
    output_tensor_type: str | None = None
    tensor_types: tuple[tuple[str, str], ...] = ()
    imatrix: Path | None = None  # None: the run's imatrix setting
    pure: bool = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type,
                "token_embedding_type": self.token_embedding_type,
                "output_tensor_type": self.output_tensor_type,
                "tensor_types": dict(self.tensor_types),
                "imatrix": None if self.imatrix is None else str(self.imatrix), "pure": self.pure}


@dataclass(frozen=True)
class Settings:
    model: Path | None = None  # None: the built-in demo model
    variants: tuple[str, ...] = ("Q8_0", "Q4_K_M")
    reference: str = "base"  # "base" (the model file), a file type name, or a .gguf path
    eval_text: Path | None = None  # None: the demo model's held-out text
    n_ctx: int = 512
    n_batch: int = 2048
    chunks: int | None = None
    threads: int | None = None
    # threads of throughput and memory measurements where they differ from ``threads``: a
    # pytest-xdist worker evaluates on its share of the cores, but times a model holding the
    # machine alone, on as many threads as a serial run, so a serial baseline compares
    timing_threads: int | None = None
    n_gpu_layers: int = 0
    alpha: float = 0.05
    mode: str = "detect"
    correction: str = "none"
    baseline_dir: Path = Path("baselines")
    baseline_ignore: tuple[str, ...] = ()
    imatrix: Path | None = None
    bench_prompt: int = 512  # llama-bench's pp test size; 0 skips the test
    bench_gen: int = 128  # its tg test size
    bench_repetitions: int = 5
    fingerprint_ignore: tuple[str, ...] = ()
    baseline_runs: int = 10  # separate runs a baseline keeps per machine, for the between-run spread
    throughput_confirm: bool = False  # a failing throughput check measures again before failing
    # task sets by name; empty: the demo model's three task files when the model is the demo's
    tasks: Mapping[str, TaskSpec] = field(default_factory=dict)
    task_limit: int | None = None  # tasks scored per set; None: llama-perplexity's default, 0: all
    task_parallel: int = 4  # parallel sequences in task scoring, as llama-perplexity's -np
    sequential: bool = True  # decide chunk and task checks in looks, stopping when decided
    min_chunks: int = 8  # chunks of the first look (no decision before)
    min_tasks: int = 100  # tasks of a task check's first look
    result_cache: bool = True  # per-chunk results kept by content across runs
    blame: bool = False  # a failing quality check names the tensor groups behind the KLD
    verbose: bool = False
    # variants given as tables (recipes), by name; their names are in ``variants`` too
    recipes: Mapping[str, Recipe] = field(default_factory=dict)
    # named evaluation texts, when eval_text is a table (its first is eval_text, the default)
    eval_texts: Mapping[str, Path] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    bases: Mapping[str, Path] = field(default_factory=dict, compare=False, repr=False)


def _int(minimum: int, even: bool = False) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        try:
            number = int(str(value).strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {value!r}") from None
        if number < minimum or (even and number % 2):
            kind = "an even number" if even else "a number"
            raise ValueError(f"expected {kind} >= {minimum}, got {number}")
        return number

    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return parse(value)

    return wrapped


def _alpha(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not 0.0 < number <= 0.5:
        raise ValueError(f"expected a value in (0, 0.5], got {number}")
    return number


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"expected one of {', '.join(options)}; got {value!r}")
        return text

    return parse


def _names(allowed: tuple[str, ...] | None = None) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError(f"expected a list of names, got {value!r}")
        names = tuple(str(item).strip() for item in items if str(item).strip())
        if allowed is not None:
            bad = [n for n in names if n not in allowed]
            if bad:
                raise ValueError(f"unknown {', '.join(bad)}; allowed: {', '.join(allowed)}")
        return names

    return parse


def _baseline_keys(value: Any) -> tuple[str, ...]:
    return _names(KEY_FIELDS)(value)


_RECIPE_KEYS = ("name", "type", "token_embedding_type", "output_tensor_type", "tensor_types",
                "imatrix", "pure")


def _recipe(entry: Mapping[str, Any]) -> Recipe:
    """A variant table, checked: known keys, a name that is no file type's, known types, and
    patterns that compile."""
    unknown = set(entry) - set(_RECIPE_KEYS)
    if unknown or "name" not in entry or "type" not in entry:
        raise ValueError(f"a variant table takes name and type (and {', '.join(_RECIPE_KEYS[2:])});"
                         f" got {dict(entry)!r}")
    name = _text(entry["name"])
    if name.upper() in FILE_TYPES or name == "base":
        raise ValueError(f"variant table {name!r}: its name is a file type's; name the recipe,"
                         " e.g. \"Q4_K_M-q8embed\"")
    ftype = str(entry["type"]).upper()
    if ftype not in FILE_TYPES:
        raise ValueError(f"variant {name!r}: unknown type {entry['type']!r}; types:"
                         f" {', '.join(FILE_TYPES)}")

    def tensor_type(key: str, value: Any) -> str:
        text = str(value).upper()
        if text not in TYPE_IDS:
            raise ValueError(f"variant {name!r}: {key} {value!r} is not a tensor type; types:"
                             f" {', '.join(TYPE_IDS)}")
        return text

    overrides = entry.get("tensor_types", {})
    if not isinstance(overrides, Mapping):
        raise ValueError(f"variant {name!r}: tensor_types must be a table of pattern = type, got"
                         f" {overrides!r}")
    pairs = []
    for pattern, type_name in overrides.items():
        try:
            re.compile(str(pattern))
        except re.error as exc:
            raise ValueError(f"variant {name!r}: tensor_types pattern {pattern!r} is not a"
                             f" regular expression ({exc})") from None
        pairs.append((str(pattern), tensor_type(f"tensor_types[{pattern!r}]", type_name)))
    embedding, output = (None if entry.get(k) is None else tensor_type(k, entry[k])
                         for k in ("token_embedding_type", "output_tensor_type"))
    imatrix = None if entry.get("imatrix") is None else Path(_text(entry["imatrix"]))
    return Recipe(name, ftype, embedding, output, tuple(pairs), imatrix,
                  _bool(entry.get("pure", False)))


def _variants(value: Any) -> tuple[str | Recipe, ...]:
    """Names (file types, ``base``, .gguf paths) and tables (recipes)."""
    if isinstance(value, list | tuple) and any(isinstance(v, Mapping) for v in value):
        entries: tuple[str | Recipe, ...] = tuple(
            _recipe(v) if isinstance(v, Mapping) else _text(v) for v in value)
    else:
        entries = _names()(value)
    names = [e.name if isinstance(e, Recipe) else e for e in entries]
    if not names:
        raise ValueError("expected at least one variant, e.g. [\"Q8_0\", \"Q4_K_M\"]")
    if len(set(names)) != len(names):
        raise ValueError(f"variants repeat a name: {names}")
    return entries


def _unknown_model(name: str, base: Path, recipes: Mapping[str, Recipe]) -> str | None:
    """Why ``name`` (a variant or the reference) names no model: it is no file type, not
    ``base``, no recipe, and no ``.gguf`` file (relative to ``base``, the folder of the file that
    names it). Checked at start-up: a typo found when a test asks for the model would error every
    test of the variant, after the others had been decoded."""
    if (name == "base" or name.upper() in FILE_TYPES or name in recipes
            or name.lower().endswith(".gguf") or (base / name).expanduser().exists()):
        return None
    close = difflib.get_close_matches(name.upper(), [*FILE_TYPES, "BASE"], n=1)
    guess = f"did you mean {close[0] if close[0] != 'BASE' else 'base'}? " if close else ""
    return (f"unknown variant {name!r}, neither a file type, 'base', a variant table's name nor a"
            f" .gguf file; {guess}types: {', '.join(FILE_TYPES)}")


def _eval_text(value: Any) -> str | dict[str, str] | None:
    """One text's path, or a table of named texts (``prose = "a.txt"``; on the command line,
    ``prose=a.txt,code=b.txt``); the first named text is the default."""
    if isinstance(value, str) and "=" in value:
        items = [item for item in value.split(",") if item.strip()]
        bad = [item for item in items if "=" not in item]
        if bad:
            raise ValueError(f"expected name=path,name=path; {bad[0].strip()!r} has no '='")
        pairs = [item.split("=", 1) for item in items]
        value = {name.strip(): path.strip() for name, path in pairs}
    if not isinstance(value, Mapping):
        return _optional(_text)(value)  # type: ignore[no-any-return]
    if not value:
        raise ValueError("expected a path or a table of name = path, got an empty table")
    texts = {}
    for name, path in value.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)) or str(name) in ("macro", "all"):
            raise ValueError(f"text name {name!r}: use letters, digits, '_', '-', '.' (and not"
                             " 'macro' or 'all', which checks use for every text)")
        texts[str(name)] = _text(path)
    return texts


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _tasks(value: Any) -> dict[str, TaskSpec]:
    """``name = "file"`` or ``name = {file = "...", mode = "...", limit = N}`` entries (on the
    command line and in ini files: ``name=file,name=file``)."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"expected name=file,name=file, got {value!r}")
        value = {name.strip(): file.strip() for name, file in pairs}
    if not isinstance(value, Mapping):
        raise ValueError('expected a table of name = "task file" (or name = {file = ...,'
                         f' mode = ..., limit = ...}}), got {value!r}')
    specs = {}
    for name, entry in value.items():
        raw = {"file": entry} if isinstance(entry, str) else entry
        if not isinstance(raw, Mapping) or set(raw) - {"file", "mode", "limit"} or "file" not in raw:
            raise ValueError(f"{name}: expected a file name or a table with file (and mode,"
                             f" limit), got {entry!r}")
        try:
            mode = None if raw.get("mode") is None else _choice(TASK_MODES)(raw["mode"])
            limit = _optional(_int(0))(raw.get("limit"))
            specs[str(name)] = TaskSpec(Path(_text(raw["file"])), mode, limit)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return specs


_PATH_KEYS = {"model", "eval_text", "baseline_dir", "imatrix"}
_PARSERS: dict[str, Callable[[Any], Any]] = {
    "model": _optional(_text),
    "variants": _variants,
    "reference": _text,
    "eval_text": _eval_text,
    "n_ctx": _int(4, even=True),
    "n_batch": _int(1),
    "chunks": _optional(_int(1)),
    "threads": _optional(_int(1)),
    "n_gpu_layers": _int(0),
    "alpha": _alpha,
    "mode": _choice(MODES),
    "correction": _choice(CORRECTIONS),
    "baseline_dir": _text,
    "baseline_ignore": _baseline_keys,
    "imatrix": _optional(_text),
    "bench_prompt": _int(0),
    "bench_gen": _int(0),
    "bench_repetitions": _int(2),
    "fingerprint_ignore": _names(FINGERPRINT_FIELDS),
    "baseline_runs": _int(1),
    "throughput_confirm": _bool,
    "tasks": _tasks,
    "task_limit": _optional(_int(0)),
    "task_parallel": _int(4),
    "sequential": _bool,
    "min_chunks": _int(2),
    "min_tasks": _int(2),
    "result_cache": _bool,
    "blame": _bool,
    "verbose": _bool,
}
KEYS = tuple(_PARSERS)
assert set(KEYS) == {f.name for f in fields(Settings)} - {"sources", "bases", "recipes",
                                                           "eval_texts", "timing_threads"}


@dataclass(frozen=True)
class Layer:
    """One source of settings: its name (a file, or "command line"), base directory for relative
    paths, and raw values by key."""

    source: str
    base: Path
    values: Mapping[str, Any]


def read_pyproject(path: Path) -> Layer | None:
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "[tool.quantcheck]", f"not valid TOML ({exc})") from None
    section = data.get("tool", {}).get("quantcheck")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ConfigError(str(path), "[tool.quantcheck]", "must be a table")
    return Layer(f"{path} [tool.quantcheck]", path.parent, section)


def read_yaml(path: Path) -> Layer | None:
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = str(exc).replace("\n", " ")
        raise ConfigError(str(path), "file", f"not valid YAML ({problem})") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "file", "must be a mapping of keys to values")
    return Layer(str(path), path.parent, data)


def merge(layers: list[Layer]) -> Settings:
    """Validate each layer's keys and values and merge them; later layers win."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    bases: dict[str, Path] = {}  # the folder relative paths in each key's value start from
    for layer in layers:
        for key, raw in layer.values.items():
            if key not in _PARSERS:
                raise ConfigError(layer.source, str(key), f"unknown key; allowed: {', '.join(KEYS)}")
            try:
                value = _PARSERS[key](raw)
            except ValueError as exc:
                raise ConfigError(layer.source, key, str(exc)) from None
            if key == "eval_text":  # one path, or named texts whose first is the default
                named = value if isinstance(value, dict) else {}
                values["eval_texts"] = {name: (layer.base / Path(p).expanduser()).resolve()
                                        for name, p in named.items()}
                value = next(iter(named.values())) if named else value
            if key in _PATH_KEYS and value is not None:
                value = (layer.base / Path(value).expanduser()).resolve()
            if key == "tasks":  # task files are relative to the file that names them
                value = {name: replace(spec, file=(layer.base / spec.file.expanduser()).resolve())
                         for name, spec in value.items()}
            if key == "variants":  # tables are recipes; their imatrix files relative, as paths
                recipes = [e for e in value if isinstance(e, Recipe)]
                # a later layer naming a recipe of an earlier one (--quant-variants) keeps it
                values["recipes"] = {**values.get("recipes", {}), **{
                    r.name: r if r.imatrix is None else replace(
                        r, imatrix=(layer.base / r.imatrix.expanduser()).resolve())
                    for r in recipes}}
                value = tuple(e.name if isinstance(e, Recipe) else e for e in value)
            values[key] = value
            sources[key] = layer.source
            bases[key] = layer.base
    settings = replace(Settings(), **values, sources=sources, bases=bases)
    for key, names in (("variants", settings.variants), ("reference", (settings.reference,))):
        for name in names:
            problem = _unknown_model(name, bases.get(key, Path.cwd()), settings.recipes)
            if problem:
                raise ConfigError(sources.get(key, "defaults"), key, problem)
    if settings.bench_prompt == 0 and settings.bench_gen == 0:
        raise ConfigError(sources.get("bench_gen", "defaults"), "bench_gen",
                          "bench_prompt and bench_gen are both 0; keep at least one test")
    if settings.n_batch > settings.n_ctx and settings.n_batch % settings.n_ctx:
        raise ConfigError(
            sources.get("n_batch", "defaults"), "n_batch",
            f"{settings.n_batch} must be a multiple of n_ctx ({settings.n_ctx}) or below it")
    return settings
