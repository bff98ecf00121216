"""Which tensors cost the quality: a quantized variant's KL divergence from its base, shared out
among groups of tensors, each share with a confidence interval.

**Mixes.** A group (tensors of one kind, of one kind in a band of layers, or one tensor) is
measured through two files llama.cpp's quantizer writes from the base: *only*, the base with just
that group quantized as the variant has it, and *restored*, the variant with just that group back
at the base's type. Every tensor's type is set by an exact-name ``tensor_types`` override taken
from the variant file's actual types (what :func:`tensor_mix.read_mix` reads), so a mix holds
exactly the planned types; the file type the quantizer runs as (:data:`CARRIER`) decides none.
Each written mix is read back and checked. Mixes
are cached by content like every variant (:func:`variants.quantize`).

**Shares.** Each mix is compared with the base's stored log-probabilities (one pass of the mix),
chunk by chunk, on the chunks the variant is scored on. With ``V_i`` the variant's mean KLD on
chunk ``i``, ``A_i`` the *only* mix's and ``R_i`` the *restored* mix's, a group's contribution on
chunk ``i`` is ``c_i = (A_i + (V_i - R_i)) / 2``: the mean of what the group adds to the base and
what it adds to the rest of the variant, which is the group's Shapley value in the two-player game
"this group against all the others" (the two agree when the group's damage is additive). Its share
is the ratio estimator ``r = mean(c) / mean(V)``. Chunks, not tokens, are the independent units
(tokens inside a chunk share their context), so the interval is the delta method's on chunks:
``se(r) = sd(c_i - r V_i) / (sqrt(n) mean(V))``, with Student's t on ``n - 1`` degrees of freedom.
The same estimator gives ``share_only`` (from ``A``) and ``share_saved`` (from ``V - R``), and
*additivity*: the groups' summed ``A`` (and summed ``V - R``) over the variant's, on the chunks every
group was measured on; 100 % means the parts add up to the whole.

**Looks.** Chunks are added in the looks of :mod:`pytest_quantcheck.sequential` (each look
extends the cached passes, nothing is decoded twice). At look ``k`` every group still running gets
a decision interval at level ``look_alphas[k] / G`` (``G`` groups; the union bound over looks and
groups keeps the chance that any decision interval misses below ``alpha``). A group stops when its
decision interval overlaps no other group's (its rank is clear), or when that interval's half-width
is below ``resolution`` (its share is known to a few points, and an order among groups closer than
that would not change what a user does). A stopped group keeps its interval; the last look stops
every group. Reported intervals are the plain ``confidence`` intervals at the chunks a group used.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.backends import QuantizeOptions
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.evaluation import ScoringProtocol
from pytest_quantcheck.sequential import look_alphas, look_schedule
from pytest_quantcheck.tensor_mix import TYPE_IDS, TensorMix, read_mix
from pytest_quantcheck.variants import FILE_TYPES, check_gguf_path, from_path, quantize

BY = ("kind", "layer", "tensor")
UNQUANTIZED = ("F32", "F16", "BF16")
MAX_BANDS = 4  # --by layer: each kind in at most this many bands of adjacent layers
DEFAULT_PROTOCOL = ScoringProtocol()
# The file type the quantizer runs as when it writes a mix. Every matrix is overridden, so it
# decides no tensor's type; it must be a quantized one (under F32/F16 llama.cpp ignores overrides)
# with 32-value blocks: llama.cpp skips a tensor's override when the file type itself would have
# to fall back on that tensor, which a 256-value K-quant does on rows of, say, 896 values.
CARRIER = "Q8_0"
_LAYER = re.compile(r"^blk\.(\d+)\.(.+?)(?:\.weight)?$")


class BlameError(QuantcheckError, ValueError):
    """A base that is not unquantized, a variant of another model, nothing to blame."""


# ---- groups ------------------------------------------------------------------------------------


def kind_of(name: str) -> str:
    """``blk.3.ffn_down.weight`` -> ``ffn_down``; ``token_embd.weight`` -> ``token_embd``."""
    m = _LAYER.match(name)
    return m.group(2) if m else name.removesuffix(".weight")


def layer_of(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Group:
    """Tensors blamed together, and their bytes in the base and in the variant."""

    name: str
    tensors: tuple[str, ...]
    bytes_base: int
    bytes_variant: int


def _bands(n_layers: int) -> list[range]:
    n = min(MAX_BANDS, n_layers)
    edges = [i * n_layers // n for i in range(n + 1)]
    return [range(a, b) for a, b in itertools.pairwise(edges) if b > a]


def group_key(by: str, n_layers: int) -> Callable[[str], str]:
    """The name of the group a tensor belongs to, for ``by`` in :data:`BY`."""
    if by == "tensor":
        return lambda name: name
    if by == "kind":
        return kind_of
    if by == "layer":
        bands = _bands(max(1, n_layers))

        def key(name: str) -> str:
            layer = layer_of(name)
            if layer is None:
                return kind_of(name)
            band = next(b for b in bands if layer in b)
            where = str(band.start) if len(band) == 1 else f"{band.start}-{band.stop - 1}"
            return f"{kind_of(name)}[{where}]"

        return key
    raise BlameError(f"unknown grouping {by!r}; use one of {', '.join(BY)}")


def check_pair(base: TensorMix, variant: TensorMix, base_path: Path, variant_path: Path) -> None:
    """The variant holds the base's tensors, shape for shape, and the base is unquantized."""
    quantized = [t for t in base.tensors if t.quantized]
    if quantized:
        raise BlameError(f"{base_path}: {quantized[0].name} is {quantized[0].type_name}; blame"
                         " needs an F32, F16 or BF16 base model")
    shapes = {t.name: t.shape for t in base.tensors}
    other = {t.name: t.shape for t in variant.tensors}
    if shapes != other:
        differ = sorted(set(shapes) ^ set(other)) or sorted(
            n for n in shapes if shapes[n] != other[n])
        raise BlameError(f"{variant_path}: is not a quantization of {base_path} (tensor"
                         f" {differ[0]} differs); pass a variant built from this base")


