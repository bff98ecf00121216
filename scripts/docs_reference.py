"""The documentation site's reference sections, generated from the code at every build.

A page in ``docs/`` asks for a section with a line ``<!-- reference: NAME -->``; MkDocs runs this
file as a hook (``hooks:`` in ``mkdocs.yml``) and replaces the line with :data:`SECTIONS` [NAME]'s
Markdown. The sources are the ones the plugin itself runs on, so a page cannot drift from them:
the check registry (markers and assertion helpers), ``config.KEYS`` and the ``Settings``
defaults with the help texts ``plugin.pytest_addoption`` registers (settings and pytest flags),
the plugin's fixtures, and the ``quantcheck`` command's argparse parser.
``tests/test_docs.py`` checks that the sections list every marker, setting, flag and subcommand.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"^<!-- reference: ([a-z-]+) -->$", re.M)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, reST-style ``code`` as Markdown code."""
    return text.replace("``", "`").replace("|", "\\|").replace("\n", " ")


# ---- pytest options, as plugin.pytest_addoption registers them --------------------------------


@dataclasses.dataclass
class Option:
    """One ``--quant-*`` flag (and its ini name, for settings)."""

    flag: str
    dest: str
    help: str
    metavar: str | None
    ini: str | None = None


class _Recorder:
    """Stands in for pytest's parser and option group: records what the plugin registers."""

    def __init__(self) -> None:
        self.options: dict[str, Option] = {}
        self.ini: dict[str, str] = {}

    def getgroup(self, *args: Any, **kwargs: Any) -> _Recorder:
        return self

    def addoption(self, flag: str, *, dest: str, help: str, metavar: str | None = None,
                  **kwargs: Any) -> None:
        self.options[dest] = Option(flag, dest, help, metavar)

    def addini(self, name: str, help: str, **kwargs: Any) -> None:
        self.ini[name] = help


def pytest_options() -> dict[str, Option]:
    """Every flag the plugin adds, by its dest (``quant_<key>`` for settings)."""
    from pytest_quantcheck import plugin

    recorder = _Recorder()
    plugin.pytest_addoption(recorder)  # type: ignore[arg-type]
    for dest, option in recorder.options.items():
        option.ini = dest if dest in recorder.ini else None
    return recorder.options


def _setting_help() -> dict[str, str]:
    """Each setting's help text (ini options cover every key; flags all but ``baseline_dir``)."""
    from pytest_quantcheck import plugin

    recorder = _Recorder()
    plugin.pytest_addoption(recorder)  # type: ignore[arg-type]
    return {name.removeprefix("quant_"): text for name, text in recorder.ini.items()}


def _default(value: Any) -> str:
    if isinstance(value, tuple) and not value:
        return "`[]`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, Path):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if value is None or value == {}:
        return "none"
    return f"`{value}`"


def settings_section() -> str:
    """A heading per setting key, in ``config.KEYS`` order: its default, flag, ini name, help."""
    from pytest_quantcheck.config import KEYS, Settings

    defaults = Settings()
    helps = _setting_help()
    options = pytest_options()
    out: list[str] = []
    for key in KEYS:
        option = options.get(f"quant_{key}")
        flag = f"`{option.flag}`" if option else "`--quant-baseline=DIR`"
        text = _cell(helps[key]).rstrip(".")
        if "default" not in text:  # help texts state their defaults; these few show the field's
            text += f" (default: {_default(getattr(defaults, key))})"
        out += [f"### `{key}` {{#{key}}}", "", f"{text[0].upper()}{text[1:]}.", "",
                f"Command line: {flag} · ini file: `quant_{key}`", ""]
    return "\n".join(out)


def flags_section() -> str:
    """The flags that are not settings: what a run does rather than what it measures."""
    from pytest_quantcheck.config import KEYS

    settings = {f"quant_{key}" for key in KEYS}
    lines = ["| flag | what it does |", "|---|---|"]
    for dest, option in pytest_options().items():
        if dest in settings:
            continue
        shown = option.flag if option.metavar is None else f"{option.flag}={option.metavar}"
        if dest == "quant_baseline":
            shown = f"{option.flag}[={option.metavar}]"
        lines.append(f"| `{shown}` | {_cell(option.help)} |")
    return "\n".join(lines) + "\n"


# ---- markers, helpers, fixtures ----------------------------------------------------------------


