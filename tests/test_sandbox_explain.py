"""Failed asserts explained by the server itself, in the run (see `Checking.explain`): a checked
test runs once more, compiled through pytest's assertion rewriting, with the candidate's
answers replayed; what cannot be replayed goes to the explaining server as before. The
explanation never changes a verdict."""

from __future__ import annotations

import pytest

from pytest_codegen import outcome
from pytest_codegen.problems import TestCase
from pytest_codegen.sandbox import Limits, Sandbox

LIMITS = Limits(wall_seconds=5.0, cpu_seconds=2.0, memory_mb=512)


@pytest.fixture
def box():
    with Sandbox(LIMITS) as b:
        yield b


def run(box: Sandbox, program: str, *sources: str, setup: str = "") -> outcome.ExecutionResult:
    tests = [TestCase(f"t{i}", source) for i, source in enumerate(sources)]
    return box.run(program, tests, setup=setup, entry_point="f")


def test_a_checked_failed_assert_is_explained_in_the_run(box):
    r = run(box, "def f(x):\n    return x * 3\n", "assert candidate(1) == 3", "assert f(2) == 5")
    assert not r.passed and r.status == outcome.FAILED
    assert r.tests[0].passed and r.tests[1].error_type == "AssertionError"
    assert "assert 6 == 5" in r.tests[1].line and "where 6 = f(2)" in r.tests[1].line, r.tests[1]
    assert "assert 6 == 5" in r.message
    assert box._explainer is None  # no second run


def test_replayed_answers_include_what_the_candidate_raised(box):
    program = "def f(x):\n    return 10 // x\n"
    test = "try:\n    raised = candidate(0)\nexcept ZeroDivisionError:\n    pass\nassert candidate(5) == 3"
    r = run(box, program, test)
    assert r.tests[0].error_type == "AssertionError" and "assert 2 == 3" in r.tests[0].line, r.tests[0]
    assert box._explainer is None


def test_a_test_that_calls_otherwise_the_second_time_goes_to_the_explaining_run(box):
    # random arguments: the replay strays from the answers it has, the explaining run explains
    r = run(box, "def f(x):\n    return -1\n", "import random\nassert candidate(random.random()) >= 0")
    assert r.status == outcome.FAILED and "assert -1 >= 0" in r.tests[0].line, r.tests[0]
    assert box._explainer is not None


def test_the_replay_changes_no_verdict(box):
    # The failed test, run again, appends to the setup's list once more: it runs only once
    # every test has, so the later test saw the list as the tests left it.
    setup = "seen = []\n"
    first = "seen.append(1)\nassert candidate(0) == 1"
    later = "assert seen == [1], seen"
    r = run(box, "def f(x):\n    return x\n", first, later, setup=setup)
    assert r.tests[0].error_type == "AssertionError" and "assert 0 == 1" in r.tests[0].line, r.tests[0]
    assert r.tests[1].passed, r.tests[1]
    assert box._explainer is None


def test_unexplained_without_asking(box):
    r = box.run("def f(x):\n    return x * 3\n", [TestCase("t", "assert candidate(2) == 5")], entry_point="f",
                explain=False)
    assert r.tests[0].error_type == "AssertionError" and "where" not in r.tests[0].line


def test_a_retry_loop_around_random_calls_is_not_replayed_and_ends(box):
    # Replayed, the first call would differ from the recorded one and be refused, and a test
    # that catches Exception around its calls would retry for ever inside the server. Only a
    # test whose every call is literal is replayed; this one goes to the explaining run.
    retry = ("import random\nwhile True:\n    try:\n        got = candidate(random.randint(0, 10**9))\n"
             "        break\n    except Exception:\n        continue\nassert got >= 0\n")
    r = run(box, "def f(x):\n    return -1\n", retry)
    assert r.status == outcome.FAILED and r.tests[0].error_type == "AssertionError", r
    assert "assert -1 >= 0" in r.tests[0].line, r.tests[0]


def test_the_replay_sees_the_bindings_the_test_saw(box):
    # A later test rebinds `want`: the explanation shows the value the failed assert compared.
    r = run(box, "def f(x):\n    return 3\n", "assert candidate(1) == want", "want = 7", setup="want = 2\n")
    assert r.tests[0].error_type == "AssertionError" and "assert 3 == 2" in r.tests[0].line, r.tests[0]
    assert box._explainer is None
