"""The documentation: every code example of the README and the site is run or validated, and the
generated reference sections list everything the code defines.

Examples by kind (a fenced block's language):

- ``toml`` / ``yaml``: parse; a ``[tool.quantcheck]`` table (a TOML block without a table header
  is one) or a ``quantcheck.yaml`` passes the plugin's own validation (``config.merge``); a
  workflow's ``uses:`` of this repository's action gives only inputs ``action.yml`` declares, and
  the command lines in it parse.
- ``sh`` / ``console``: each command line goes through the real parser: ``quantcheck`` through the
  command's argparse parser, ``pytest`` through pytest's with the plugin configured (its settings
  flags validated as a run validates them), ``make`` must name a Makefile target, ``pip install``
  extras must exist, named scripts and modules must exist.
- ``python``: compiles and its imports resolve; a block defining ``test_`` functions runs under
  pytest on the fake backend with the page's latest settings (paths replaced by fake files); a
  block without tests runs for real on the demo model in the ``real`` tier.
- ``text`` (output samples) and ``mermaid``-like blocks are not code.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pytest_quantcheck import checks
from pytest_quantcheck.config import KEYS, Layer, merge

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])
WORKFLOWS = sorted((ROOT / "examples" / "github-actions").glob("*.yml"))
ACTION_USES = re.compile(r"^(OWNER/pytest-quantcheck@\S+|\./?)$")  # this repository's action
NOT_CODE = {"text", "console-output"}


def _load_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "scripts" / "docs_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


# ---- the blocks ----------------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)"
                   r"^(?P=indent)(?P=fence)[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    settings: dict[str, Any]  # the page's [tool.quantcheck] so far (its blocks in order)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _quantcheck_table(lang: str, code: str) -> dict[str, Any] | None:
    """The settings a toml or yaml block gives, if it gives any."""
    if lang == "toml":
        data = tomllib.loads(code)
        if "tool" in data:
            table = data["tool"].get("quantcheck")
            return dict(table) if isinstance(table, dict) else None
        if data and not any(isinstance(v, dict) and k not in KEYS for k, v in data.items()):
            return data  # a fragment of [tool.quantcheck]
        return None
    data = yaml.safe_load(code)
    if isinstance(data, dict) and data and set(data) <= set(KEYS):
        return data
    return None


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found: list[Block] = []
    settings: dict[str, Any] = {}
    for match in FENCE.finditer(text):
        indent = len(match.group("indent"))
        code = "".join(line[indent:] + "\n" for line in match.group("body").splitlines())
        lang = (match.group("info").split() or [""])[0]
        line = text.count("\n", 0, match.start()) + 1
        if lang in ("toml", "yaml"):
            try:
                table = _quantcheck_table(lang, code)
            except Exception:  # reported by the test of this block
                table = None
            if table:
                settings = {**settings, **table}
        found.append(Block(page, line, lang, code, dict(settings)))
    return found


BLOCKS = [block for page in PAGES for block in blocks_of(page)]


def _of(*langs: str) -> list[Any]:
    return [pytest.param(b, id=b.id) for b in BLOCKS if b.lang in langs]


def test_every_block_says_its_language() -> None:
    bare = [b.id for b in BLOCKS if not b.lang]
    assert not bare, f"fenced blocks without a language (use text for output): {bare}"
    unknown = {b.lang for b in BLOCKS} - {"toml", "yaml", "sh", "console", "python", *NOT_CODE}
    assert not unknown, f"blocks this test does not know how to check: {unknown}"


# ---- settings ------------------------------------------------------------------------------------


def _validate_settings(table: dict[str, Any], source: str) -> None:
    merge([Layer(source, ROOT, table)])  # raises ConfigError, naming the key and the fix


@pytest.mark.parametrize("block", _of("toml"))
def test_toml_blocks_parse_and_their_settings_validate(block: Block) -> None:
    table = _quantcheck_table("toml", block.code)  # a TOML error fails here
    if table is not None:
        _validate_settings(table, block.id)


@pytest.mark.parametrize("block", _of("yaml"))
def test_yaml_blocks_parse_and_validate(block: Block, pytester: pytest.Pytester) -> None:
    data = yaml.safe_load(block.code)
    assert isinstance(data, dict), block.id
    if "jobs" in data:
        check_workflow(data, block.id, pytester)
    else:
        table = _quantcheck_table("yaml", block.code)
        assert table is not None, f"{block.id}: neither a workflow nor quantcheck.yaml settings"
        _validate_settings(table, block.id)


# ---- command lines -------------------------------------------------------------------------------


def command_lines(block: Block) -> list[str]:
    """The commands of an ``sh`` block (every line) or a ``console`` one (lines after ``$ ``)."""
    lines = []
    for raw in block.code.splitlines():
        if block.lang == "console":
            if not raw.startswith("$ "):
                continue
            raw = raw[2:]
        if raw.strip() and not raw.lstrip().startswith("#"):
            lines.append(raw)
    return lines


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.M))


def _extras() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["project"]["optional-dependencies"])


def check_command(line: str, where: str, pytester: pytest.Pytester) -> None:
    """Run ``line`` through the parser of the program it calls; fail naming the line."""
    words = shlex.split(line, comments=True)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # CMAKE_ARGS=... pip install
        words = words[1:]
    assert words, f"{where}: empty command {line!r}"
    program, args = words[0], words[1:]
    if program in ("python", "python3") and args[:2] == ["-m", "pytest"]:
        program, args = "pytest", args[2:]
    if program == "quantcheck":
        from pytest_quantcheck.cli import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: quantcheck does not accept {line!r}")
    elif program == "pytest":
        check_pytest_args(args, where, pytester)
    elif program == "make":
        assert set(args) <= _makefile_targets(), f"{where}: no such make target in {line!r}"
    elif program in ("pip", "python") and "install" in args:
        for spec in args:
            extras = re.match(r"pytest-quantcheck\[([\w,]+)\]", spec)
            if extras:
                assert set(extras.group(1).split(",")) <= _extras(), f"{where}: {spec}"
    elif program in ("python", "python3"):
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]) is not None, f"{where}: no module {args[1]}"
        else:
            assert (ROOT / args[0]).is_file(), f"{where}: no script {args[0]}"
    elif program.endswith(".sh"):
        assert (ROOT / program).is_file(), f"{where}: no script {program}"
    elif program == "git":
        assert args and args[0] in ("add", "commit", "clone"), f"{where}: {line!r}"
    else:
        pytest.fail(f"{where}: a command this test cannot check: {line!r}")


def check_pytest_args(args: list[str], where: str, pytester: pytest.Pytester) -> None:
    """pytest's own parser with the plugin loaded, then the plugin's configure: every flag
    exists and every settings value passes the plugin's validation."""
    from pytest_quantcheck.config import ConfigError

    for arg in args:  # files named on the line exist, so the plugin's "is it a file" checks pass
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        for part in value.split(","):
            path = pytester.path / part.split("=")[-1]
            if path.suffix in (".txt", ".gguf", ".csv", ".bin", ".dat"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
    try:
        pytester.parseconfigure(*args)
    except (pytest.UsageError, ConfigError) as exc:
        pytest.fail(f"{where}: pytest {' '.join(args)}: {exc}")
    except SystemExit:
        pytest.fail(f"{where}: pytest does not accept {' '.join(args)}")


@pytest.mark.parametrize("block", _of("sh", "console"))
def test_command_lines_parse(block: Block, pytester: pytest.Pytester) -> None:
    lines = command_lines(block)
    assert lines, f"{block.id}: no command in the block"
    for line in lines:
        check_command(line, block.id, pytester)


# ---- the GitHub Action and the workflows that use it ---------------------------------------------


def _action() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "action.yml").read_text())
    return data


