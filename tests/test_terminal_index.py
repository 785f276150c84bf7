"""The indexed teardown lookup prints what pytest's own scan prints, in fewer comparisons."""

from __future__ import annotations

import re

import pytest

from pytest_codegen._terminal_index import index_teardown_reports

# Failures with and without teardown sections (captured output, a failing teardown), among passes.
SUITE = '''
import pytest

@pytest.fixture
def noisy():
    yield
    print("teardown output")

@pytest.fixture
def broken():
    yield
    raise RuntimeError("teardown failed")

@pytest.mark.parametrize("n", range(6))
def test_many(n, noisy):
    assert n % 3 != 0, f"n = {n}"

def test_plain_failure():
    assert 1 == 2

def test_fails_twice(broken):
    assert False

def test_passes(noisy):
    pass
'''

INDEXED = '''
import pytest
from pytest_codegen._terminal_index import index_teardown_reports

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    assert index_teardown_reports(session.config.pluginmanager.get_plugin("terminalreporter"))
'''


def _summary(pytester: pytest.Pytester, *args: str) -> str:
    result = pytester.runpytest_subprocess("-p", "no:codegen", "-p", "no:randomly", "-rA", *args)
    return re.sub(r"in [0-9.]+s", "in Ns", result.stdout.str())


@pytest.mark.parametrize("args", [[], ["-s"], ["--tb=short"]], ids=["capture", "no-capture", "short"])
def test_output_is_the_same_as_pytests_own(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makepyfile(test_suite=SUITE)
    plain = _summary(pytester, *args)
    assert "teardown output" in plain or "-s" in args
    pytester.makeconftest(INDEXED)
    assert _summary(pytester, *args) == plain


def test_a_reporter_without_the_method_is_left_alone() -> None:
    class Reporter:
        stats: dict = {}

        def getreports(self, name: str) -> list:
            return []

    reporter = Reporter()
    assert not index_teardown_reports(reporter)
    assert not hasattr(reporter, "_get_teardown_reports")


def test_the_index_follows_new_reports() -> None:
    class Report:
        when = "teardown"

        def __init__(self, nodeid: str) -> None:
            self.nodeid = nodeid

    class Reporter:
        def __init__(self) -> None:
            self.stats: dict[str, list] = {"": [Report("a")]}

        def getreports(self, name: str) -> list:
            return list(self.stats.get(name, ()))

        def _get_teardown_reports(self, node_id: str) -> list:
            raise AssertionError("replaced")

    reporter = Reporter()
    assert index_teardown_reports(reporter)
    assert [r.nodeid for r in reporter._get_teardown_reports("a")] == ["a"]
    assert reporter._get_teardown_reports("b") == []
    reporter.stats[""].append(Report("b"))
    assert [r.nodeid for r in reporter._get_teardown_reports("b")] == ["b"]
