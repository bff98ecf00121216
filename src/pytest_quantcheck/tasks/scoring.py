"""Scoring tasks as llama-perplexity scores them: the same tokens, the same batches, the same
positions scored.

Each task's choices are tokenized whole (with BOS where the vocabulary adds one). Their common
prefix is decoded once, shared by one sequence per choice; each choice's remaining tokens follow
in its own sequence. Tasks are packed into one decode while their tokens fit the context
(``n_parallel * n_ctx`` tokens) and their sequences fit ``n_parallel`` (llama-perplexity's
``-np``, at least 4), and the decode is cut into ``n_batch`` pieces. The batch layout decides
which kernels run, so the same layout gives the same logits bit for bit.

What is scored:

* HellaSwag and multiple choice: the mean log-probability of each choice's tokens after the
  prefix (the first from the prefix's last position); the highest mean is the answer (the first
  of equal ones). HellaSwag sums in ``double``, multiple choice in ``float``, as llama.cpp does.
* Winogrande: the mean log-probability of the tokens after the blank, the choice's own tokens
  left out when both continuations are longer than 3 tokens, and each sequence's last token
  left out when more than one remains; choice 1 wins only when strictly higher. Where the choice
  tokens are not left out, llama.cpp reads choice 2's first scored logit from a row of choice 1
  (its own FIXME); we read the same row, so the answers agree.

Log-probabilities use llama.cpp's arithmetic (maximum and ``expf`` in float, the sum in double,
the result stored as float; metrics/logprobs.py), only the order of the sum differs, so a score
agrees to about 1e-7 and an answer agrees unless two choices score within that of each other.
The rows are read where the backend left them (no copy of a batch of logits) and normalized once
each, on the run's threads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pytest_quantcheck.backends import BatchContext
from pytest_quantcheck.metrics.logprobs import logprobs_at
from pytest_quantcheck.tasks.files import HELLASWAG, MULTIPLE_CHOICE, WINOGRANDE, Task, TaskFileError, TaskSet

MAX_TASKS_PER_BATCH = {HELLASWAG: 32, WINOGRANDE: 128, MULTIPLE_CHOICE: 32}
SEQS_PER_TASK_CAP = {HELLASWAG: 4, WINOGRANDE: 2, MULTIPLE_CHOICE: 4}
WINOGRANDE_MIN_TRAILING = 3  # llama.cpp's k_min_trailing_ctx


@dataclass(frozen=True)
class Prepared:
    """A task tokenized: each choice's tokens, their common prefix, the tokens one decode of
    the task takes, and (Winogrande) the token counts of each choice's base."""

    task: Task
    seqs: tuple[NDArray[np.int32], ...]
    prefix: int
    required: int
    n_base: tuple[int, ...] = ()


def prepare(task: Task, tokenize: Callable[[bytes], NDArray[np.int32]], mode: str,
            source: str) -> Prepared:
    seqs = tuple(tokenize(text) for text in task.texts)
    shortest = min(len(s) for s in seqs)
    prefix = 0
    while prefix < shortest and all(s[prefix] == seqs[0][prefix] for s in seqs[1:]):
        prefix += 1
    if prefix == 0:
        raise TaskFileError(f"{source}: task {task.number}'s choices share no first token, which"
                            " llama-perplexity cannot score; use a model that adds BOS")
    if mode != WINOGRANDE and any(len(s) == prefix for s in seqs):
        raise TaskFileError(f"{source}: task {task.number} has a choice that adds no tokens to"
                            " the question (two choices are the same); make the choices differ")
    required = prefix + sum(len(s) - prefix for s in seqs)
    n_base = tuple(len(tokenize(b)) for b in task.bases)
    return Prepared(task, seqs, prefix, required, n_base)


@dataclass
class _Packed:
    tokens: list[int]
    pos: list[int]
    seq_ids: list[tuple[int, ...]]
    outputs: list[bool]


def _add_task(batch: _Packed, p: Prepared, s0: int, mode: str) -> int:
    """Append a task's tokens at sequences ``s0...``; return how many logits it asks for."""
    shared = tuple(range(s0, s0 + len(p.seqs)))
    for i in range(p.prefix):
        batch.tokens.append(int(p.seqs[0][i]))
        batch.pos.append(i)
        batch.seq_ids.append(shared)
        batch.outputs.append(i == p.prefix - 1)
    n_logits = 1
    for s, seq in enumerate(p.seqs):
        for i in range(p.prefix, len(seq)):
            wanted = mode == WINOGRANDE or i < len(seq) - 1
            batch.tokens.append(int(seq[i]))
            batch.pos.append(i)
            batch.seq_ids.append((s0 + s,))
            batch.outputs.append(wanted)
            n_logits += wanted
    return n_logits


