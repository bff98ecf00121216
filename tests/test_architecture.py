"""The house's shape, read from the source: no import circle, and the layers of the design's
table importing only downward. Imports inside functions count as much as those at the top (a
function-local import that closes a loop is still a loop); those under ``TYPE_CHECKING`` too."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "pytest_quantcheck"

# Floors, lowest first (DESIGN.md's layer table): a module may import its own floor and those
# below. A module not listed fails the test: every new module is placed on purpose.
FLOORS: list[tuple[str, set[str]]] = [
    ("leaf", {"", "errors", "gguf_types"}),
    ("settings", {"config"}),
    ("pure", {"cache", "gpu", "progress", "stats", "sequential", "machine", "gguf_file",
              "gguf_check", "metrics", "metrics.kld", "metrics.logprobs", "metrics.memory",
              "metrics.perplexity", "metrics.task_answers", "metrics.throughput", "tasks.mt19937",
              "tasks.files", "demo.vocab", "results"}),
    ("backends", {"backends", "backends.child", "backends.llamacpp", "backends.memory",
                  "backends.probe"}),
    ("core", {"variants", "tensor_mix", "imatrix", "evaluation", "refstore", "engine", "bench",
              "tasks.scoring", "demo.model", "demo.task_sets", "baseline", "blame",
              "recipe_search"}),
    ("checks", {"checks", "checks.accuracy", "checks.comparison", "checks.files",
                "checks.outcome", "checks.quality", "checks.registry", "checks.speed"}),
    ("run", {"models", "session", "assertions", "exchange", "report", "run", "run.comparands",
             "run.decider", "run.outputs", "run.store", "run.timings", "run.workers"}),
    ("entry points", {"plugin", "hookspec", "xdist_hooks", "cli", "checks.__main__"}),
]
# The one import from a lower floor to a higher one the design allows (none today).
UPWARD_ALLOWED: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC / PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported dotted name lands in ("" for the package itself)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    inner = name[len(PACKAGE) + 1:]
    while inner and inner not in modules:
        inner = inner.rpartition(".")[0]
    return inner


def _imports(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The project modules a parsed module imports, anywhere in its body."""
    targets: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {_target(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                targets.add(_target(f"{node.module}.{alias.name}", modules))
    return {t for t in targets if t is not None}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = _modules()
    return {module: _imports(ast.parse(path.read_text(), str(path)), modules) - {module}
            for module, path in modules.items()}


def _is_own_child(module: str, imported: str) -> bool:
    """A package's ``__init__`` naming one of its own modules: the package and its modules are
    one unit, and the modules import the package's protocol, so this edge is no circle between
    peers (the backends package picks its llama.cpp backend this way, lazily)."""
    return imported.startswith(module + ".") if module else False


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_there_is_no_import_circle() -> None:
    graph = {m: {t for t in targets if not _is_own_child(m, t)}
             for m, targets in import_graph().items()}
    assert _cycles(graph) == []


def test_every_module_has_a_floor() -> None:
    placed = [m for _floor, modules in FLOORS for m in modules]
    assert len(placed) == len(set(placed)), "a module placed on two floors"
    assert sorted(set(import_graph()) - set(placed)) == [], "place the new module in FLOORS"


def test_layers_import_only_downward() -> None:
    floor_of = {m: i for i, (_name, modules) in enumerate(FLOORS) for m in modules}
    upward = sorted((m, t) for m, targets in import_graph().items() for t in targets
                    if floor_of[t] > floor_of[m] and (m, t) not in UPWARD_ALLOWED)
    assert upward == [], [f"{m} ({FLOORS[floor_of[m]][0]}) imports {t}"
                          f" ({FLOORS[floor_of[t]][0]})" for m, t in upward]


def test_the_graph_sees_imports_inside_functions() -> None:
    """A loop closed inside a function is still caught (checks/accuracy.py once did this)."""
    tree = ast.parse("def conflict():\n    from pytest_quantcheck.models import task_specs\n"
                     "    from pytest_quantcheck import baseline\n")
    assert _imports(tree, _modules()) == {"models", "baseline"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_settings_name_the_fingerprints_fields() -> None:
    """config owns the key lists (fingerprint_ignore is checked against this one) without
    importing machine, and machine tells machines apart by its dataclass's fields: the two
    must agree."""
    from pytest_quantcheck import machine
    from pytest_quantcheck.config import FINGERPRINT_FIELDS
    from pytest_quantcheck.machine import Fingerprint

    names = tuple(f.name for f in dataclasses.fields(Fingerprint))
    assert names == FINGERPRINT_FIELDS == machine.FIELDS