def group_tensors(base: TensorMix, variant: TensorMix, by: str = "kind") -> list[Group]:
    """The variant's tensors whose type differs from the base's, grouped; groups in file order."""
    layers = [n for t in base.tensors if (n := layer_of(t.name)) is not None]
    key = group_key(by, max(layers) + 1 if layers else 0)
    base_types = {t.name: t for t in base.tensors}
    members: dict[str, list[str]] = {}
    sizes: dict[str, list[int]] = {}
    for t in variant.tensors:
        if t.type_name == base_types[t.name].type_name:
            continue
        g = key(t.name)
        members.setdefault(g, []).append(t.name)
        size = sizes.setdefault(g, [0, 0])
        size[0] += base_types[t.name].n_bytes
        size[1] += t.n_bytes
    return [Group(g, tuple(names), sizes[g][0], sizes[g][1]) for g, names in members.items()]


# ---- mixes -------------------------------------------------------------------------------------


def exact_pattern(name: str) -> str:
    """A ``tensor_types`` pattern matching this tensor's name and no other (std::regex, as
    llama.cpp matches them, reads it as re.search does)."""
    return f"^{re.escape(name)}$"


def mix_options(types: Mapping[str, str]) -> QuantizeOptions:
    """Overrides that give each named tensor its type."""
    return QuantizeOptions(tensor_types=tuple((exact_pattern(n), TYPE_IDS[t])
                                              for n, t in types.items()))


def planned_types(base: TensorMix, chosen: Mapping[str, str]) -> dict[str, str]:
    """Every matrix's type: ``chosen`` where it names one, the base's otherwise. Vectors (norms)
    are left out: llama.cpp never quantizes them."""
    return {t.name: chosen.get(t.name, t.type_name) for t in base.tensors if len(t.shape) >= 2}


def build_mix(base_path: Path, types: Mapping[str, str], engine: Engine, name: str) -> Path:
    """The base with each tensor at ``types[name]`` (cached by content), read back and checked."""
    variant = quantize(base_path, CARRIER, backend=engine.backend, cache_dir=engine.cache_dir,
                       options=mix_options(types), name=name)
    got = {t.name: t.type_name for t in read_mix(variant.path, engine.cache_dir).tensors}
    wrong = [f"{n} ({got.get(n)} for {t})" for n, t in types.items() if got.get(n) != t]
    if wrong:
        raise BlameError(f"{variant.path}: llama.cpp did not give {len(wrong)} tensors the type"
                         f" asked ({', '.join(wrong[:3])}); this llama.cpp build ignores some"
                         " tensor_types overrides, so a mix cannot be built")
    return variant.path