def markers_section() -> str:
    """The registry's marker table (the same function ``python -m pytest_quantcheck.checks``
    prints)."""
    from pytest_quantcheck import checks

    return checks.marker_table()


def helpers_section() -> str:
    """One line a registered check: its assertion helper and the marker it mirrors."""
    from pytest_quantcheck import assertions, checks

    lines = ["| helper | the marker it mirrors |", "|---|---|"]
    for marker, kind in checks.REGISTRY.items():
        helper = getattr(assertions, f"assert_{marker}")
        lines.append(f"| `{helper.__name__}(model, ...)` | `{_cell(kind.signature())}` |")
    return "\n".join(lines) + "\n"


def fixtures() -> dict[str, str]:
    """The plugin's fixtures by name, with their docstrings."""
    from pytest_quantcheck import plugin

    found = {}
    for name, obj in vars(plugin).items():
        # pytest >= 8.4 wraps a fixture in FixtureFunctionDefinition; older ones mark the function
        if type(obj).__name__ == "FixtureFunctionDefinition" or hasattr(obj, "_pytestfixturefunction"):
            found[name] = (obj.__doc__ or "").strip()
    return found


def fixtures_section() -> str:
    lines = ["| fixture | what it gives |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(doc)} |" for name, doc in fixtures().items()]
    return "\n".join(lines) + "\n"


# ---- the quantcheck command ----------------------------------------------------------------------


def subcommands() -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """The ``quantcheck`` subcommands, in the order ``--help`` lists them: help and parser."""
    from pytest_quantcheck.cli import build_parser

    # argparse has no public way to list subcommands; these attributes are stable since 3.2
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return {name: (helps[name], parser) for name, parser in action.choices.items()}


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        name = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        return f"`{name}`" + (" ..." if action.nargs in ("+", "*") else "")
    value = ""
    if action.nargs != 0:
        value = " " + (action.metavar if isinstance(action.metavar, str) else action.dest.upper())
    return ", ".join(f"`{flag}{value}`" for flag in action.option_strings)


def cli_section() -> str:
    """Per subcommand: its help, usage line and arguments, as argparse knows them."""
    out: list[str] = []
    for name, (help_text, sub) in subcommands().items():
        sub.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        usage = sub.format_usage().removeprefix("usage: ").strip()
        out += [f"### `quantcheck {name}` {{#{name}}}", "", f"{_cell(help_text)}.", "",
                "```text", usage, "```", "", "| argument | meaning |", "|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            required = " (required)" if action.required and action.option_strings else ""
            out.append(f"| {_argument(action)} | {_cell(action.help or '')}{required} |")
        out.append("")
    return "\n".join(out)


# ---- the GitHub Action ---------------------------------------------------------------------------


ROOT = Path(__file__).resolve().parent.parent


def action_inputs() -> dict[str, dict[str, str]]:
    """``action.yml``'s inputs: name to description and default."""
    import yaml

    action = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
    return {name: {"description": str(spec.get("description", "")),
                   "default": str(spec.get("default", ""))}
            for name, spec in action["inputs"].items()}


def action_inputs_section() -> str:
    lines = ["| input | default | meaning |", "|---|---|---|"]
    for name, spec in action_inputs().items():
        default = f"`{spec['default']}`" if spec["default"] else "(empty)"
        lines.append(f"| `{name}` | {_cell(default)} | {_cell(spec['description'])} |")
    return "\n".join(lines) + "\n"


SECTIONS: dict[str, Callable[[], str]] = {
    "markers": markers_section,
    "helpers": helpers_section,
    "fixtures": fixtures_section,
    "settings": settings_section,
    "flags": flags_section,
    "cli": cli_section,
    "action-inputs": action_inputs_section,
}


def render(markdown: str, where: str = "page") -> str:
    """``markdown`` with each ``<!-- reference: NAME -->`` line replaced by its section."""

    def section(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in SECTIONS:
            raise ValueError(f"{where}: unknown reference section {name!r}; known:"
                             f" {', '.join(SECTIONS)}")
        return SECTIONS[name]().rstrip("\n")

    return PLACEHOLDER.sub(section, markdown)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """MkDocs hook: fill the page's reference sections."""
    from mkdocs.exceptions import PluginError

    try:
        return render(markdown, page.file.src_uri)
    except ValueError as exc:  # a build error in one line, not a traceback
        raise PluginError(str(exc)) from None