def check_workflow(workflow: dict[str, Any], where: str, pytester: pytest.Pytester) -> None:
    inputs = set(_action()["inputs"])
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            given = {k: str(v).replace("${{ matrix.shard }}", "1") for k, v in step.get("with", {}).items()}
            if ACTION_USES.match(step.get("uses", "")):
                assert set(given) <= inputs, f"{where}: unknown inputs {set(given) - inputs}"
                if given.get("run-gate", "true") == "true":
                    check_pytest_args(shlex.split(given.get("pytest-args", "--quant-baseline")),
                                      where, pytester)
            for line in str(step.get("run", "")).replace("\n", " ").split("&&"):
                if line.strip().startswith("quantcheck"):
                    check_command(line, where, pytester)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_example_workflows_use_the_action_with_inputs_it_has(path: Path,
                                                             pytester: pytest.Pytester) -> None:
    workflow = yaml.safe_load(path.read_text())
    uses = [step.get("uses", "") for job in workflow["jobs"].values() for step in job["steps"]]
    assert any(ACTION_USES.match(u) for u in uses), f"{path.name} does not use the action"
    check_workflow(workflow, path.name, pytester)


def test_the_action_is_composite_and_uses_only_its_inputs() -> None:
    action = _action()
    assert action["runs"]["using"] == "composite"
    text = (ROOT / "action.yml").read_text()
    used = set(re.findall(r"inputs\.([\w-]+)", text))
    assert used <= set(action["inputs"]), used - set(action["inputs"])
    assert set(action["inputs"]) <= used, "inputs the action never reads"
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert step.get("shell") == "bash", step.get("name")
            # inputs reach scripts through env, never pasted into the script (injection)
            assert "${{" not in step["run"], step.get("name")