def batches(prepared: list[Prepared], mode: str, n_ctx: int, n_parallel: int,
            source: str) -> Iterator[tuple[list[int], _Packed, list[int]]]:
    """llama-perplexity's packing: (task indices, the batch, each task's first logit row)."""
    max_seq = min(SEQS_PER_TASK_CAP[mode] * MAX_TASKS_PER_BATCH[mode], n_parallel)
    i0 = 0
    while i0 < len(prepared):
        batch = _Packed([], [], [], [])
        members: list[int] = []
        starts: list[int] = []
        n_cur, s0, n_logits, i1 = 0, 0, 0, i0
        while i1 < len(prepared) and n_cur + prepared[i1].required <= n_ctx:
            p = prepared[i1]
            if s0 + len(p.seqs) > max_seq:
                if s0 == 0:
                    raise TaskFileError(
                        f"{source}: task {p.task.number} has {len(p.seqs)} choices; score it"
                        f" with at least {len(p.seqs)} parallel sequences (-np)")
                break
            starts.append(n_logits)
            n_logits += _add_task(batch, p, s0, mode)
            members.append(i1)
            s0 += len(p.seqs)
            n_cur += p.required
            i1 += 1
        if not members:
            raise TaskFileError(
                f"{source}: task {prepared[i0].task.number} needs {prepared[i0].required} tokens,"
                f" more than the context of {n_ctx}; raise -c (n_ctx)")
        yield members, batch, starts
        i0 = i1


def log_probs(logits: NDArray[np.float32], tokens: NDArray[np.int64],
              threads: int = 1) -> NDArray[np.float32]:
    """log softmax(row)[token] of each logits row, rounded to float as llama.cpp stores it."""
    rows = np.arange(len(tokens), dtype=np.int64)
    return logprobs_at(logits, rows, np.asarray(tokens, dtype=np.int64), threads).astype(np.float32)


Requests = tuple[list[int], list[int]]  # logit rows and the tokens whose log-probability they give


def _mean_choice_requests(p: Prepared, start: int) -> Requests:
    """HellaSwag and multiple choice: each choice's first token from the prefix's last row,
    then each choice's tokens after the prefix from its own rows."""
    rows, targets = [start] * len(p.seqs), [int(s[p.prefix]) for s in p.seqs]
    li = 1
    for seq in p.seqs:
        for j in range(p.prefix, len(seq) - 1):
            rows.append(start + li)
            targets.append(int(seq[j + 1]))
            li += 1
    return rows, targets


def _mean_choice_scores(p: Prepared, lp: NDArray[np.float32], mode: str) -> list[float]:
    """Each choice's mean log-probability after the prefix (``lp`` in request order)."""
    scores, at = [], len(p.seqs)
    for s, seq in enumerate(p.seqs):
        n = len(seq) - 1 - p.prefix
        if mode == HELLASWAG:  # double accumulator
            total = float(lp[s]) + float(np.sum(lp[at: at + n], dtype=np.float64))
            scores.append(total / (n + 1))
        else:  # float accumulator, summed in order
            acc = np.float32(lp[s])
            for value in lp[at: at + n]:
                acc = np.float32(acc + value)
            scores.append(float(np.float32(acc / np.float32(n + 1))))
        at += n
    return scores


def _winogrande_spans(p: Prepared) -> list[tuple[int, int, int]]:
    """Per choice: the first scored row after the task's start, the first position scored,
    and how many."""
    len0, len1 = len(p.seqs[0]), len(p.seqs[1])
    skip = (len0 - p.prefix > WINOGRANDE_MIN_TRAILING and len1 - p.prefix > WINOGRANDE_MIN_TRAILING)
    spans = []
    for s, seq in enumerate(p.seqs):
        n_base = p.n_base[s] if skip else p.prefix
        last = 1 if len(seq) - n_base > 1 else 0
        li = n_base - p.prefix if s == 0 else (len0 - p.prefix) + (n_base - p.prefix)
        if li < 0:
            raise TaskFileError(f"task {p.task.number}: its choices tokenize into each other, which"
                                " llama-perplexity cannot score; reword the choices")
        spans.append((li, n_base - 1, max(0, len(seq) - n_base - last)))
    return spans


