"""The trade-off plot's parts: Pareto frontier, one label for variants at one point, labels that
never overlap, pass/fail colours and intervals."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.checks import Outcome
from pytest_quantcheck.report import (
    _overlaps,
    pareto,
    place_labels,
    plot_tradeoffs,
    same_points,
    verdicts,
)


def test_pareto_keeps_what_nothing_beats_on_size_and_metric() -> None:
    bpw = [8.5, 6.6, 5.7, 4.9, 4.5, 3.4]
    ppl = [74.1, 74.3, 74.5, 87.4, 74.5, 95.0]  # 4.9 bpw is beaten by 4.5 at lower PPL
    assert pareto(bpw, ppl, higher_is_better=False) == [5, 4, 1, 0]
    speed = [10.0, 12.0, 11.0, 20.0, 19.0, 25.0]
    assert pareto(bpw, speed, higher_is_better=True) == [5]  # smallest and fastest
    assert pareto([1.0, 1.0], [2.0, 3.0], higher_is_better=False) == [0]


def test_variants_at_one_point_share_a_label() -> None:
    joined = same_points([("Q8_0", 8.5, 74.1), ("Q6_K", 8.5, 74.1), ("Q4_K_M", 4.9, 87.0)])
    assert sorted(joined) == [("Q4_K_M", 4.9, 87.0), ("Q6_K, Q8_0", 8.5, 74.1)]


@pytest.mark.parametrize("seed", range(5))
def test_labels_cover_no_label_and_no_point(seed: int) -> None:
    rng = np.random.default_rng(seed)
    anchors = [(float(x), float(y)) for x, y in rng.uniform(0, 80, (12, 2))]  # a tight cluster
    sizes = [(float(w), 12.0) for w in rng.uniform(20, 60, 12)]
    offsets = place_labels(anchors, sizes, radius=4.0)
    boxes = [(x + dx, y + dy, x + dx + w, y + dy + h)
             for (x, y), (dx, dy), (w, h) in zip(anchors, offsets, sizes, strict=True)]
    for a, b in itertools.combinations(boxes, 2):
        assert not _overlaps(a, b)
    for box in boxes:
        assert not any(_overlaps(box, (x - 4, y - 4, x + 4, y + 4)) for x, y in anchors)


def _outcome(variant: str, verdict: str) -> Outcome:
    return Outcome(check="c", variant=variant, metric="PPL", verdict=verdict, measured=1.0,
                   compared=None, change=None, limit="", decision=None, mode="detect",
                   alpha=0.05)


def test_colours_follow_each_variants_worst_verdict() -> None:
    found = verdicts([_outcome("a", "pass"), _outcome("a", "fail"), _outcome("b", "pass"),
                      _outcome("c", "inconclusive"), _outcome("c", "pass")])
    assert found == {"a": "fail", "b": "pass", "c": "inconclusive"}


def test_plot_draws_intervals_frontier_and_one_label_per_point(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    points = {name: {"bits_per_weight": bpw, "ppl": ppl, "ppl_low": ppl - 1, "ppl_high": ppl + 1,
                     "kld": kld, "kld_low": kld * 0.9, "kld_high": kld * 1.1}
              for name, bpw, ppl, kld in (("Q8_0", 8.5, 74.1, 0.0003), ("Q6_K", 8.5, 74.1, 0.0003),
                                          ("Q4_K_M", 4.9, 87.4, 0.29), ("Q2_K", 3.4, 95.0, 0.5))}
    out = tmp_path / "t.svg"
    plot_tradeoffs(out, points, {"Q8_0": "pass", "Q6_K": "pass", "Q4_K_M": "fail"})
    svg = out.read_text()
    assert svg.count("Q6_K, Q8_0") == 2  # one label a panel for the two identical variants
    assert ">Q8_0<" not in svg and "Pareto frontier" in svg
    assert "#d62728" in svg and "#2ca02c" in svg and "#7f7f7f" in svg  # fail, pass, unchecked
