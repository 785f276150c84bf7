"""A scripted stand-in for a language model, for tests of pipeline logic and report numbers.

The real llama-cpp-python path has its own tests (test_llama_real.py); this fake only makes
the control flow and the arithmetic of the tables checkable to the exact number.
"""

from __future__ import annotations

from collections.abc import Callable

from pytest_codegen.models.backend import GenerationRequest, GenerationResponse
from pytest_codegen.problems import Problem, TestCase


class ScriptedBackend:
    def __init__(self, alias: str, script: Callable[[str], str], mode: str = "chat") -> None:
        self.alias = alias
        self.mode = mode
        self.identity = f"scripted:{alias}"
        self.script = script
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> GenerationResponse:
        self.requests.append(request)
        text = request.prompt if request.prompt is not None else request.messages[-1].content
        reply = self.script(text)
        return GenerationResponse(reply, len(text.split()), len(reply.split()), 0.001)

    def close(self) -> None:
        pass


class FakeModels:
    """Stands in for ModelPool: name → scripted backend."""

    def __init__(self, **backends: ScriptedBackend) -> None:
        self.backends = backends

    def get(self, name: str) -> ScriptedBackend:
        return self.backends[name]

    def close(self) -> None:
        pass


def fenced(code: str) -> str:
    return f"Here is the code:\n```python\n{code}```\n"


def arithmetic_problem(name: str, op: str) -> Problem:
    """`def NAME(a, b)` returning `a OP b`: one visible, unscored example and two scoring asserts."""
    def value(expression: str) -> int:
        return eval(expression)  # the operator is one of + - * from the test itself

    stub = f'def {name}(a, b):\n    """Return a {op} b.\n    >>> {name}(3, 2)\n    {value(f"3 {op} 2")}\n    """\n'
    tests = (
        TestCase("example[0]", f"assert {name}(3, 2) == {value(f'3 {op} 2')}", visible=True, scoring=False),
        TestCase("check[0]", f"assert candidate(5, 1) == {value(f'5 {op} 1')}"),
        TestCase("check[1]", f"assert candidate(-1, 4) == {value(f'-1 {op} 4')}"),
    )
    return Problem(f"toy/{name}", "toy", stub, name, tests, stub + f"    return a {op} b\n",
                   prompt_is_code=True)
