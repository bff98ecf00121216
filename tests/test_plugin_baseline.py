"""--quant-baseline and --quant-update-baseline, end to end on the fake backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import RunBothWays
from pytest_quantcheck.baseline import BaselineError, file_name, load, merge_record, update

KEYS = {"model_sha256": "a", "text_sha256": "b", "tokens_sha256": "c", "n_ctx": 8,
        "protocol": {}, "llama_cpp": "x"}


def plant_corrupt_baseline(project: pytest.Pytester) -> Path:
    project.makepyfile(SUITE)
    path = project.path / "baselines" / "base.quantcheck.json"
    path.parent.mkdir()
    path.write_text("{ not json")
    return path


SUITE = """
import pytest

@pytest.mark.perplexity_within(pct=1, of="baseline")
def test_no_worse_than_last_release(quant_model):
    pass
"""


def test_update_then_compare_passes(qc_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(SUITE)
    result = run_both_ways(qc_project, "--quant-update-baseline")
    result.assert_outcomes(passed=2)
    # (under -n 2 the line follows the progress dots on the same line: no newline is ensured)
    result.stdout.fnmatch_lines(["*quantcheck: baseline written to *base.quantcheck.json"])
    data = json.loads((qc_project.path / "baselines" / "base.quantcheck.json").read_text())
    assert data["schema"] == "pytest-quantcheck baseline" and data["schema_version"] == 3
    assert set(data["keys"]) == {"model_sha256", "text_sha256", "tokens_sha256", "n_ctx",
                                 "protocol", "llama_cpp"}
    assert set(data["records"]) == {"Q8_0", "Q2_K"}
    assert len(data["records"]["Q2_K"]["perplexity"]["chunk_nll"]) == data["keys"]["protocol"][
        "n_chunks"]
    run_both_ways(qc_project, "--quant-baseline").assert_outcomes(passed=2)


def test_baseline_comparisons_are_skipped_unless_asked(qc_project: pytest.Pytester,
                                                       run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(SUITE)
    result = run_both_ways(qc_project, "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*baseline comparisons are off; run with --quant-baseline*"])


def test_missing_baseline_fails_and_says_how_to_create_it(qc_project: pytest.Pytester,
                                                          run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(SUITE)
    result = run_both_ways(qc_project, "--quant-baseline")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*base.quantcheck.json: no baseline file; create it with"
                                 " --quant-update-baseline*"])


def test_a_regression_against_the_baseline_fails_with_the_update_flag(
        qc_project: pytest.Pytester, run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(SUITE)
    qc_project.runpytest("--quant-update-baseline", "--quant-variants", "Q8_0")  # the setup
    # Pretend the last release was 0.1 nats per token better than this build.
    path = qc_project.path / "baselines" / "base.quantcheck.json"
    data = json.loads(path.read_text())
    data["records"]["Q8_0"]["perplexity"]["chunk_nll"] = [
        x - 0.1 for x in data["records"]["Q8_0"]["perplexity"]["chunk_nll"]]
    path.write_text(json.dumps(data))
    result = run_both_ways(qc_project, "--quant-baseline", "--quant-variants", "Q8_0")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL for Q8_0: PPL * vs * (baseline base.quantcheck.json),"
                                 " +10.52%*If the change is intended, update the baseline with"
                                 " --quant-update-baseline*"])


def test_mismatched_baseline_is_refused_naming_the_key(qc_project: pytest.Pytester,
                                                       run_both_ways: RunBothWays) -> None:
    qc_project.makepyfile(SUITE)
    qc_project.runpytest("--quant-update-baseline").assert_outcomes(passed=2)  # the setup
    result = run_both_ways(qc_project, "--quant-baseline", "--quant-n-ctx", "32")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*baseline was made with a different tokens_sha256*refresh it with"
                                 " --quant-update-baseline if the change is intended*"])
    result = run_both_ways(qc_project, "--quant-baseline", "--quant-n-ctx", "32",
                           "--quant-baseline-ignore", "tokens_sha256,protocol")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*baseline was made with a different n_ctx (64, now 32)*"])


def test_corrupt_baseline_is_reported_not_overwritten(qc_project: pytest.Pytester,
                                                      run_both_ways: RunBothWays) -> None:
    path = plant_corrupt_baseline(qc_project)
    result = run_both_ways(qc_project, "--quant-baseline")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*base.quantcheck.json: unreadable baseline*restore it from version"
                                 " control or recreate it with --quant-update-baseline*"])
    assert path.read_text() == "{ not json"


def test_update_merges_records_of_other_variants(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "m.quantcheck.json"  # type: ignore[operator]
    keys = KEYS
    update(path, keys, {"Q8_0": {"perplexity": {"chunk_nll": [1.0]}}})
    update(path, keys, {"Q2_K": {"perplexity": {"chunk_nll": [2.0]}}})
    assert set(load(path).records) == {"Q8_0", "Q2_K"}
    update(path, {**keys, "n_ctx": 16}, {"Q4_0": {}})  # other keys: old records are dropped
    assert set(load(path).records) == {"Q4_0"}
    with pytest.raises(BaselineError, match="different n_ctx"):
        load(path).record("Q4_0", keys, ())


def test_file_names_cannot_escape_the_directory() -> None:
    assert file_name("../../etc/passwd") == "_.._etc_passwd.quantcheck.json"
    assert "/" not in file_name("a/b\\c")


def test_updating_over_a_corrupt_file_keeps_it_aside(qc_project: pytest.Pytester,
                                                     run_both_ways: RunBothWays) -> None:
    path = plant_corrupt_baseline(qc_project)
    result = run_both_ways(qc_project, "--quant-update-baseline")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*base.quantcheck.json was not a readable baseline; it was moved"
                                 " to *base.quantcheck.json.corrupt-*"])
    aside = list(path.parent.glob("base.quantcheck.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{ not json"
    assert load(path).records


def test_sigkill_during_an_update_leaves_the_old_baseline_readable(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "m.quantcheck.json"
    keys = KEYS
    update(path, keys, {"Q8_0": {"perplexity": {"chunk_nll": [1.0]}}})
    before = path.read_bytes()
    writer = (
        "import sys\nfrom pathlib import Path\nfrom pytest_quantcheck.baseline import update\n"
        f"keys = {keys!r}\n"
        "big = {f'V{i}': {'perplexity': {'chunk_nll': [0.5] * 5000}} for i in range(60)}\n"
        f"update(Path({str(path)!r}), keys, big)\n"
        "print('ready', flush=True)\n"
        "while True:  # rewrite it again and again until killed\n"
        f"    update(Path({str(path)!r}), keys, big)\n"
    )
    env = {**os.environ, "QUANTCHECK_CACHE_DIR": str(tmp_path / "cache")}
    for delay in (0.03, 0.11, 0.27):  # points inside one rewrite (about 0.5 s with fsync)
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        data = load(path)  # always a complete file, never a torn one
        assert "Q8_0" in data.records and len(data.records) == 61
    assert path.read_bytes() != before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(name.endswith(".tmp") for name in leftovers)  # at most a temporary, never used


def test_a_version_1_baseline_is_read_and_rewritten_as_version_3(tmp_path: Path) -> None:
    path = tmp_path / "m.quantcheck.json"
    v1 = {"schema": "pytest-quantcheck baseline", "schema_version": 1,
          "tool": "pytest-quantcheck 0.1.0.dev0", "keys": KEYS,
          "records": {"Q8_0": {"perplexity": {"chunk_nll": [1.0, 1.1]}}}}
    path.write_text(json.dumps(v1))
    assert load(path).records["Q8_0"]["perplexity"]["chunk_nll"] == [1.0, 1.1]
    update(path, KEYS, {"Q2_K": {"perplexity": {"chunk_nll": [2.0, 2.1]}}})
    data = json.loads(path.read_text())
    assert data["schema_version"] == 3 and set(data["records"]) == {"Q8_0", "Q2_K"}


def test_a_version_2_machine_keeps_its_run_as_the_first_of_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "m.quantcheck.json"
    tg = {"test": "tg16", "samples": [10.0, 11.0]}
    v2 = {"schema": "pytest-quantcheck baseline", "schema_version": 2, "keys": KEYS,
          "records": {"Q8_0": {"machines": [{"fingerprint": {"cpu": "A"},
                                             "throughput": {"tg": tg}}]}}}
    path.write_text(json.dumps(v2))
    machine = load(path).records["Q8_0"]["machines"][0]
    assert machine["runs"] == {"tg": [tg]} and machine["throughput"] == {"tg": tg}


def test_a_baseline_from_a_newer_version_says_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "m.quantcheck.json"
    path.write_text(json.dumps({"schema": "pytest-quantcheck baseline", "schema_version": 9,
                                "keys": KEYS, "records": {}}))
    with pytest.raises(BaselineError, match=r"schema version 9 was written by a newer"
                                            r" pytest-quantcheck .* upgrade pytest-quantcheck"):
        load(path)
    with pytest.raises(BaselineError, match="unknown"):
        path.write_text(json.dumps({"schema": "pytest-quantcheck baseline", "schema_version": 0,
                                    "keys": KEYS, "records": {}}))
        load(path)


def test_records_merge_by_section_and_machine() -> None:
    here = {"cpu": "A", "threads": 2}
    there = {"cpu": "B", "threads": 2}
    old = {"perplexity": {"ppl": 5.0}, "machines": [
        {"fingerprint": here, "throughput": {"pp": {"mean": 1}, "tg": {"mean": 2}}},
        {"fingerprint": there, "memory": {"peak_rss_mib": 9}}]}
    # a run that measured tg and memory here, and no quality
    new = {"size_bytes": 10, "machines": [{"fingerprint": here, "throughput": {"tg": {"mean": 3}},
                                           "memory": {"peak_rss_mib": 7}}]}
    merged = merge_record(old, new)
    assert merged["perplexity"] == {"ppl": 5.0} and merged["size_bytes"] == 10
    assert merged["machines"][0] == {"fingerprint": here, "memory": {"peak_rss_mib": 7},
                                     "throughput": {"pp": {"mean": 1}, "tg": {"mean": 3}}}
    assert merged["machines"][1] == old["machines"][1]
    assert old["machines"][0]["throughput"]["tg"] == {"mean": 2}  # inputs are not modified


def test_runs_of_one_machine_accumulate_up_to_the_limit() -> None:
    here = {"cpu": "A"}
    record: dict[str, object] = {}
    for i in range(4):
        new = {"machines": [{"fingerprint": here, "throughput": {"tg": {"run": i}},
                             "runs": {"tg": [{"run": i}]}}]}
        record = merge_record(record, new, keep_runs=3)
    machine = record["machines"][0]  # type: ignore[index]
    assert machine["runs"]["tg"] == [{"run": 1}, {"run": 2}, {"run": 3}]
    assert machine["throughput"]["tg"] == {"run": 3}
