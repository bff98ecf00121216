"""A recipe search: per-group tensor types on top of a stock file type, chosen to meet a KL
divergence (smallest file) or a size (least KLD), verified, and written as a ``variants`` entry.

**What is searched.** The groups of :mod:`pytest_quantcheck.blame` (tensors the stock type
quantizes, by kind by default), each either left as the stock type has it or raised, as a whole,
to one type of :data:`LADDER` larger than its stock bytes (and whose blocks fit its rows). Types are
only raised: the stock type is the floor the user chose.

**How.** First :func:`blame.blame` of the stock type says how much restoring each group to the
base would save; groups whose restoring saves nothing measurable (the interval's upper end below
``min_share``) are left alone, which is where the passes would be wasted. For each remaining group
and candidate type, one mix (the stock with just that group raised, built with exact overrides)
is measured once: its KLD saving over the stock and its extra bytes. Then a greedy walk, by KLD
saved per byte: from the stock, take the upgrade (a group to a higher type, counting from the
type it holds now) that saves the most KLD per extra byte, until the predicted KLD (the stock's
minus the savings, i.e. assuming the groups' savings add) meets ``max_kld``, or while the size
stays within ``max_size``. Under ``max_kld`` the final move is the cheapest one that reaches the
target, where the ratio alone would overshoot with a large last step. Greedy on the ratio is the
classic answer for a knapsack with one choice per group when each group's saving per byte falls
as its type rises (what quantization error does: each extra bit saves less); it needs
``groups x types`` passes, where an exhaustive search needs ``types ** groups``. Savings are
measured one group at a time, so they may not add: the result is therefore **verified** by
building the recipe exactly as the ``variants`` entry will build it and evaluating it on every
chunk. Under ``max_kld`` a verification that misses the target takes the next greedy step and
verifies again (at most :data:`MAX_VERIFY` times); the result says honestly when no recipe met
the target.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_quantcheck.blame import (
    BlameError,
    Group,
    Interval,
    blame,
    build_mix,
    group_tensors,
    planned_types,
)
from pytest_quantcheck.config import Recipe
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.gguf_check import GGML_TYPE_SIZES
from pytest_quantcheck.gguf_file import read_gguf
from pytest_quantcheck.metrics.kld import KLDResult
from pytest_quantcheck.tensor_mix import TYPE_IDS, TensorMix, read_mix
from pytest_quantcheck.variants import FILE_TYPES, check_gguf_path, quantize, recipe_options

LADDER = ("Q2_K", "Q3_K", "Q4_0", "Q4_K", "Q5_0", "Q5_K", "Q6_K", "Q8_0")
DEFAULT_COMPARE = ("Q4_0", "Q4_K_M", "Q5_0", "Q5_K_M", "Q6_K", "Q8_0")
MAX_VERIFY = 4
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Measured:
    """A model file's size and its KLD from the base (95 % interval from llama.cpp's error)."""

    name: str
    path: Path
    size_bytes: int
    bits_per_weight: float
    kld: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "size_bytes": self.size_bytes,
                "bits_per_weight": self.bits_per_weight, "kld": self.kld.to_dict()}


@dataclass(frozen=True)
class Step:
    group: str
    type: str
    saving: float  # KLD this group's upgrade saved, measured alone
    extra_bytes: int


@dataclass(frozen=True)
class SearchResult:
    recipe: Recipe | None  # None: no upgrade was needed or possible
    entry: str  # the recipe as a TOML variants entry ("" without one)
    verified: Measured
    met: bool  # the target is met by the verified numbers
    target: dict[str, float]
    stock: tuple[Measured, ...]
    steps: tuple[Step, ...]
    predicted_kld: float
    passes: int  # evaluations asked for (the result cache may have held some)
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": None if self.recipe is None else self.recipe.describe(),
                "entry": self.entry, "met": self.met, "target": self.target,
                "size_bytes": self.verified.size_bytes,
                "bits_per_weight": self.verified.bits_per_weight,
                "kld": self.verified.kld.to_dict(), "verified": self.verified.to_dict(),
                "predicted_kld": self.predicted_kld,
                "stock": [s.to_dict() for s in self.stock],
                "steps": [s.__dict__ for s in self.steps], "passes": self.passes,
                "seconds": self.seconds, "notes": list(self.notes)}

    def tradeoff_points(self) -> dict[str, dict[str, float]]:
        """The stock types and the recipe as points of :func:`report.plot_tradeoffs`."""
        return {m.name: {"bits_per_weight": m.bits_per_weight, "kld": m.kld.value,
                         "kld_low": m.kld.low, "kld_high": m.kld.high}
                for m in (*self.stock, self.verified)}

    def lines(self) -> list[str]:
        v = self.verified
        out = [f"{'met' if self.met else 'NOT met'}: {_target_text(self.target)}"]
        if self.recipe is not None:
            out += ["variants entry:", f"  {self.entry}"]
        out.append(f"{v.name}: {v.size_bytes} bytes, {v.bits_per_weight:.3f} bits per weight,"
                   f" KLD {v.kld.value:.6f} (95 % CI {v.kld.low:.6f}-{v.kld.high:.6f}),"
                   f" predicted {self.predicted_kld:.6f}")
        for step in self.steps:
            out.append(f"  step: {step.group} -> {step.type}: saves {step.saving:.6f} KLD for"
                       f" {step.extra_bytes} bytes")
        out.append("stock types:")
        for s in self.stock:
            out.append(f"  {s.name:<8} {s.size_bytes:>12} bytes {s.bits_per_weight:6.3f} bpw  KLD"
                       f" {s.kld.value:.6f} ({s.kld.low:.6f}-{s.kld.high:.6f})")
        out += [f"note: {n}" for n in self.notes]
        out.append(f"{self.passes} passes, {self.seconds:.1f} s")
        return out


def _target_text(target: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in target.items())


def bits_per_weight(path: Path) -> float:
    """Tensor data bits per weight, as llama.cpp's loader prints them."""
    contents = read_gguf(path, decode_strings=False)
    n_weights = sum(math.prod(t.shape) for t in contents.tensors.values())
    return (path.stat().st_size - contents.data_offset) * 8 / max(1, n_weights)


