"""Task files in llama-perplexity's three layouts, read and selected exactly as it reads them.

* HellaSwag: six lines a task (context, gold ending index 0-3, four endings). Each choice is
  ``context + " " + ending``.
* Winogrande: CSV rows ``index,sentence,choice1,choice2,answer`` whose sentence holds one ``_``.
  Each choice is the sentence with the blank filled; what precedes the blank plus the choice is
  the choice's *base* (its tokens are not scored when the rest is long enough).
* Multiple choice (ARC, MMLU, TruthfulQA...): llama.cpp's binary file, a ``uint32`` task count,
  one ``uint32`` offset per task, then per task a question string, the single-answer block
  (``uint32`` count, strings, ``int32`` labels) and the multiple-answer block (read, unused).
  Strings are a ``uint32`` length and UTF-8 bytes; all little-endian. Each choice is
  ``question + " " + answer``.

llama-perplexity reads its text files after dropping one final newline, so a Winogrande file's
last row is never read (its ``getline`` loop stops at the end of the data); we read the same
rows so the scores agree. Unlike llama-perplexity, which skips malformed rows and scores the
rest, a malformed task here is an error naming the file, the task and the fix: a gate must not
silently score fewer tasks than its file holds.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from pytest_quantcheck.errors import QuantcheckError
from pytest_quantcheck.tasks.mt19937 import MT19937, float_index, uniform_int

HELLASWAG, WINOGRANDE, MULTIPLE_CHOICE = "hellaswag", "winogrande", "multiple-choice"
MODES = (HELLASWAG, WINOGRANDE, MULTIPLE_CHOICE)
# llama-perplexity's default task counts: 400 HellaSwag tasks, all others (0 = all)
DEFAULT_LIMIT = {HELLASWAG: 400, WINOGRANDE: 0, MULTIPLE_CHOICE: 0}
MAX_ANSWERS = 100  # llama.cpp refuses more answers to one question


class TaskFileError(QuantcheckError, ValueError):
    """A task file that cannot be read; the message names the file, the task or line, the fix."""


@dataclass(frozen=True)
class Task:
    """One question: its choices as the text that is tokenized, and which choices are right."""

    number: int  # 1-based: the task's line group, row or record in the file
    texts: tuple[bytes, ...]
    correct: frozenset[int]
    bases: tuple[bytes, ...] = ()  # Winogrande: the text up to and including each choice


@dataclass(frozen=True)
class TaskSet:
    mode: str
    path: Path
    tasks: tuple[Task, ...]  # in the order they are scored
    n_available: int  # tasks in the file
    sha256: str = ""  # of the file's bytes


def detect_mode(path: Path, data: bytes, name: str | None = None) -> str:
    """The layout, from a task name that starts with a mode's name or from the file itself."""
    if name:
        lowered = name.lower().replace("_", "-")
        for mode in MODES:
            if lowered.startswith(mode):
                return mode
    if len(data) >= 8:
        n = struct.unpack_from("<I", data)[0]
        if n > 0 and 4 + 4 * n <= len(data) and struct.unpack_from("<I", data, 4)[0] == 4 + 4 * n:
            return MULTIPLE_CHOICE
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TaskFileError(
            f"{path}: not a task file in any layout llama-perplexity reads (binary, but not a"
            " multiple-choice file); give a HellaSwag, Winogrande or multiple-choice file") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if path.suffix.lower() == ".csv" or (first.count(",") >= 4 and "_" in first):
        return WINOGRANDE
    lines = _lines(data)
    if len(lines) >= 2 and re.match(r"\s*[+-]?\d+", lines[1].decode("utf-8", "replace")):
        return HELLASWAG
    raise TaskFileError(
        f"{path}: not a task file in any layout llama-perplexity reads; give a HellaSwag file"
        " (6 lines a task), a Winogrande CSV or a multiple-choice binary file, or name the mode")


