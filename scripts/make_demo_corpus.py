"""Regenerate the demo model's shipped text from the docstrings of Python's standard library.

The text ships in ``src/pytest_quantcheck/demo/data``; this script records where it came from
(CPython's own documentation strings, under the PSF license) and how it was cut. Training and
evaluation text come from disjoint modules, so the evaluation text is truly held out.

    python scripts/make_demo_corpus.py
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sys
import sysconfig
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "pytest_quantcheck" / "demo" / "data"
SKIP = {"test", "idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo", "ensurepip"}
TRAIN_BYTES = 360_000
EVAL_BYTES = 90_000


def docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) >= 240 and doc.isascii():
                found.append(inspect.cleandoc(doc))
    return found


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    train: list[str] = []
    held_out: list[str] = []
    sizes = [0, 0]
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIP & set(rel.parts):
            continue
        # Split by module, not by docstring: a held-out module shares no text with training.
        is_eval = int(hashlib.sha256(str(rel).encode()).hexdigest(), 16) % 5 == 0
        target, idx = (held_out, 1) if is_eval else (train, 0)
        limit = EVAL_BYTES if is_eval else TRAIN_BYTES
        for doc in docstrings(path):
            if sizes[idx] + len(doc) > limit:
                break
            target.append(doc)
            sizes[idx] += len(doc) + 2
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "train.txt").write_text("\n\n".join(train) + "\n")
    (OUT / "eval.txt").write_text("\n\n".join(held_out) + "\n")
    print(f"Python {sys.version.split()[0]}: train {sizes[0]} bytes, eval {sizes[1]} bytes")


if __name__ == "__main__":
    main()