# ---- statistics --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def ratio_interval(part: NDArray[np.float64], whole: NDArray[np.float64],
                   confidence: float) -> Interval:
    """``mean(part) / mean(whole)`` over paired chunks, with the delta method's two-sided
    interval at ``confidence`` (t on n - 1 degrees of freedom; no width below 2 chunks)."""
    from scipy.stats import t as student_t

    n = len(part)
    mean_whole = float(np.mean(whole))
    if mean_whole <= 0:
        raise BlameError("the variant's KL divergence from the base is 0 on these chunks:"
                         " nothing to blame")
    r = float(np.mean(part)) / mean_whole
    if n < 2:
        return Interval(r, -math.inf, math.inf)
    se = float(np.std(part - r * whole, ddof=1)) / math.sqrt(n) / mean_whole
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * se
    return Interval(r, r - half, r + half)


# ---- blame -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupBlame:
    group: Group
    n_chunks: int  # chunks this group's mixes were measured on (its looks stopped there)
    kld_only: float  # mean KLD of the base with only this group quantized
    kld_restored: float  # mean KLD of the variant with this group restored
    share: Interval  # of the variant's mean KLD, as a fraction
    share_only: Interval
    share_saved: Interval
    stopped: str  # "rank clear", "resolved" or "last look"

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group.name, "tensors": list(self.group.tensors),
                "bytes_base": self.group.bytes_base, "bytes_variant": self.group.bytes_variant,
                "n_chunks": self.n_chunks, "kld_only": self.kld_only,
                "kld_restored": self.kld_restored, "share": self.share.to_dict(),
                "share_only": self.share_only.to_dict(),
                "share_saved": self.share_saved.to_dict(), "stopped": self.stopped}


@dataclass(frozen=True)
class BlameResult:
    base: Path
    variant: Path
    variant_name: str
    by: str
    protocol: dict[str, Any]
    n_chunks: int  # the variant's
    variant_kld: Interval  # mean KLD with its confidence interval
    groups: tuple[GroupBlame, ...]  # largest share first
    additivity_only: Interval  # sum of the only-mixes' KLD over the variant's
    additivity_saved: Interval  # sum of what restoring each group saves, over the variant's
    confidence: float
    alpha: float
    passes: int  # mix passes run or extended
    chunks_decoded: int  # chunks decoded now (the rest came from the result cache)
    seconds: float
    looks: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"base": str(self.base), "variant": str(self.variant),
                "variant_name": self.variant_name, "by": self.by, "protocol": self.protocol,
                "n_chunks": self.n_chunks, "variant_kld": self.variant_kld.to_dict(),
                "confidence": self.confidence, "alpha": self.alpha, "looks": list(self.looks),
                "groups": [g.to_dict() for g in self.groups],
                "additivity_only": self.additivity_only.to_dict(),
                "additivity_saved": self.additivity_saved.to_dict(), "passes": self.passes,
                "chunks_decoded": self.chunks_decoded, "seconds": self.seconds}

    def table(self) -> list[str]:
        """The terminal table: one row a group, largest share first."""
        pct = f"{100 * self.confidence:g} %"
        kld = self.variant_kld
        lines = [f"{self.variant_name}: mean KLD {kld.value:.6f} ({pct} CI {kld.low:.6f}-"
                 f"{kld.high:.6f}) from {self.base.name} on {self.n_chunks} chunks, by"
                 f" {self.by}",
                 f"{'group':<24} {'share':>7} {pct + ' CI':>17} {'only':>7} {'saved':>7}"
                 f" {'KLD only':>10} {'bytes':>9} {'chunks':>6}  stopped"]
        for g in self.groups:
            lines.append(
                f"{g.group.name:<24} {_pct(g.share.value):>7} {_range(g.share):>17}"
                f" {_pct(g.share_only.value):>7} {_pct(g.share_saved.value):>7}"
                f" {g.kld_only:>10.6f} {_size(g.group.bytes_variant):>9} {g.n_chunks:>6}"
                f"  {g.stopped}")
        lines.append(f"additivity: the parts alone sum to {_pct(self.additivity_only.value)}"
                     f" (CI {_range(self.additivity_only)}) of the whole; restoring each saves"
                     f" {_pct(self.additivity_saved.value)} in sum (CI"
                     f" {_range(self.additivity_saved)})")
        lines.append(f"{self.passes} mix passes, {self.chunks_decoded} chunks decoded,"
                     f" {self.seconds:.1f} s")
        return lines


BLAMED_METRICS = ("PPL", "KLD", "top-1 agreement")  # the metrics a failing check gets culprits for