def load(path: Path, mode: str | None = None, limit: int | None = None,
         name: str | None = None) -> TaskSet:
    """The tasks of ``path`` that llama-perplexity scores with ``--<mode>-tasks limit`` (None:
    its default), in its order."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TaskFileError(f"{path}: cannot read the task file ({exc.strerror}); check the"
                            " path") from None
    if not data:
        raise TaskFileError(f"{path}: the task file is empty; give a file with tasks")
    if mode is None:
        mode = detect_mode(path, data, name)
    elif mode not in MODES:
        raise TaskFileError(f"{path}: unknown task mode {mode!r}; use one of {', '.join(MODES)}")
    if limit is None:
        limit = DEFAULT_LIMIT[mode]
    read = {HELLASWAG: _hellaswag, WINOGRANDE: _winogrande, MULTIPLE_CHOICE: _multiple_choice}
    return replace(read[mode](path, data, limit), sha256=hashlib.sha256(data).hexdigest())


def _lines(data: bytes) -> list[bytes]:
    """``std::getline`` over the file as ``-f`` reads it (one final newline dropped)."""
    text = data[:-1] if data.endswith(b"\n") else data
    lines = text.split(b"\n")
    if text.endswith(b"\n") or not text:
        lines.pop()
    return lines


def _leading_int(text: bytes) -> int | None:
    match = re.match(rb"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else None


def _hellaswag(path: Path, data: bytes, limit: int) -> TaskSet:
    lines = _lines(data)
    if len(lines) % 6:
        raise TaskFileError(
            f"{path}: {len(lines)} lines, not a multiple of 6 (a HellaSwag task is 6 lines:"
            " context, gold index, 4 endings); fix the file's last task")
    n = len(lines) // 6
    count = n if limit <= 0 else min(limit, n)
    left = list(range(n))
    rng = MT19937(1)
    tasks = []
    for _ in range(count):  # llama-perplexity draws every task at random, even all of them
        idx = left.pop(uniform_int(rng, 0, len(left) - 1))
        block = lines[idx * 6: idx * 6 + 6]
        gold = _leading_int(block[1])
        if gold is None or not 0 <= gold <= 3:
            raise TaskFileError(
                f"{path}:{idx * 6 + 2}: task {idx + 1}'s gold ending {block[1]!r} is not 0, 1, 2"
                " or 3; fix that line")
        for j, ending in enumerate(block[2:]):
            if not ending.strip():
                raise TaskFileError(f"{path}:{idx * 6 + 3 + j}: task {idx + 1} has an empty"
                                    " ending; give every task four endings")
        tasks.append(Task(idx + 1, tuple(block[0] + b" " + e for e in block[2:]),
                          frozenset({gold})))
    return TaskSet(HELLASWAG, path, tuple(tasks), n)


def _csv_fields(line: bytes) -> list[int]:
    """Positions of the first four commas outside quotes, as llama-perplexity finds them."""
    commas, quoted = [], False
    for i, ch in enumerate(line):
        if ch == 0x22:  # '"'
            quoted = not quoted
        elif ch == 0x2C and not quoted:
            commas.append(i)
            if len(commas) == 4:
                break
    return commas


def _winogrande(path: Path, data: bytes, limit: int) -> TaskSet:
    pieces = (data[:-1] if data.endswith(b"\n") else data).split(b"\n")
    rows: list[Task] = []
    for number, line in enumerate(pieces[:-1], start=1):  # the last piece ends at EOF: unread
        if not line.strip():
            continue
        commas = _csv_fields(line)
        answer = _leading_int(line[commas[3] + 1:]) if len(commas) == 4 else None
        if number == 1 and answer is None:
            continue  # a header row
        if len(commas) != 4:
            raise TaskFileError(
                f"{path}:{number}: {len(commas) + 1} comma-separated fields, expected 5 (index,"
                " sentence, choice 1, choice 2, answer); quote a sentence that holds commas")
        c0, c1, c2, c3 = commas
        quoted = line[c0 + 1: c0 + 2] == b'"'  # llama.cpp drops a quote at each end
        sentence = line[c0 + 2: c1 - 1] if quoted else line[c0 + 1: c1]
        blank = sentence.find(b"_")
        if blank < 0:
            raise TaskFileError(f"{path}:{number}: the sentence has no _ to fill; mark the blank"
                                " with _")
        if answer not in (1, 2):
            raise TaskFileError(f"{path}:{number}: the answer {line[c3 + 1:]!r} is not 1 or 2;"
                                " fix that row")
        choices = (line[c1 + 1: c2], line[c2 + 1: c3])
        if not all(c.strip() for c in choices):
            raise TaskFileError(f"{path}:{number}: an empty choice; give both choices")
        first, second = sentence[:blank], sentence[blank + 1:]
        rows.append(Task(number, tuple(first + c + second for c in choices),
                         frozenset({answer - 1}), tuple(first + c for c in choices)))
    if not rows:
        raise TaskFileError(f"{path}: no Winogrande rows (llama-perplexity does not read a last"
                            " row without a newline after it); give index,sentence,choice1,"
                            "choice2,answer rows")
    if 0 < limit < len(rows):
        rows = [rows[i] for i in _float_draws(len(rows), limit)]
    return TaskSet(WINOGRANDE, path, tuple(rows), len(rows))


def _float_draws(n: int, count: int) -> list[int]:
    """Indices drawn without replacement as llama-perplexity's Winogrande and multiple-choice
    selection draws them (swap with the last, shrink)."""
    rng = MT19937(1)
    aux = list(range(n))
    picked = []
    for _ in range(count):
        j = float_index(rng, len(aux))
        picked.append(aux[j])
        aux[j] = aux[-1]
        aux.pop()
    return picked


class _Reader:
    def __init__(self, path: Path, data: bytes, offset: int, task: int) -> None:
        self.path, self.data, self.at, self.task = path, data, offset, task

    def _short(self) -> TaskFileError:
        return TaskFileError(f"{self.path}: task {self.task} is cut short (the file ends at byte"
                             f" {len(self.data)}); the file is truncated, copy it again")

    def u32(self) -> int:
        if self.at + 4 > len(self.data):
            raise self._short()
        (value,) = struct.unpack_from("<I", self.data, self.at)
        self.at += 4
        return int(value)

    def string(self) -> bytes:
        size = self.u32()
        if self.at + size > len(self.data):
            raise self._short()
        self.at += size
        return self.data[self.at - size: self.at]

    def answers(self) -> tuple[list[bytes], list[int]]:
        n = self.u32()
        if n > MAX_ANSWERS:
            raise TaskFileError(f"{self.path}: task {self.task} claims {n} answers (llama.cpp"
                                f" reads at most {MAX_ANSWERS}); the file is corrupt")
        answers = [self.string() for _ in range(n)]
        if self.at + 4 * n > len(self.data):
            raise self._short()
        labels = list(struct.unpack_from(f"<{n}i", self.data, self.at))
        self.at += 4 * n
        return answers, labels


def _mc_task(path: Path, data: bytes, offset: int, number: int) -> tuple[Task, int]:
    """The task at ``offset``, and where the next one starts."""
    reader = _Reader(path, data, offset, number)
    question = reader.string()
    answers, labels = reader.answers()
    reader.answers()  # the multiple-answer block, which llama-perplexity does not score
    if not question or not answers:
        raise TaskFileError(f"{path}: task {number} has an empty question or no answers; fix"
                            " the task or leave it out")
    if any(not a for a in answers):
        raise TaskFileError(f"{path}: task {number} has an empty answer; fix the task or leave"
                            " it out")
    if any(label not in (0, 1) for label in labels) or 1 not in labels:
        raise TaskFileError(f"{path}: task {number}'s labels {labels} are not 0s and at least one"
                            " 1; label the right answer 1")
    return Task(number, tuple(question + b" " + a for a in answers),
                frozenset(i for i, label in enumerate(labels) if label == 1)), reader.at


def _multiple_choice(path: Path, data: bytes, limit: int) -> TaskSet:
    head = _Reader(path, data, 0, 1)
    n = head.u32()
    if n == 0:
        raise TaskFileError(f"{path}: the multiple-choice file holds no tasks")
    if 4 + 4 * n > len(data):
        raise TaskFileError(f"{path}: the table of {n} task offsets is cut short; the file is"
                            " truncated or not a multiple-choice file")
    offsets = struct.unpack_from(f"<{n}I", data, 4)
    if 0 < limit < n:  # llama-perplexity seeks to the drawn tasks' offsets
        tasks = [_mc_task(path, data, offsets[i], i + 1)[0] for i in _float_draws(n, limit)]
    else:  # and reads every task in sequence otherwise
        tasks, at = [], 4 + 4 * n
        for i in range(n):
            task, at = _mc_task(path, data, at, i + 1)
            tasks.append(task)
    return TaskSet(MULTIPLE_CHOICE, path, tuple(tasks), n)
