"""Backends and pipelines as extension points: a plugin adds both through the hooks
(`pytest_codegen_make_backend`, `pytest_codegen_make_pipeline`), and both run."""

from __future__ import annotations

import json

import pytest
from test_plugin import TOY_SUITE

PLUGIN = '''
from pytest_codegen.models import GenerationRequest
from pytest_codegen.models.backend import GenerationResponse
from pytest_codegen.pipelines.base import Round, Solution


class Adder:
    """A "model" that always writes the body of add()."""

    alias, mode, identity = "adder", "completion", "adder-v1"

    def generate(self, request):
        return GenerationResponse("    return a + b\\n", 3, 5, 0.0)

    def close(self):
        pass


def pytest_codegen_make_backend(name, spec):
    if name == "adder":
        assert spec is None  # the registry does not know it
        return Adder()


class Continue:
    """A pipeline of its own: the prompt, continued by the model."""

    name = "continue"

    def __init__(self, models):
        self.models = models

    def solve(self, problem, sample):
        text = self.models.get("adder").generate(GenerationRequest(prompt=problem.prompt)).text
        program = problem.prompt + text
        step = Round(index=0, role="generate", program=program, model="adder", text=text)
        return Solution(problem, program, self.name, sample, rounds=[step])


def pytest_codegen_make_pipeline(name, models):
    if name == "continue":
        return Continue(models)
'''


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_toy=TOY_SUITE)
    pytester.makeconftest(PLUGIN)
    return pytester


@pytest.mark.parametrize("mode", [pytest.param([], id="plain"), pytest.param(["-n", "2"], id="xdist")])
def test_a_plugin_adds_a_backend_and_a_pipeline(suite, mode):
    result = suite.runpytest_subprocess("--pipeline=continue", "--problems=toy/add",
                                        "--codegen-results=r.jsonl", *mode)
    result.assert_outcomes(passed=1)
    (record,) = [json.loads(line) for line in (suite.path / "r.jsonl").read_text().splitlines()]
    assert record["pipeline"] == "continue"
    assert record["program"].endswith("    return a + b\n")


def test_a_plugin_backend_serves_a_builtin_pipeline_through_the_cache(suite):
    args = ["--pipeline=single", "--model=adder", "--problems=toy/add", "-n", "2",
            f"--codegen-cache={suite.path / 'cache'}"]
    first = suite.runpytest_subprocess(*args, "--codegen-results=first.jsonl")
    first.assert_outcomes(passed=1)
    again = suite.runpytest_subprocess(*args, "--codegen-results=again.jsonl")
    again.assert_outcomes(passed=1)
    (record,) = [json.loads(line) for line in (suite.path / "again.jsonl").read_text().splitlines()]
    assert record["rounds"][0]["cached"]  # keyed on the backend's identity


def test_unknown_names_are_still_refused_without_plugins(pytester):
    pytester.makepyfile(test_toy=TOY_SUITE)
    result = pytester.runpytest_subprocess("--pipeline=continue")
    result.stderr.fnmatch_lines(["*unknown pipeline 'continue'*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
