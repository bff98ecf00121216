"""A small ``quantcheck bench`` sweep on the demo model: every setting measured at its thread
count, with samples, intervals, the roofline and the plot. Structure only: the speeds are this
machine's and this moment's, never pinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quantcheck.cli import main

pytestmark = pytest.mark.real


def test_a_sweep_on_the_demo_model(capsys: pytest.CaptureFixture[str], demo_model: Path,
                                   tmp_path: Path) -> None:
    plot = tmp_path / "scaling.svg"
    assert main(["bench", str(demo_model), "-t", "1,2", "-p", "32", "-n", "8", "-r", "2",
                 "--json", "--plot", str(plot)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["threads"] == [1, 2] and data["machine"]["cpu_features"]
    assert [(t["n_threads"], t["test"]) for t in data["tests"]] == [
        (1, "pp32"), (1, "tg8"), (2, "pp32"), (2, "tg8")]
    for t in data["tests"]:
        assert len(t["samples"]) == 2 and all(s > 0 for s in t["samples"])
        assert 0 < t["ci95_low"] <= t["ci95_high"]
        assert t["bandwidth_gb_s"] > 0.5
        assert (t["efficiency"] is not None and t["efficiency"] > 0) == (t["n_gen"] > 0)
    assert 0 < data["bytes_per_token"] < demo_model.stat().st_size
    svg = plot.read_text()
    assert "pp32" in svg and "tg8" in svg

    assert main(["bench", str(demo_model), "-t", "1,2", "-p", "16", "-n", "0", "-r", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [row.split("|")[3].strip() for row in rows] == ["1", "2"]
    assert all("| pp16 |" in row and "| n/a (1 repetition) |" in row for row in rows)