def culprits(result: BlameResult, most: int = 3, least: float = 0.05) -> str:
    """One line naming the groups that cause most of the variant's KLD (at most ``most``, each
    with at least ``least`` of it), e.g. "blame: 62.0% of Q4_0's KLD from the base comes from
    ffn_down (CI 55.0-70.0%), ..."."""
    top = [g for g in result.groups[:most] if g.share.value >= least] or list(result.groups[:1])
    parts = [f"{_pct(g.share.value)} from {g.group.name} (CI {_range(g.share)})" for g in top]
    return (f"blame: of {result.variant_name}'s KLD from {result.base.name}, "
            + ", ".join(parts) + f" (by {result.by}, {result.n_chunks} chunks)")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _range(i: Interval) -> str:
    if not math.isfinite(i.low) or not math.isfinite(i.high):
        return "-"
    return f"{100 * i.low:.1f}-{100 * i.high:.1f}%"


def _size(n: int) -> str:
    return f"{n / 2**20:.2f}M" if n >= 2**20 else f"{n / 2**10:.1f}K"


def resolve_variant(base_path: Path, variant: str | Path, engine: Engine) -> tuple[Path, str]:
    """The variant's file (built from the base for a file type) and its name."""
    text = str(variant)
    if text.endswith(".gguf") or (Path(text).exists() and text.upper() not in FILE_TYPES):
        v = from_path(Path(text))
    else:
        v = quantize(base_path, text, backend=engine.backend, cache_dir=engine.cache_dir)
    return v.path, v.name


class _Meter:
    """Per-chunk KLD of files from the base's stored reference, counting passes and chunks."""

    def __init__(self, engine: Engine, base: Path, text: Path, proto: ScoringProtocol) -> None:
        self.engine, self.base, self.text, self.proto = engine, base, text, proto
        self.passes = 0
        self.decoded = 0

    def chunk_kld(self, path: Path, upto: int | None) -> NDArray[np.float64]:
        result = self.engine.kl_divergence(self.base, path, self.text, self.proto, upto=upto)
        self.passes += result.decoded > 0
        self.decoded += result.decoded
        return np.asarray(result.chunk_kld, dtype=np.float64)


def blame(
    base: Path, variant: str | Path, text: Path, proto: ScoringProtocol = DEFAULT_PROTOCOL,
    *, by: str = "kind", engine: Engine | None = None, confidence: float = 0.95,
    alpha: float = 0.05, min_chunks: int = 4, resolution: float = 0.02,
    sequential: bool = True, name: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> BlameResult:
    """How much of ``variant``'s KL divergence from ``base`` each group of tensors causes (see
    the module docstring for the mixes, the estimator and the stopping rule). ``variant``: a
    llama.cpp file type (built from ``base``, cached) or a .gguf file of the same model.
    ``sequential=False`` measures every group on every chunk; ``name``: the variant's name in
    the table (default: the file type, or the file's stem)."""
    t0 = time.perf_counter()
    engine = engine or Engine.default()
    check_gguf_path(base)
    group_key(by, 1)  # a bad grouping fails before any work
    variant_path, variant_name = resolve_variant(base, variant, engine)
    variant_name = name or variant_name
    base_mix, var_mix = read_mix(base, engine.cache_dir), read_mix(variant_path, engine.cache_dir)
    check_pair(base_mix, var_mix, base, variant_path)
    groups = group_tensors(base_mix, var_mix, by)
    if not groups:
        raise BlameError(f"{variant_path}: every tensor has the base's type; nothing to blame")
    files = _build_mixes(base, base_mix, var_mix, groups, engine, variant_name, log)
    meter = _Meter(engine, base, text, proto)
    log(f"measuring {variant_name}")
    whole = meter.chunk_kld(variant_path, None)
    n_total = len(whole)
    looks = look_schedule(n_total, min_chunks, proto.n_seq) if sequential else [n_total]
    data, stopped = _run_looks(groups, files, whole, looks, look_alphas(looks, alpha), meter,
                               resolution, log)
    rows = []
    for g in groups:
        a, r = data[g.name]
        v = whole[:len(a)]
        rows.append(GroupBlame(
            g, len(a), float(a.mean()), float(r.mean()), _share((a, r), whole, confidence),
            ratio_interval(a, v, confidence), ratio_interval(v - r, v, confidence),
            stopped[g.name]))
    common = min(len(data[g.name][0]) for g in groups)
    v = whole[:common]
    parts_only = np.sum([data[g.name][0][:common] for g in groups], axis=0)
    parts_saved = np.sum([v - data[g.name][1][:common] for g in groups], axis=0)
    return BlameResult(
        base, variant_path, variant_name, by, {**proto.describe(), "n_chunks": proto.n_chunks},
        n_total, _mean_interval(whole, confidence),
        tuple(sorted(rows, key=lambda r: -r.share.value)),
        ratio_interval(parts_only, v, confidence), ratio_interval(parts_saved, v, confidence),
        confidence, alpha, meter.passes, meter.decoded, time.perf_counter() - t0, tuple(looks))


Mixes = dict[str, tuple[Path, Path]]
Measured = dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]