def _measure(engine: Engine, base: Path, path: Path, name: str, text: Path,
             proto: ScoringProtocol) -> Measured:
    res: KLDResult = engine.kl_divergence(base, path, text, proto)
    half = Z95 * res.kld.err
    return Measured(name, path, path.stat().st_size, bits_per_weight(path),
                    Interval(res.kld.value, res.kld.value - half, res.kld.value + half))


def _type_bytes(mix: TensorMix, names: Sequence[str], type_name: str) -> int | None:
    """Bytes of these tensors at ``type_name``; None when its blocks do not fit their rows."""
    block, size = GGML_TYPE_SIZES[TYPE_IDS[type_name]]
    shapes = {t.name: t.shape for t in mix.tensors}
    total = 0
    for n in names:
        shape = shapes[n]
        if shape[0] % block:
            return None
        total += math.prod(shape) // block * size
    return total


def group_pattern(group: Group, mix: TensorMix, by: str) -> str:
    """A ``tensor_types`` pattern that matches the group's tensors and no other: by kind, the
    kind's name when the group holds every tensor of that kind; the names otherwise."""
    names = [t.name for t in mix.tensors]
    if by == "kind":
        pattern = rf"(^|\.){re.escape(group.name)}\.weight$"
        if {n for n in names if re.search(pattern, n)} == set(group.tensors):
            return pattern
    if len(group.tensors) == 1:
        return f"^{re.escape(group.tensors[0])}$"
    return "^(?:" + "|".join(re.escape(n) for n in group.tensors) + ")$"


