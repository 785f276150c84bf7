"""Sanitized MBPP: 427 problems. The data path comes from --mbpp-data, so the parameters are
generated once the options are known."""

from pytest_codegen.datasets import mbpp


def pytest_generate_tests(metafunc):
    if "problem" in metafunc.fixturenames:
        problems = mbpp.load_problems(metafunc.config.getoption("mbpp_data"))
        metafunc.parametrize("problem", problems, ids=str)


def test_mbpp(problem, solution):
    solution.verify()