def _build_mixes(base: Path, base_mix: TensorMix, var_mix: TensorMix, groups: list[Group],
                 engine: Engine, variant_name: str, log: Callable[[str], None]) -> Mixes:
    """Each group's *only* and *restored* files."""
    var_types = {t.name: t.type_name for t in var_mix.tensors}
    files = {}
    for g in groups:
        log(f"building the mixes of {g.name}")
        only = planned_types(base_mix, {n: var_types[n] for n in g.tensors})
        restored = planned_types(base_mix, {n: t for n, t in var_types.items()
                                            if n not in g.tensors})
        files[g.name] = (build_mix(base, only, engine,
                                   f"{variant_name}-only-{g.name}"),
                         build_mix(base, restored, engine,
                                   f"{variant_name}-restored-{g.name}"))
    return files


def _run_looks(groups: list[Group], files: Mixes, whole: NDArray[np.float64], looks: list[int],
               levels: list[float], meter: _Meter, resolution: float,
               log: Callable[[str], None]) -> tuple[Measured, dict[str, str]]:
    """Measure the groups' mixes look by look until each stops; per group its per-chunk KLDs
    (only, restored) and why it stopped."""
    data: Measured = {}
    stopped: dict[str, tuple[str, Interval]] = {}
    for k, (n, level) in enumerate(zip(looks, levels, strict=True)):
        running = [g for g in groups if g.name not in stopped]
        for g in running:
            log(f"look {k + 1}/{len(looks)} at {n} chunks: {g.name}")
            only_path, restored_path = files[g.name]
            data[g.name] = (meter.chunk_kld(only_path, n), meter.chunk_kld(restored_path, n))
        # simultaneous over the groups (Bonferroni), at this look's share of alpha
        decision = {g.name: _share(data[g.name], whole, 1 - level / len(groups))
                    for g in running}
        decision.update({name: interval for name, (_why, interval) in stopped.items()})
        for g in running:
            mine = decision[g.name]
            others = [iv for name, iv in decision.items() if name != g.name]
            if k == len(looks) - 1:
                stopped[g.name] = ("last look", mine)
            elif all(mine.low > iv.high or mine.high < iv.low for iv in others):
                stopped[g.name] = ("rank clear", mine)
            elif (mine.high - mine.low) / 2 < resolution:
                stopped[g.name] = ("resolved", mine)
    return data, {name: why for name, (why, _iv) in stopped.items()}


def _share(mixes: tuple[NDArray[np.float64], NDArray[np.float64]],
           whole: NDArray[np.float64], confidence: float) -> Interval:
    only, restored = mixes
    v = whole[:len(only)]
    return ratio_interval((only + v - restored) / 2, v, confidence)


def _mean_interval(x: NDArray[np.float64], confidence: float) -> Interval:
    from scipy.stats import t as student_t

    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, -math.inf, math.inf)
    half = float(student_t.ppf(0.5 + confidence / 2, len(x) - 1)) * float(
        np.std(x, ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half)


# ---- plot --------------------------------------------------------------------------------------


def plot_blame(path: Path, result: BlameResult) -> None:
    """Each group's share of the variant's KLD as a bar with its interval, largest on top, the
    only/saved estimates as marks, in the trade-off plot's style. PNG or SVG by suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(result.groups))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.4 * len(rows)))
    y = np.arange(len(rows))
    values = [100 * r.share.value for r in rows]
    low = [100 * (r.share.value - r.share.low) for r in rows]
    high = [100 * (r.share.high - r.share.value) for r in rows]
    ax.barh(y, values, color="tab:blue", alpha=0.6)
    ax.errorbar(values, y, xerr=[low, high], fmt="none", ecolor="tab:blue", capsize=3)
    ax.scatter([100 * r.share_only.value for r in rows], y, marker="|", color="black",
               zorder=3, label="only this group quantized")
    ax.scatter([100 * r.share_saved.value for r in rows], y, marker="x", color="tab:red",
               zorder=3, label="saved by restoring it")
    ax.set_yticks(y, [r.group.name for r in rows])
    ax.set(xlabel=f"share of {result.variant_name}'s mean KLD (%), {100 * result.confidence:g} %"
           " CI", title=f"{result.variant_name}: blame by {result.by}")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


__all__ = ["BY", "BlameError", "BlameResult", "Group", "GroupBlame", "Interval", "blame",
           "group_tensors", "plot_blame", "ratio_interval"]