def toml_entry(recipe: Recipe) -> str:
    """The recipe as one inline TOML table, ready for ``variants = [...]``; patterns as literal
    strings, so their backslashes stay as written."""
    types = ", ".join(f"'{p}' = \"{t}\"" for p, t in recipe.tensor_types)
    return f'{{ name = "{recipe.name}", type = "{recipe.type}", tensor_types = {{ {types} }} }}'


def search(
    base: Path, start: str, text: Path, proto: ScoringProtocol, *, max_kld: float | None = None,
    max_size: int | None = None, by: str = "kind", engine: Engine | None = None,
    name: str | None = None, compare: Sequence[str] | None = None, min_share: float = 0.01,
    log: Callable[[str], None] = lambda _msg: None,
) -> SearchResult:
    """The recipe on top of stock ``start`` that meets ``max_kld`` with the fewest bytes, or has
    the least KLD within ``max_size`` bytes (see the module docstring)."""
    if (max_kld is None) == (max_size is None):
        raise BlameError("give one target: max_kld or max_size")
    t0 = time.perf_counter()
    engine = engine or Engine.default()
    check_gguf_path(base)
    stock_type = FILE_TYPES.get(start.upper())
    if stock_type is None or stock_type.name in ("F32", "F16", "BF16"):
        raise BlameError(f"--from {start!r}: name a quantized llama.cpp file type, e.g. Q4_0")
    name = name or f"{stock_type.name}-recipe"
    stock_names = list(dict.fromkeys([stock_type.name, *(compare or DEFAULT_COMPARE)]))
    stock = []
    for type_name in stock_names:
        log(f"measuring stock {type_name}")
        v = quantize(base, type_name, backend=engine.backend, cache_dir=engine.cache_dir)
        stock.append(_measure(engine, base, v.path, type_name, text, proto))
    start_measured = stock[0]
    base_mix = read_mix(base, engine.cache_dir)
    start_mix = read_mix(start_measured.path, engine.cache_dir)
    start_types = {t.name: t.type_name for t in start_mix.tensors}
    groups = {g.name: g for g in group_tensors(base_mix, start_mix, by)}
    target = {"max_kld": max_kld} if max_kld is not None else {"max_size": float(max_size or 0)}
    notes: list[str] = []
    if max_size is not None and start_measured.size_bytes > max_size:
        raise BlameError(f"stock {stock_type.name} is already {start_measured.size_bytes} bytes,"
                         f" above --max-size {max_size}; start from a smaller type")

    # which groups could save anything: blame's "saved by restoring"
    log(f"blaming {stock_type.name}'s groups")
    blamed = blame(base, start_measured.path, text, proto, by=by, engine=engine,
                   sequential=False)
    worth = [g.group.name for g in blamed.groups if g.share_saved.high >= min_share]
    skipped = [g.group.name for g in blamed.groups if g.group.name not in worth]
    if skipped:
        notes.append(f"left at stock: {', '.join(skipped)} (restoring each to the base saves"
                     f" under {100 * min_share:g} % of the KLD)")

    # one mix per (group, higher type): its saving and extra bytes
    options: dict[str, list[tuple[str, float, int]]] = {}
    passes = 0
    for g_name in worth:
        g = groups[g_name]
        for type_name in LADDER:
            extra = _type_bytes(start_mix, g.tensors, type_name)
            if extra is None or extra <= g.bytes_variant:
                continue
            types = planned_types(base_mix, {**start_types, **dict.fromkeys(g.tensors, type_name)})
            log(f"measuring {g_name} at {type_name}")
            path = build_mix(base, types, engine, f"{stock_type.name}-{g_name}-{type_name}")
            kld = engine.kl_divergence(base, path, text, proto).kld.value
            passes += 1
            options.setdefault(g_name, []).append(
                (type_name, start_measured.kld.value - kld, extra - g.bytes_variant))

    chosen: dict[str, tuple[str, float, int]] = {}  # group -> (type, saving, extra bytes)
    steps: list[Step] = []

    def predicted() -> float:
        return start_measured.kld.value - sum(c[1] for c in chosen.values())

    def size() -> int:
        return start_measured.size_bytes + sum(c[2] for c in chosen.values())

    def next_step() -> Step | None:
        best: tuple[float, Step] | None = None
        enough: tuple[int, float, Step] | None = None  # the cheapest move that meets max_kld
        for g_name, cands in options.items():
            have = chosen.get(g_name, ("", 0.0, 0))
            for type_name, saving, extra in cands:
                gain, cost = saving - have[1], extra - have[2]
                if cost <= 0 or gain <= 0:
                    continue
                if max_size is not None and size() + cost > max_size:
                    continue
                step = Step(g_name, type_name, saving, extra)
                if best is None or gain / cost > best[0]:
                    best = (gain / cost, step)
                if max_kld is not None and predicted() - gain <= max_kld and (
                        enough is None or (cost, -gain) < enough[:2]):
                    enough = (cost, -gain, step)
        # The last move need not be the most efficient one: the cheapest that reaches the target
        # is what keeps the file small (greedy by ratio alone overshoots with a big final step).
        return enough[2] if enough is not None else None if best is None else best[1]

    def take(step: Step) -> None:
        chosen[step.group] = (step.type, step.saving, step.extra_bytes)
        steps.append(step)

    verified = start_measured
    recipe: Recipe | None = None
    if max_kld is not None:
        for _attempt in range(MAX_VERIFY):
            while predicted() > max_kld and (step := next_step()) is not None:
                take(step)
            if not chosen:
                break
            recipe, verified = _verify(base, stock_type.name, name, chosen, groups, start_mix,
                                       by, engine, text, proto)
            passes += 1
            if verified.kld.value <= max_kld:
                break
            step = next_step()
            if step is None:
                break
            take(step)
    else:
        while (step := next_step()) is not None:
            take(step)
        if chosen:
            recipe, verified = _verify(base, stock_type.name, name, chosen, groups, start_mix,
                                       by, engine, text, proto)
            passes += 1
    met = (verified.kld.value <= max_kld if max_kld is not None
           else verified.size_bytes <= (max_size or 0))
    if max_kld is not None and not met:
        notes.append(f"no recipe raising {stock_type.name}'s groups met KLD {max_kld:g} within"
                     f" {MAX_VERIFY} verifications; the closest verified is shown")
    return SearchResult(recipe, "" if recipe is None else toml_entry(recipe), verified, met,
                        target, tuple(stock), tuple(steps), predicted(),
                        passes + 2 * len(blamed.groups) + len(stock), time.perf_counter() - t0,
                        tuple(notes))


