from __future__ import annotations

import subprocess
import sys

import pytest


def test_loading_the_plugin_does_not_import_llama_cpp() -> None:
    code = (
        "import sys, pytest_quantcheck.plugin, pytest_quantcheck.engine, pytest_quantcheck.cli;"
        "print('llama_cpp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plugin_is_registered_and_reports_its_cache(pytester: pytest.Pytester) -> None:
    # one mode: about the entry point in a fresh interpreter; every run_both_ways test's -n 2
    # run loads the plugin in its workers the same way
    pytester.makepyfile("def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["quantcheck: *, cache *"])
    result.assert_outcomes(passed=1)


def test_loading_the_plugin_leaves_scipy_for_when_a_check_runs() -> None:
    # every pytest run in the environment loads the plugin; scipy.stats costs about a second
    code = "import sys, pytest_quantcheck.plugin; print('scipy.stats' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("with_xdist", [True, False])
def test_xdist_hooks_are_registered_only_with_xdist(pytester: pytest.Pytester,
                                                     with_xdist: bool) -> None:
    pytester.makepyfile(
        "def test_hooks(pytestconfig):\n"
        "    hooks = pytestconfig.pluginmanager.get_plugin('quantcheck-xdist')\n"
        "    print('xdist hooks:', type(hooks).__name__)\n"
    )
    flags = () if with_xdist else ("-p", "no:xdist")
    result = pytester.runpytest("-p", "no:cacheprovider", "-s", *flags)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*xdist hooks: {'XdistHooks' if with_xdist else 'NoneType'}*"])