# ---- python --------------------------------------------------------------------------------------


def _defines_tests(code: str) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
               for node in ast.parse(code).body)


@pytest.mark.parametrize("block", _of("python"))
def test_python_blocks_compile_and_their_imports_resolve(block: Block) -> None:
    tree = ast.parse(block.code, filename=block.id)
    imports = ast.Module(body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)],
                         type_ignores=[])
    exec(compile(imports, block.id, "exec"), {})


def _fake_texts(project: Path, settings: dict[str, Any]) -> Any:
    from fakes import word_text

    texts = settings.get("eval_text")
    if isinstance(texts, dict):
        out = {}
        for i, name in enumerate(texts):
            (project / f"{name}.txt").write_text(word_text(1200, seed=7 + i) + "\n")
            out[name] = f"{name}.txt"
        return out
    (project / "eval.txt").write_text(word_text(1200) + "\n")
    return "eval.txt"


def _fake_tasks(project: Path, tasks: dict[str, Any]) -> dict[str, Any]:
    """Small task files in each set's layout, of passages the fake model's context holds."""
    import numpy as np

    from pytest_quantcheck.demo import task_sets as demo_tasks

    from fakes import word_text

    words = word_text(3000, seed=3).split()
    out = {}
    for name, spec in tasks.items():
        mode = spec.get("mode") if isinstance(spec, dict) else None
        mode = mode or next((m for m in ("hellaswag", "winogrande") if m in name), "multiple-choice")
        make = {"hellaswag": demo_tasks.hellaswag, "winogrande": demo_tasks.winogrande,
                "multiple-choice": demo_tasks.multiple_choice}[mode]
        path = project / f"{name}.tasks"
        path.write_bytes(make(words, np.random.default_rng(5), 20))
        out[name] = {"file": path.name, "mode": mode}
    return out


def _fake_variant(project: Path, entry: Any) -> Any:
    from fakes import write_fake_gguf

    if isinstance(entry, dict):  # a recipe: its types kept, tensor patterns are the real model's
        return {k: v for k, v in entry.items()
                if k in ("name", "type", "token_embedding_type", "output_tensor_type")}
    if str(entry).endswith(".gguf"):
        path = project / entry
        path.parent.mkdir(parents=True, exist_ok=True)
        write_fake_gguf(path, noise=0.05)
    return entry


HARNESS = {"n_ctx": 128, "n_batch": 512, "chunks": 8, "sequential": False,
           "task_limit": 0, "bench_repetitions": 2, "bench_prompt": 16, "bench_gen": 8}
DEFAULT_TASKS = {"hellaswag": "", "winogrande": "", "multiple-choice": ""}


def fake_project(pytester: pytest.Pytester, settings: dict[str, Any]) -> None:
    """The page's settings on the fake backend: its model, texts, task files and variant files
    replaced by small fake ones, the sizes cut down so the run takes seconds."""
    from fakes import write_fake_gguf

    project = pytester.path
    write_fake_gguf(project / "base.gguf")
    values = {k: v for k, v in settings.items() if k not in ("imatrix", "baseline_dir", "model")}
    values["model"] = "base.gguf"
    values["eval_text"] = _fake_texts(project, settings)
    values["tasks"] = _fake_tasks(project, settings.get("tasks", DEFAULT_TASKS))
    values["variants"] = [_fake_variant(project, v) for v in settings.get("variants", ["Q8_0", "Q4_K_M"])]
    if str(values.get("reference", "")).endswith(".gguf"):
        _fake_variant(project, values["reference"])
    values.update(HARNESS)
    (project / "quantcheck.yaml").write_text(yaml.safe_dump(values))
    pytester.makeconftest(
        "from fakes import FakeBackend\n\n"
        "def pytest_quantcheck_make_backend(config):\n"
        "    return FakeBackend()\n")


CHECK_VERDICT = re.compile(r" (FAIL|INCONCLUSIVE) for ")


