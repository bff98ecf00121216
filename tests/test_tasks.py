"""Task files, llama-perplexity's task selection, and task scoring against a naive scorer."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pytest_quantcheck.backends import RunOptions
from pytest_quantcheck.cli import main
from pytest_quantcheck.demo import task_sets as demo_tasks
from pytest_quantcheck.engine import Engine
from pytest_quantcheck.tasks import files
from pytest_quantcheck.tasks.files import TaskFileError, load
from pytest_quantcheck.tasks.mt19937 import MT19937, float_index, uniform_int
from pytest_quantcheck.tasks.scoring import WINOGRANDE_MIN_TRAILING, log_probs, prepare, score

from fakes import FakeBackend, FakeLoaded, write_fake_gguf

# ---- llama-perplexity's random selection ----------------------------------------------------


def test_mt19937_matches_the_cxx_standard() -> None:
    rng = MT19937()  # default seed 5489; the standard fixes the 10000th value
    for _ in range(9999):
        rng()
    assert rng() == 4123659995


CXX_DRAWS = r"""
#include <cstdio>
#include <random>
int main() {
    std::mt19937 a(1);
    for (size_t n : std::initializer_list<size_t>{1, 2, 3, 7, 400, 10042, 65537, 3000000000u}) {
        for (int i = 0; i < 50; ++i) {
            std::uniform_int_distribution<size_t> d(0, n - 1);
            printf("%zu\n", d(a));
        }
    }
    std::mt19937 b(1);
    float scale = 1/(1.f + (float)b.max());
    for (size_t n : std::initializer_list<size_t>{1, 2, 3, 300, 1267, 14042, 16777217}) {
        for (int i = 0; i < 50; ++i) printf("%d\n", int(scale*b()*n));
    }
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_draws_match_libstdcxx(tmp_path: Path) -> None:
    """The exact draws of GCC's std::mt19937 + uniform_int_distribution and of the float
    scaling llama-perplexity uses, compiled here and compared number for number."""
    src = tmp_path / "draws.cpp"
    src.write_text(CXX_DRAWS)
    subprocess.run(["g++", "-O1", "-o", str(tmp_path / "draws"), str(src)], check=True)
    expected = [int(x) for x in subprocess.run([str(tmp_path / "draws")], capture_output=True,
                                               check=True, text=True).stdout.split()]
    a = MT19937(1)
    mine = [uniform_int(a, 0, n - 1) for n in (1, 2, 3, 7, 400, 10042, 65537, 3000000000)
            for _ in range(50)]
    b = MT19937(1)
    mine += [float_index(b, n) for n in (1, 2, 3, 300, 1267, 14042, 16777217) for _ in range(50)]
    assert mine == expected


# ---- files ----------------------------------------------------------------------------------


def hellaswag_file(path: Path, n: int, gold: int = 1) -> Path:
    lines = []
    for i in range(n):
        lines += [f"context {i} alpha beta", str(gold), "gamma delta", "quant check",
                  "model token", "alpha alpha"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_hellaswag_selection_is_random_and_complete(tmp_path: Path) -> None:
    path = hellaswag_file(tmp_path / "hs.txt", 30)
    every = load(path)
    assert every.mode == "hellaswag" and every.n_available == 30
    numbers = [t.number for t in every.tasks]
    assert sorted(numbers) == list(range(1, 31)) and numbers != sorted(numbers)
    assert every.tasks[0].texts[0] == f"context {numbers[0] - 1} alpha beta gamma delta".encode()
    some = load(path, limit=10)
    assert [t.number for t in some.tasks] == numbers[:10]  # one draw sequence: a prefix


def test_winogrande_reads_rows_as_llama_perplexity(tmp_path: Path) -> None:
    path = tmp_path / "wg.csv"
    path.write_text('index,sentence,option1,option2,answer\n'
                    '0,"Anna, not Bo, said _ would go.",Anna,Bo,1\n'
                    '1,The cat saw _ dog.,a,the,2\r\n'
                    '2,Never read _ row.,x,y,1\n')
    tasks = load(path)
    assert tasks.mode == "winogrande" and tasks.n_available == 2  # the last row is never read
    first = tasks.tasks[0]
    assert first.texts == (b"Anna, not Bo, said Anna would go.", b"Anna, not Bo, said Bo would go.")
    assert first.bases == (b"Anna, not Bo, said Anna", b"Anna, not Bo, said Bo")
    assert first.correct == frozenset({0}) and tasks.tasks[1].correct == frozenset({1})


def test_multiple_choice_round_trip_and_selection(tmp_path: Path) -> None:
    items = [(f"question {i}", ["yes", "no", "maybe"], [0, 1, 0]) for i in range(12)]
    path = tmp_path / "mc.bin"
    path.write_bytes(demo_tasks.write_multiple_choice(items))
    every = load(path)
    assert every.mode == "multiple-choice" and [t.number for t in every.tasks] == list(range(1, 13))
    assert every.tasks[3].texts == (b"question 3 yes", b"question 3 no", b"question 3 maybe")
    assert every.tasks[3].correct == frozenset({1})
    some = load(path, limit=5)
    assert len(some.tasks) == 5 and len({t.number for t in some.tasks}) == 5


def test_mode_comes_from_the_name_before_the_file(tmp_path: Path) -> None:
    path = hellaswag_file(tmp_path / "tasks.txt", 3)
    assert files.detect_mode(path, path.read_bytes()) == "hellaswag"
    assert files.detect_mode(path, path.read_bytes(), "Winogrande_small") == "winogrande"
    with pytest.raises(TaskFileError, match=r"tasks.txt:2: 1 comma-separated fields"):
        load(path, name="winogrande-x")


def _bin(n: int, body: bytes) -> bytes:
    return struct.pack("<II", n, 8) + body


def _s(text: bytes) -> bytes:
    return struct.pack("<I", len(text)) + text


GOOD_TASK = _s(b"q") + struct.pack("<I", 2) + _s(b"a") + _s(b"b") + struct.pack("<2i", 1, 0) + \
    struct.pack("<I", 0)

BAD_FILES = [
    ("hs.txt", b"a\n1\nb\nc\nd\n", r"hs.txt: 5 lines, not a multiple of 6"),
    ("hs.txt", b"a\n7\nb\nc\nd\ne\n", r"hs.txt:2: task 1's gold ending b'7' is not 0, 1, 2 or 3"),
    ("hs.txt", b"a\n0\nb\n \nd\ne\n", r"hs.txt:4: task 1 has an empty ending"),
    ("x.dat", b"\x00\xff\xfe\x00garbage", r"x.dat: not a task file in any layout"),
    ("e.txt", b"", r"e.txt: the task file is empty"),
    ("wg.csv", b"0,No blank here.,a,b,1\n1,x _,a,b,1\n", r"wg.csv:1: the sentence has no _"),
    ("wg.csv", b"h\n0,A _ b.,a,b,3\n1,x _,a,b,1\n", r"wg.csv:2: the answer b'3' is not 1 or 2"),
    ("wg.csv", b"0,A _ b.,a,b,1\n1,A _ b,a\n2,x _,a,b,1\n", r"wg.csv:2: 3 comma-separated fields"),
    ("wg.csv", b"0,A _ b.,,b,1\n1,x _,a,b,1\n", r"wg.csv:1: an empty choice"),
    ("mc.bin", _bin(1, GOOD_TASK[:-7]), r"mc.bin: task 1 is cut short"),
    ("mc.bin", _bin(1, GOOD_TASK.replace(_s(b"b"), _s(b""))), r"mc.bin: task 1 has an empty answer"),
    ("mc.bin", _bin(1, GOOD_TASK.replace(struct.pack("<2i", 1, 0), struct.pack("<2i", 0, 0))),
     r"mc.bin: task 1's labels \[0, 0\] are not 0s and at least one 1"),
    ("mc.bin", _bin(1, _s(b"q") + struct.pack("<I", 5000)), r"mc.bin: task 1 claims 5000 answers"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_bad_task_files_are_one_line_errors(tmp_path: Path, name: str, content: bytes,
                                            message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    mode = "multiple-choice" if name.endswith(".bin") else None
    with pytest.raises(TaskFileError, match=message) as info:
        load(path, mode=mode)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_bad_task_file_through_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_fake_gguf(tmp_path / "m.gguf")
    bad = tmp_path / "hs.txt"
    bad.write_text("a\n1\nb\n")
    assert main(["hellaswag", str(model), "-f", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "hs.txt: 3 lines, not a multiple of 6" in err


# ---- scoring ---------------------------------------------------------------------------------


def naive_scores(model: FakeLoaded, text_a: bytes, texts: tuple[bytes, ...]) -> list[float]:
    """Each choice decoded alone; its mean log-probability over the tokens after the prefix
    that all choices share."""
    seqs = [model.tokenize(t) for t in texts]
    prefix = 0
    while all(len(s) > prefix for s in seqs) and len({int(s[prefix]) for s in seqs}) == 1:
        prefix += 1
    out = []
    for seq in seqs:
        logits = model.sequence_logits(seq).astype(np.float64)
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        lp = [logits[j, seq[j + 1]] - lse[j] for j in range(prefix - 1, len(seq) - 1)]
        out.append(float(np.mean(lp)))
    return out


@pytest.mark.parametrize("n_parallel", [4, 8, 128])
def test_batched_scores_equal_naive_per_ending_scores(tmp_path: Path, n_parallel: int) -> None:
    from fakes import word_text

    rng = np.random.default_rng(3)
    words = word_text(4000, seed=5).split()
    lines = []
    for _ in range(40):
        start = int(rng.integers(0, 3900))
        lines += [" ".join(words[start:start + 8]), str(int(rng.integers(0, 4)))]
        lines += [" ".join(words[s:s + int(rng.integers(1, 5))]) for s in rng.integers(0, 3900, 4)]
    path = tmp_path / "hs.txt"
    path.write_text("\n".join(lines) + "\n")
    task_set = load(path, limit=0)
    model = FakeLoaded(write_fake_gguf(tmp_path / "m.gguf"))
    ctx = model.open_batch(n_parallel * 128, n_parallel, 256)
    scored = score(task_set, model.tokenize, ctx, n_parallel * 128, n_parallel)
    for i, task in enumerate(task_set.tasks):
        expected = naive_scores(model, b"", task.texts)
        np.testing.assert_allclose(scored.scores[i], expected, rtol=1e-6)
        assert scored.chosen[i] == int(np.argmax(expected))
        assert scored.correct[i] == (int(np.argmax(expected)) in task.correct)
    # more parallel sequences pack more tasks into one decode, as in llama-perplexity
    assert len(ctx.decodes) == (40 if n_parallel == 4 else -(-40 // (n_parallel // 4)))


def test_winogrande_scores_the_tokens_after_the_blank(tmp_path: Path) -> None:
    path = tmp_path / "wg.csv"
    path.write_text("0,alpha beta _ gamma delta quant check model,beta,quant,1\n"
                    "1,alpha _ b,g,c,2\n\n")
    task_set = load(path)
    model = FakeLoaded(write_fake_gguf(tmp_path / "m.gguf"))
    ctx = model.open_batch(512, 4, 512)
    scored = score(task_set, model.tokenize, ctx, 512, 4)
    # task 1: long continuations, so only the tokens after the choice count (less the last)
    task = task_set.tasks[0]
    p = prepare(task, model.tokenize, "winogrande", "wg.csv")
    assert all(len(s) - p.prefix > WINOGRANDE_MIN_TRAILING for s in p.seqs)
    for s, seq in enumerate(p.seqs):
        logits = model.sequence_logits(seq)
        js = range(p.n_base[s] - 1, len(seq) - 2)
        lp = log_probs(logits[list(js)], np.array([seq[j + 1] for j in js]))
        assert scored.scores[0][s] == pytest.approx(float(lp.mean()), rel=1e-6)
    # task 2: short continuations, so the choice is scored too, and choice 2's first scored row
    # is choice 1's last token (llama.cpp's FIXME): reproduced so the answers agree
    p = prepare(task_set.tasks[1], model.tokenize, "winogrande", "wg.csv")
    seq0, seq1 = p.seqs
    assert len(seq0) - p.prefix <= WINOGRANDE_MIN_TRAILING
    rows1 = [model.sequence_logits(seq0)[-1]] + [model.sequence_logits(seq1)[j]
                                                for j in range(p.prefix, len(seq1) - 2)]
    lp = log_probs(np.array(rows1), np.array([seq1[j + 1] for j in range(p.prefix - 1,
                                                                          len(seq1) - 2)]))
    assert scored.scores[1][1] == pytest.approx(float(lp.mean()), rel=1e-6)


def test_a_task_too_long_for_the_context_names_the_fix(tmp_path: Path) -> None:
    path = hellaswag_file(tmp_path / "hs.txt", 2)
    engine = Engine(FakeBackend(), RunOptions(1))
    model = write_fake_gguf(tmp_path / "m.gguf")
    with pytest.raises(TaskFileError, match=r"hs.txt: task \d needs \d+ tokens, more than the"
                       r" context of 64; raise -c"):
        engine.tasks(model, path, n_ctx=16)


def test_engine_result_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = hellaswag_file(tmp_path / "hs.txt", 25)
    engine = Engine(FakeBackend(), RunOptions(1))
    result = engine.tasks(write_fake_gguf(tmp_path / "m.gguf"), path)
    assert result.n_tasks == 25 and result.accuracy == result.n_correct / 25
    data = result.to_dict()
    assert data["correct"] == [bool(c) for c in result.correct]
    assert sorted(data["task_numbers"]) == list(range(1, 26))
    low, high = result.interval()
    assert low < result.accuracy < high or result.accuracy in (0.0, 1.0)


def test_demo_task_files_are_reproducible() -> None:
    for name, content in demo_tasks.build().items():
        assert demo_tasks.task_path(name).read_bytes() == content, (
            f"{name} differs from its generator; run python -m pytest_quantcheck.demo.task_sets")
    assert [load(demo_tasks.task_path(n)).mode for n in demo_tasks.FILES] == [
        "hellaswag", "winogrande", "multiple-choice"]


@pytest.mark.real
@pytest.mark.parametrize("name", demo_tasks.FILES)
def test_demo_tasks_on_the_demo_model(demo_model: Path, name: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The command's JSON is consistent, and the batched scores equal each choice decoded alone
    (HellaSwag and multiple choice) to float precision: the batch layout changes only llama.cpp's
    rounding, so answers agree except where two choices score within that rounding."""
    from pytest_quantcheck.backends import default_backend

    path = demo_tasks.task_path(name)
    mode = load(path).mode
    assert main([mode, str(demo_model), "-f", str(path), "--json", "-t", "2"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_tasks"] == len(data["correct"]) and data["mode"] == mode
    assert data["accuracy"] == pytest.approx(sum(data["correct"]) / data["n_tasks"])
    if mode == "winogrande":
        return
    task_set = load(path, limit=40)
    model = default_backend().load(demo_model, RunOptions(2))
    try:
        ctx = model.open_batch(2048, 4, 2048)
        scored = score(task_set, model.tokenize, ctx, 2048, 4)
        alone = model.open_batch(512, 1, 512)
        for i, task in enumerate(task_set.tasks):
            seqs = [model.tokenize(t) for t in task.texts]
            prefix = prepare(task, model.tokenize, mode, name).prefix
            naive = []
            for seq in seqs:
                n = len(seq)
                logits = alone.decode(seq, np.arange(n, dtype=np.int32), [(0,)] * n,
                                      np.ones(n, dtype=np.bool_))
                js = range(prefix - 1, n - 1)
                naive.append(float(log_probs(logits[list(js)],
                                             np.array([seq[j + 1] for j in js])).mean()))
            # One sequence alone runs other matrix kernels than a batch of four (ggml tiles large
            # batches), summing in another order: logits of size ~10 differ by ~1e-5 relative,
            # so mean log-probs by ~1e-4 (1.2e-4 seen); 1e-3 leaves room, far below the
            # differences between choices (~0.1)
            np.testing.assert_allclose(scored.scores[i], naive, atol=1e-3)
            top = sorted(naive)[-2:]
            if top[1] - top[0] > 1e-3:
                assert scored.chosen[i] == int(np.argmax(naive))
        alone.close()
        ctx.close()
    finally:
        model.close()


def test_scoring_in_pieces_gives_the_full_runs_answers(tmp_path: Path) -> None:
    # a sequential look scores the first tasks in the full run's batches, and the next look
    # goes on from the batch after: the same decodes, so the same answers
    path = hellaswag_file(tmp_path / "hs.txt", 30)
    task_set = load(path, limit=0)
    model = FakeLoaded(write_fake_gguf(tmp_path / "m.gguf"))
    whole = score(task_set, model.tokenize, model.open_batch(1024, 8, 256), 1024, 8)
    ctx = model.open_batch(1024, 8, 256)
    first = score(task_set, model.tokenize, ctx, 1024, 8, upto=7)
    assert 7 <= first.correct.size < 30 and first.correct.size % 2 == 0  # whole batches of two
    rest = score(task_set, model.tokenize, ctx, 1024, 8, start=first.correct.size)
    np.testing.assert_array_equal(np.concatenate([first.chosen, rest.chosen]), whole.chosen)
    assert (*first.scores, *rest.scores) == whole.scores


def test_engine_extends_cached_answers(tmp_path: Path) -> None:
    path = hellaswag_file(tmp_path / "hs.txt", 30)
    model = write_fake_gguf(tmp_path / "m.gguf")
    whole = Engine(FakeBackend(), RunOptions(1), cache_dir=tmp_path / "c1").tasks(model, path)
    backend = FakeBackend()
    engine = Engine(backend, RunOptions(1), cache_dir=tmp_path / "c2")
    part = engine.tasks(model, path, upto=10)
    assert 10 <= part.n_tasks < 30 and not part.complete
    assert part.selection() == whole.selection()  # pairs with the whole result
    np.testing.assert_array_equal(part.correct, whole.correct[:part.n_tasks])
    assert part.first(5).n_tasks == 5 and part.first(5).selection() == whole.selection()
    later = Engine(backend, RunOptions(1), cache_dir=tmp_path / "c2").tasks(model, path)
    assert later.complete
    np.testing.assert_array_equal(later.chosen, whole.chosen)
    assert later.to_dict()["task_numbers"] == whole.to_dict()["task_numbers"]
