"""The built-in demo tasks, made from the demo model's held-out text (``eval.txt``), no download.

Each task asks the model to tell the text's real continuation from others, in the three layouts
llama-perplexity reads:

* ``hellaswag.txt``: a 12-word passage, its real next 6 words and 3 endings of 6 words taken from
  elsewhere in the text, the real one at a random place;
* ``winogrande.csv``: a 14-word passage with one word blanked, the real word and another word of
  the text as the two choices;
* ``multiple-choice.bin``: as HellaSwag, with 2 to 4 answers a question, in llama.cpp's binary
  multiple-choice layout.

Passages are drawn from the prose paragraphs of the text (no quotes or underscores, which the
layouts reserve) with a fixed seed, so the files are reproducible:
``python -m pytest_quantcheck.demo.task_sets`` writes them again and a test compares. The demo model
is trained on disjoint text, so these measure how far it generalizes: well above chance, far from
perfect, and sensitive to quantization.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pytest_quantcheck.config import Settings, TaskSpec
from pytest_quantcheck.demo.model import data_path

SEED = 20261202
N_HELLASWAG, N_WINOGRANDE, N_MULTIPLE_CHOICE = 400, 301, 200
FILES = ("hellaswag.txt", "winogrande.csv", "multiple-choice.bin")


def _words(text: str) -> list[str]:
    """The text's words, from paragraphs of prose only (code and tables left out)."""
    words: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        if re.search(r"[\"_`|<>{}=\[\]\\]", para) or para.lstrip().startswith((">>>", "...")):
            continue
        words.extend(para.split())
    return words


def _window(words: list[str], rng: np.random.Generator, n: int) -> list[str]:
    start = int(rng.integers(0, len(words) - n))
    return words[start: start + n]


def hellaswag(words: list[str], rng: np.random.Generator, n: int) -> bytes:
    lines = []
    for _ in range(n):
        passage = _window(words, rng, 18)
        endings = [" ".join(_window(words, rng, 6)) for _ in range(3)]
        gold = int(rng.integers(0, 4))
        endings.insert(gold, " ".join(passage[12:]))
        lines += [" ".join(passage[:12]), str(gold), *endings]
    return ("\n".join(lines) + "\n").encode()


def winogrande(words: list[str], rng: np.random.Generator, n: int) -> bytes:
    candidates = sorted({w for w in words if w.isalpha() and len(w) >= 3})
    rows = ["index,sentence,option1,option2,answer"]
    while len(rows) <= n:
        passage = _window(words, rng, 14)
        k = int(rng.integers(4, 10))
        if not passage[k].isalpha() or len(passage[k]) < 3:
            continue
        other = candidates[int(rng.integers(0, len(candidates)))]
        if other.lower() == passage[k].lower():
            continue
        answer = int(rng.integers(1, 3))
        choices = [passage[k], other] if answer == 1 else [other, passage[k]]
        sentence = " ".join([*passage[:k], "_", *passage[k + 1:]])
        rows.append(f'{len(rows) - 1},"{sentence}",{choices[0]},{choices[1]},{answer}')
    return ("\n".join(rows) + "\n").encode()


def write_multiple_choice(tasks: Sequence[tuple[str, Sequence[str], Sequence[int]]]) -> bytes:
    """llama.cpp's binary multiple-choice layout: (question, answers, labels) per task, an empty
    multiple-answer block each."""

    def string(s: str) -> bytes:
        raw = s.encode()
        return struct.pack("<I", len(raw)) + raw

    bodies = []
    for question, answers, labels in tasks:
        body = string(question) + struct.pack("<I", len(answers))
        body += b"".join(string(a) for a in answers)
        body += struct.pack(f"<{len(labels)}i", *labels) + struct.pack("<I", 0)
        bodies.append(body)
    offsets, at = [], 4 + 4 * len(bodies)
    for body in bodies:
        offsets.append(at)
        at += len(body)
    return struct.pack(f"<I{len(offsets)}I", len(offsets), *offsets) + b"".join(bodies)


def multiple_choice(words: list[str], rng: np.random.Generator, n: int) -> bytes:
    tasks = []
    for _ in range(n):
        passage = _window(words, rng, 18)
        n_answers = int(rng.integers(2, 5))
        answers = [" ".join(_window(words, rng, 6)) for _ in range(n_answers - 1)]
        gold = int(rng.integers(0, n_answers))
        answers.insert(gold, " ".join(passage[12:]))
        tasks.append((" ".join(passage[:12]), answers, [int(i == gold) for i in range(n_answers)]))
    return write_multiple_choice(tasks)


def build() -> dict[str, bytes]:
    """The three files' contents, by file name."""
    words = _words(data_path("eval.txt").read_text(encoding="utf-8"))
    rng = np.random.default_rng(SEED)
    return {"hellaswag.txt": hellaswag(words, rng, N_HELLASWAG),
            "winogrande.csv": winogrande(words, rng, N_WINOGRANDE),
            "multiple-choice.bin": multiple_choice(words, rng, N_MULTIPLE_CHOICE)}


def task_path(name: str) -> Path:
    """A shipped demo task file: ``hellaswag.txt``, ``winogrande.csv``, ``multiple-choice.bin``."""
    return data_path(name)


def main(argv: Sequence[str] | None = None) -> int:
    folder = Path(argv[0]) if argv else data_path("eval.txt").parent
    for name, content in build().items():
        (folder / name).write_bytes(content)
        print(folder / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def task_specs(settings: Settings) -> dict[str, TaskSpec]:
    """The run's task sets by name: the ``tasks`` setting, or with the built-in demo model (no
    ``model`` set) and no ``tasks``, the demo's three task files."""
    if settings.tasks or settings.model is not None:
        return dict(settings.tasks)
    return {name.split(".")[0]: TaskSpec(task_path(name)) for name in FILES}