@pytest.mark.parametrize("block", [p for p in _of("python")
                                   if _defines_tests(p.values[0].code)])
def test_python_test_examples_run_on_the_fake_backend(block: Block, pytester: pytest.Pytester) -> None:
    fake_project(pytester, block.settings)
    pytester.makepyfile(test_example=block.code)
    recorder = pytester.inline_run("-p", "no:cacheprovider")
    assert recorder.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), (
        f"{block.id}: pytest exited with {recorder.ret!r} (its output is above)")
    assert not recorder.getfailedcollections(), f"{block.id}: {recorder.getfailedcollections()}"
    passed, skipped, failed = recorder.listoutcomes()
    assert passed or skipped or failed, f"{block.id}: no test ran"
    for report in failed:  # a gate or an assert may fail on the fake model; nothing else may
        text = report.longreprtext
        crash = getattr(report.longrepr, "reprcrash", None)
        asserted = crash is not None and crash.message.startswith("AssertionError")
        assert CHECK_VERDICT.search(text) or asserted, (
            f"{block.id}: {report.nodeid} failed:\n{text[-2000:]}")


@pytest.mark.real
@pytest.mark.parametrize("block", [p for p in _of("python")
                                   if not _defines_tests(p.values[0].code)])
def test_python_examples_run_on_the_demo_model(block: Block, real_cache: Path, tmp_path: Path) -> None:
    env = {**os.environ, "QUANTCHECK_CACHE_DIR": str(real_cache)}
    result = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{block.id}:\n{result.stderr[-3000:]}"


# ---- the reference sections list everything the code defines -------------------------------------


def rendered(page: str) -> str:
    return str(reference.render((DOCS / page).read_text(), page))


def test_marker_reference_lists_every_check_and_helper() -> None:
    text = rendered("reference/markers.md")
    assert checks.marker_table() in text + "\n"  # python -m pytest_quantcheck.checks prints it
    for marker, kind in checks.REGISTRY.items():
        assert f"`{kind.signature().replace('|', chr(92) + '|')}`" in text, marker
        assert f"`assert_{marker}(model, ...)`" in text, marker
    for fixture in reference.fixtures():
        assert f"`{fixture}`" in text, fixture
    assert set(reference.fixtures()) >= {"quant_model", "quant_reference", "quantize"}


def test_settings_reference_lists_every_key_and_flag() -> None:
    text = rendered("reference/settings.md")
    for key in KEYS:
        assert f"### `{key}` {{#{key}}}" in text, key
    for option in reference.pytest_options().values():
        assert f"`{option.flag}" in text, option.flag
    flags = {o.flag for o in reference.pytest_options().values()}
    assert {"--quant-baseline", "--quant-update-baseline", "--quant-json"} <= flags


def test_cli_reference_lists_every_subcommand_and_option() -> None:
    text = rendered("reference/cli.md")
    subcommands = reference.subcommands()
    assert {"quantize", "perplexity", "kld", "bench", "merge", "demo-model"} <= set(subcommands)
    for name, (_help, parser) in subcommands.items():
        assert f"### `quantcheck {name}` {{#{name}}}" in text, name
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text.split(f"{{#{name}}}")[1], (name, flag)


def test_action_inputs_are_documented() -> None:
    text = rendered("guides/github-actions.md")
    for name in _action()["inputs"]:
        assert f"| `{name}` |" in text, name


def test_an_unknown_reference_section_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown reference section 'nope'; known: markers"):
        reference.render("<!-- reference: nope -->\n", "page.md")


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: Any) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in pages(v)]
        return [p for item in nav for p in pages(item)]

    listed = pages(config["nav"])
    on_disk = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(listed) == on_disk


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200
    assert lines[:5] == [
        "```sh",
        "make demo    # main job: the demo gate suite (examples/demo) on the built-in model, vs its baseline",
        "make test    # the test suite (lint, type check, unit and real-model tests)",
        "```",
        "# pytest-quantcheck",
    ]
    assert "## Install into your own project" in lines


def test_readme_links_point_at_files_and_anchors_that_exist() -> None:
    """The README is read on a forge, not built by MkDocs: its links are checked here."""
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith("http"):
            continue
        path, _, anchor = target.partition("#")
        page = ROOT / (path or "README.md")  # "#anchor": a section of the README itself
        assert page.is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.+?)(?: \{#[\w-]+\})?$", page.read_text(), re.M)
            slugs = {re.sub(r"[^\w\s-]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, target
