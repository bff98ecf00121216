"""The session on its own, without pytest in between: planning from the checks' needs, outcomes
of markers and helpers, Holm across the run, the xdist payload and its merge, baseline and
reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_quantcheck import checks
from pytest_quantcheck.assertions import assert_perplexity_within
from pytest_quantcheck.config import Layer, merge
from pytest_quantcheck.session import QuantSession, ReportPaths

from fakes import FakeBackend, word_text, write_fake_gguf


def make_session(tmp_path: Path, mode: str = "off", **values: object) -> QuantSession:
    write_fake_gguf(tmp_path / "base.gguf")
    write_fake_gguf(tmp_path / "worse.gguf", noise=0.6)
    (tmp_path / "eval.txt").write_text(word_text(1500) + "\n")
    settings = merge([Layer("test", tmp_path, {
        "model": "base.gguf", "eval_text": "eval.txt", "variants": ["Q8_0", "worse.gguf"],
        "n_ctx": 64, "n_batch": 256, "baseline_dir": "baselines", **values})])
    return QuantSession(settings, lambda: FakeBackend(log=tmp_path / "backend.log"), mode)


def loads(tmp_path: Path) -> list[str]:
    return [line for line in (tmp_path / "backend.log").read_text().splitlines()
            if line.startswith("load")]


def test_a_variant_whose_checks_need_the_kl_pass_is_decoded_once(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    ppl, kld = checks.parse("perplexity_within", (3,)), checks.parse("kl_divergence_at_most", (1,))
    session.collect([(ppl, "Q8_0"), (kld, "Q8_0")])
    q8 = session.model("Q8_0")
    assert session.run_check(ppl, q8, ("t.py::test[Q8_0]", "t.py", 3)).passed
    assert session.run_check(kld, q8).passed
    # the base once (reference log-probs, which give its perplexity too), Q8_0 once (KL pass)
    assert len(loads(tmp_path)) == 2
    assert [o.nodeid for o in session.outcomes] == ["t.py::test[Q8_0]", ""]


def test_a_path_variant_with_kl_and_perplexity_checks_is_decoded_once(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    ppl, kld = checks.parse("perplexity_within", (50,)), checks.parse("kl_divergence_at_most", (1,))
    session.collect([(ppl, "worse.gguf"), (kld, "worse.gguf")])  # planned by spec, held by name
    worse = session.model("worse.gguf")
    session.run_check(ppl, worse)
    session.run_check(kld, worse)
    assert loads(tmp_path).count("load worse.gguf") == 1


def test_kl_from_another_model_needs_no_pass_against_the_reference(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    check = checks.parse("kl_divergence_at_most", (1,), {"of": "worse.gguf"})
    session.collect([(check, "Q8_0")])
    session.run_check(check, session.model("Q8_0"))
    # worse.gguf's log-probabilities and Q8_0's KL pass against them: the base is never loaded
    assert "load base.gguf" not in loads(tmp_path) and len(loads(tmp_path)) == 2


def test_helper_outcomes_join_the_run(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    with pytest.raises(AssertionError, match=r"perplexity_within\(pct=1\) FAIL for worse"):
        assert_perplexity_within(session.model("worse.gguf"), pct=1)
    assert [(o.variant, o.verdict) for o in session.outcomes] == [("worse", "fail")]
    assert session.outcomes[0].file.endswith("test_session.py") and session.outcomes[0].line > 0


def test_holm_is_applied_across_every_collected_check(tmp_path: Path) -> None:
    from pytest_quantcheck import stats

    session = make_session(tmp_path, correction="holm")
    check = checks.parse("perplexity_within", (3,))
    session.collect([(check, "Q8_0"), (check, "worse.gguf")])  # a file type and a .gguf path
    worse = session.run_check(check, session.model("worse.gguf"))
    q8 = session.run_check(check, session.model("Q8_0"))
    raw = [o.decision.p_value for o in (q8, worse)]  # type: ignore[union-attr]
    assert [q8.p_adjusted, worse.p_adjusted] == pytest.approx(stats.holm(raw))
    assert len(loads(tmp_path)) == 3  # each model decoded once, however many checks


def test_worker_payload_merges_into_the_controller(tmp_path: Path) -> None:
    worker = make_session(tmp_path, mode="update")
    check = checks.parse("perplexity_within", (3,))
    worker.collect([(check, "worse.gguf")])
    worker.run_check(check, worker.model("worse.gguf"), ("t.py::test[worse]", "t.py", 7))
    controller = make_session(tmp_path, mode="update")
    controller.merge(worker.worker_payload(), "gw0")
    assert controller.outcomes == worker.outcomes
    assert controller.steps == [f"[gw0] {s}" for s in worker.steps]
    assert set(controller.points()) == {"worse", "base"}
    assert controller.write_baseline()  # the controller measured nothing; the worker's records
    assert controller.notes[-1][0].startswith("baseline written to ")
    data = json.loads(controller.baseline_path().read_text())
    assert set(data["records"]) == {"worse", "base"}


def test_reports_are_written_where_asked(tmp_path: Path) -> None:
    session = make_session(tmp_path)
    check = checks.parse("perplexity_within", (3,))
    session.collect([(check, "worse.gguf")])
    session.run_check(check, session.model("worse.gguf"))
    to = ReportPaths(json=tmp_path / "out" / "r.json", junit=tmp_path / "r.xml",
                     markdown=tmp_path / "r.md")
    session.write_reports(to)
    report = json.loads(to.json.read_text())  # type: ignore[union-attr]
    assert [c["verdict"] for c in report["checks"]] == ["fail"]
    assert "perplexity_within" in to.junit.read_text()  # type: ignore[union-attr]
    assert "1 check: 1 failed" in to.markdown.read_text()  # type: ignore[union-attr]


def test_holm_outcomes_are_shared_so_each_model_is_evaluated_once(tmp_path: Path) -> None:
    # Two sessions on one exchange folder stand for two pytest-xdist workers of one run.
    folder = tmp_path / "exchange"
    folder.mkdir()
    first, second = (make_session(tmp_path, correction="holm") for _ in range(2))
    check = checks.parse("perplexity_within", (3,))
    for session in (first, second):
        session.exchange = folder
        session.collect([(check, "Q8_0"), (check, "worse.gguf")])
    a = first.run_check(check, first.model("Q8_0"))
    log_after_first = loads(tmp_path)
    b = second.run_check(check, second.model("Q8_0"))
    assert a == b and a.p_adjusted is not None
    # the second only prepared Q8_0 for its own test: it evaluated no model
    assert loads(tmp_path) == log_after_first
    assert second.run_check(check, second.model("worse.gguf")).verdict == "fail"


def test_a_variant_whose_claimant_died_is_evaluated_again(tmp_path: Path) -> None:
    import subprocess
    import sys

    from pytest_quantcheck import cache, exchange

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    folder = tmp_path / "exchange"
    folder.mkdir()
    (folder / f"{cache.key_digest('variant', 'Q8_0')}.claim").write_text(dead.stdout.strip())
    calls = []

    def decide() -> exchange.Decided:
        calls.append(1)
        return {("c", "Q8_0"): checks.CheckSkipped("no GPU")}

    found = exchange.share(folder, {"Q8_0": decide})
    assert calls == [1] and str(found[("c", "Q8_0")]) == "no GPU"
    # published: a third process reads it without evaluating
    assert str(exchange.share(folder, {"Q8_0": decide})[("c", "Q8_0")]) == "no GPU"
    assert calls == [1]
