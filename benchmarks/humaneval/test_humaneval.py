"""HumanEval: 164 problems, one item each (times --samples)."""

import pytest

from pytest_codegen.datasets import humaneval


@pytest.mark.parametrize("problem", humaneval.load_problems(), ids=str)
def test_humaneval(problem, solution):
    solution.verify()