def _winogrande_requests(p: Prepared, start: int) -> Requests:
    rows: list[int] = []
    targets: list[int] = []
    for seq, (li, j0, n) in zip(p.seqs, _winogrande_spans(p), strict=True):
        rows.extend(start + li + k for k in range(n))
        targets.extend(int(seq[j0 + k + 1]) for k in range(n))
    return rows, targets


def _winogrande_scores(p: Prepared, lp: NDArray[np.float32]) -> list[float]:
    scores, at = [], 0
    for seq, (_li, j0, n) in zip(p.seqs, _winogrande_spans(p), strict=True):
        acc = np.float32(0.0)
        for value in lp[at: at + n]:
            acc = np.float32(acc + value)
        at += n
        # llama.cpp divides by a size_t: len(seq) - n_base - last, wrapped when negative
        count = (len(seq) - (j0 + 1) - (1 if len(seq) - (j0 + 1) > 1 else 0)) % 2**64
        scores.append(float(np.float32(acc / np.float32(count))) if count else float("nan"))
    return scores


def choose(mode: str, scores: list[float]) -> int:
    """The chosen choice: the first highest score; Winogrande's first only when strictly higher."""
    if mode == WINOGRANDE:
        return 0 if scores[0] > scores[1] else 1
    best = 0
    for i in range(1, len(scores)):
        if scores[i] > scores[best]:
            best = i
    return best


@dataclass(frozen=True)
class Scored:
    """Per task, in scoring order: the chosen choice, whether it is right, every choice's score."""

    chosen: NDArray[np.int32]
    correct: NDArray[np.bool_]
    scores: tuple[tuple[float, ...], ...]


def score(tasks: TaskSet, tokenize: Callable[[bytes], NDArray[np.int32]], ctx: BatchContext,
          n_ctx: int, n_parallel: int, progress: Callable[[int, int], None] | None = None,
          start: int = 0, upto: int | None = None, threads: int = 1) -> Scored:
    """Score the tasks of ``tasks`` in batches on ``ctx`` (a context of ``n_ctx`` tokens and
    ``n_parallel`` sequences): from task ``start`` until at least ``upto`` tasks (None: all) are
    scored, in whole batches of the full run's packing, so a task's answer does not depend on
    where a run stopped. Returns the tasks from ``start`` to the end of the last batch scored.
    The log-softmax of a batch's rows runs on ``threads`` threads."""
    source = str(tasks.path)
    prepared = [prepare(t, tokenize, tasks.mode, source) for t in tasks.tasks]
    end = len(prepared) if upto is None else min(len(prepared), max(upto, start))
    chosen = np.zeros(len(prepared), dtype=np.int32)
    correct = np.zeros(len(prepared), dtype=np.bool_)
    all_scores: list[tuple[float, ...]] = [()] * len(prepared)
    done = start
    for members, batch, starts in batches(prepared, tasks.mode, n_ctx, n_parallel, source):
        if members[-1] < start:
            continue  # scored before
        if members[0] >= end:
            break
        logits = ctx.decode(np.array(batch.tokens, dtype=np.int32),
                            np.array(batch.pos, dtype=np.int32), batch.seq_ids,
                            np.array(batch.outputs, dtype=np.bool_))
        wanted = [_winogrande_requests(prepared[i], first) if tasks.mode == WINOGRANDE
                  else _mean_choice_requests(prepared[i], first)
                  for i, first in zip(members, starts, strict=True)]
        rows = np.array([r for w in wanted for r in w[0]], dtype=np.int64)
        targets = np.array([t for w in wanted for t in w[1]], dtype=np.int64)
        lp_all = logprobs_at(logits, rows, targets, threads).astype(np.float32)
        at = 0
        for i, (w_rows, _) in zip(members, wanted, strict=True):
            p = prepared[i]
            lp = lp_all[at: at + len(w_rows)]
            at += len(w_rows)
            if tasks.mode == WINOGRANDE:
                s = _winogrande_scores(p, lp)
            else:
                s = _mean_choice_scores(p, lp, tasks.mode)
            chosen[i] = choose(tasks.mode, s)
            correct[i] = int(chosen[i]) in p.task.correct
            all_scores[i] = tuple(s)
        done = members[-1] + 1
        if progress:
            progress(done, len(prepared))
    return Scored(chosen[start:done], correct[start:done], tuple(all_scores[start:done]))
