"""Options a project pins in its ini file (pytest_codegen/ini.py): the command line overrides
them, and a bad value is refused, naming its ini key, as the command line's would be."""

from __future__ import annotations

import json

import pytest

SUITE = '''
import pytest
from pytest_codegen import Problem, TestCase

PROBLEMS = [Problem(
    id="toy/add", benchmark="toy", entry_point="add", prompt="add(a, b)",
    tests=(TestCase("t0", "assert add(1, 2) == 3", visible=True),),
    canonical_solution="def add(a, b):\\n    return a + b\\n",
)]


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_toy(problem, solution):
    solution.verify()
'''


def settings_of(pytester: pytest.Pytester, *args: str):
    """The run settings the plugin would use, and the config (options resolved)."""
    from pytest_codegen.ini import pin_from_ini
    from pytest_codegen.plugin import settings_from_options

    config = pytester.parseconfig(*args)
    pin_from_ini(config)
    return settings_from_options(config), config


def test_ini_values_apply_and_the_command_line_overrides_them(pytester: pytest.Pytester) -> None:
    pytester.makeini("""
        [pytest]
        codegen_pipeline = reference
        codegen_model = my-coder
        codegen_model_server = http://models.internal:8080/v1
        codegen_feedback = hidden
        codegen_exec_timeout = 2.5
        codegen_exec_memory = 512
        codegen_cache = cache-dir
        codegen_results = out/results.jsonl
    """)
    settings, config = settings_of(pytester)
    assert (settings.pipeline, settings.model, settings.model_server, settings.feedback) == (
        "reference", "my-coder", "http://models.internal:8080/v1", "hidden")
    assert (settings.exec_timeout, settings.exec_memory_mb) == (2.5, 512)
    # Paths are relative to the ini file's directory.
    assert settings.cache_dir == str(pytester.path / "cache-dir")
    assert config.getoption("codegen_results") == str(pytester.path / "out" / "results.jsonl")
    settings, config = settings_of(
        pytester, "--pipeline=null", "--model=other", "--model-server=in-process", "--feedback=visible",
        "--exec-timeout=10", "--exec-memory=1024", "--codegen-cache=here", "--codegen-results=r.jsonl")
    assert (settings.pipeline, settings.model, settings.model_server, settings.feedback) == (
        "null", "other", "in-process", "visible")
    assert (settings.exec_timeout, settings.exec_memory_mb, settings.cache_dir) == (10.0, 1024, "here")
    assert config.getoption("codegen_results") == "r.jsonl"
    settings, _ = settings_of(pytester, "--no-codegen-cache")
    assert settings.cache_dir is None


def test_without_ini_values_the_defaults_apply(pytester: pytest.Pytester) -> None:
    settings, config = settings_of(pytester)
    assert (settings.pipeline, settings.model_server, settings.feedback) == ("single", "embedded", "visible")
    assert (settings.exec_timeout, settings.exec_memory_mb) == (10.0, 1024)
    assert settings.cache_dir == str(config.rootpath / ".codegen-cache")
    assert config.getoption("codegen_results") is None


def test_the_cache_can_be_pinned_off(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ncodegen_cache = off\n")
    assert settings_of(pytester)[0].cache_dir is None
    assert settings_of(pytester, "--codegen-cache=c")[0].cache_dir == "c"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("codegen_exec_timeout = abc", ": invalid float value: 'abc'"),
        ("codegen_exec_timeout = 0", " must be a number of seconds greater than 0, not 0"),
        ("codegen_exec_memory = 1.5", ": invalid int value: '1.5'"),
        ("codegen_exec_memory = -3", " must be a number of MB greater than 0, not -3"),
        ("codegen_feedback = all", ": invalid choice: 'all' (choose from 'visible', 'hidden')"),
        ("codegen_model_server = ftp://x", " 'ftp://x': expected 'embedded', 'in-process'"),
        ("codegen_pipeline = nope", ": unknown pipeline 'nope'"),
    ],
)
def test_a_bad_ini_value_is_a_usage_error_naming_its_key(pytester: pytest.Pytester, line: str, message: str) -> None:
    key = line.split(" = ")[0]
    pytester.makeini(f"[pytest]\n{line}\n")
    pytester.makepyfile(test_toy=SUITE)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: pytest-codegen: {key} in tox.ini{message}" in result.stderr.str()
    # A good value on the command line overrides the ini file's (no terminal: no header, whose
    # sandbox line would start a sandbox).
    flag = "--" + key.removeprefix("codegen_").replace("_", "-")
    good = {"--exec-timeout": "10", "--exec-memory": "1024", "--feedback": "visible",
            "--model-server": "in-process", "--pipeline": "null"}[flag]
    result = pytester.runpytest(f"{flag}={good}", "--pipeline=null", "--collect-only", "-p", "no:terminal")
    assert result.ret == pytest.ExitCode.OK


def test_a_run_pinned_in_pyproject_shows_its_header_and_writes_its_results(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("""
        [tool.pytest.ini_options]
        codegen_pipeline = "reference"
        codegen_exec_timeout = 3
        codegen_exec_memory = 512
        codegen_results = "runs/pinned.jsonl"
    """)
    pytester.makepyfile(test_toy=SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["codegen: pipeline=reference, feedback=visible, exec limits 3 s CPU / 512 MB"])
    (record,) = [json.loads(line) for line in (pytester.path / "runs" / "pinned.jsonl").read_text().splitlines()]
    assert (record["pipeline"], record["passed"]) == ("reference", True)