def _verify(base: Path, stock_type: str, name: str, chosen: dict[str, tuple[str, float, int]],
            groups: dict[str, Group], start_mix: TensorMix, by: str, engine: Engine, text: Path,
            proto: ScoringProtocol) -> tuple[Recipe, Measured]:
    """Build the recipe as a ``variants`` entry builds it, check its types, evaluate it."""
    pairs = tuple((group_pattern(groups[g], start_mix, by), t) for g, (t, _s, _b) in
                  sorted(chosen.items()))
    recipe = Recipe(name, stock_type, tensor_types=pairs)
    v = quantize(base, stock_type, backend=engine.backend, cache_dir=engine.cache_dir,
                 options=recipe_options(recipe, base), name=name)
    got = {t.name: t.type_name for t in read_mix(v.path, engine.cache_dir).tensors}
    for g, (t, _s, _b) in chosen.items():
        wrong = [n for n in groups[g].tensors if got[n] != t]
        if wrong:
            raise BlameError(f"{v.path}: {wrong[0]} is {got[wrong[0]]}, not the {t} the recipe"
                             f" asks for (pattern of group {g}); this is a bug in the search")
    return recipe, _measure(engine, base, v.path, name, text, proto)


__all__ = ["DEFAULT_COMPARE", "LADDER", "SearchResult", "group_pattern", "search", "toml_entry"]
