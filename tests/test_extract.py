"""Tests for `pytest_codegen.extract.extract_code`: realistic model outputs, then properties."""

from __future__ import annotations

import ast
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_codegen.extract import extract_code

# A body continuing HUMANEVAL_PROMPT, as Gemma-style models return it.
BELOW_ZERO_BODY = """\
    balance = 0
    for op in operations:
        balance += op
        if balance < 0:
            return True
    return False
"""

HUMANEVAL_PROMPT = '''from typing import List


def below_zero(operations: List[int]) -> bool:
    """ Detect if the balance ever falls below zero.
    >>> below_zero([1, 2, -4, 5])
    True
    """
'''


def run(code: str, name: str = "f") -> Any:
    """The function `name` defined by running `code` in a fresh namespace."""
    namespace: dict[str, Any] = {"__name__": "candidate"}
    exec(compile(code, "<candidate>", "exec"), namespace)
    return namespace[name]


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- Fenced blocks ------------------------------------------------------------------------


def test_qwen_style_prose_around_a_python_fence() -> None:
    output = dedent(
        """
        Here is the function:

        ```python
        def add(a, b):
            return a + b
        ```

        Explanation: the function returns the sum of `a` and `b`.
        """
    )
    assert extract_code(output, "add") == "def add(a, b):\n    return a + b\n"


@pytest.mark.parametrize("fence", ["```python", "```py", "```", "~~~", "```Python3", "````python"])
def test_fence_styles(fence: str) -> None:
    close = fence.removesuffix(fence.lstrip("`~"))  # the fence's run of backticks or tildes, without the info string
    output = f"Sure.\n{fence}\ndef f(x):\n    return x * 2\n{close}\nDone."
    assert extract_code(output, "f") == "def f(x):\n    return x * 2\n"


def test_test_block_after_the_solution_is_dropped() -> None:
    output = dedent(
        """
        ```python
        def is_even(n):
            return n % 2 == 0
        ```

        You can test it like this:

        ```python
        from solution import is_even

        assert is_even(2)
        assert not is_even(3)
        print(is_even(10))
        ```
        """
    )
    assert extract_code(output, "is_even") == "def is_even(n):\n    return n % 2 == 0\n"
    assert extract_code(output) == "def is_even(n):\n    return n % 2 == 0\n"


def test_block_defining_the_entry_point_is_chosen() -> None:
    output = dedent(
        """
        First a small utility:
        ```python
        def unrelated():
            return 0
        ```
        And the answer:
        ```python
        def target(x):
            return x - 1
        ```
        """
    )
    assert extract_code(output, "target") == "def target(x):\n    return x - 1\n"


def test_without_entry_point_parseable_blocks_are_joined_in_order() -> None:
    output = dedent(
        """
        ```python
        import math
        ```
        Now the helper:
        ```python
        def helper(x):
            return math.floor(x)
        ```
        ```python
        def main(x):
            return helper(x) + 1
        ```
        ```python
        print(main(2.5))
        ```
        """
    )
    code = extract_code(output)
    assert "import math" in code and "def helper" in code and "def main" in code
    assert "print" not in code
    assert run(code, "main")(2.5) == 3


def test_helper_in_another_block_is_joined_to_the_entry_point() -> None:
    output = dedent(
        """
        ```python
        def f(xs):
            return [square(x) for x in xs]
        ```
        where `square` is:
        ```python
        def square(x):
            return x * x

        def unused():
            pass
        ```
        """
    )
    code = extract_code(output, "f")
    assert "def unused" not in code
    assert run(code)([1, 2]) == [1, 4]


def test_non_python_blocks_are_ignored() -> None:
    output = dedent(
        """
        Install nothing:
        ```bash
        pip install nothing
        x = 1
        ```
        ```python
        def f():
            return 1
        ```
        Output:
        ```text
        1
        ```
        """
    )
    assert extract_code(output, "f") == "def f():\n    return 1\n"


def test_fence_indented_in_a_list_item() -> None:
    output = "1. Define it:\n   ```python\n   def f(x):\n       return -x\n   ```\n"
    assert extract_code(output, "f") == "def f(x):\n    return -x\n"


def test_closing_fence_glued_to_the_last_line() -> None:
    output = "```python\ndef f(x):\n    return x + 3```\nThat's all."
    assert run(extract_code(output, "f"))(1) == 4


# --- Truncated output -----------------------------------------------------------------------


def test_unterminated_fence_at_the_end() -> None:
    output = "Here you go:\n```python\ndef f(x):\n    return x ** 2\n"
    assert extract_code(output, "f") == "def f(x):\n    return x ** 2\n"


def test_output_cut_mid_line_in_the_usage_code() -> None:
    output = dedent(
        """
        ```python
        def f(x):
            total = 0
            for i in range(x):
                total += i
            return total

        if __name__ == "__main__":
            print(f(1
        """
    )
    code = extract_code(output, "f")
    assert run(code)(4) == 6
    assert "__main__" not in code


def test_output_cut_after_the_entry_point_keeps_the_longest_prefix() -> None:
    output = (
        "```python\ndef helper(x):\n    return x + 1\n\n"
        "def f(x):\n    return helper(x)\n\ndef other(y):\n    return (y +"
    )
    code = extract_code(output, "f")
    assert "def other" not in code
    assert run(code)(1) == 2


def test_truncated_inside_the_entry_point_reports_a_syntax_error() -> None:
    output = "```python\nimport math\n\ndef f(x):\n    return math.sqrt(x +"
    code = extract_code(output, "f")
    assert code.startswith("import math") and "def f(x):" in code
    with pytest.raises(SyntaxError):
        ast.parse(code)


def test_truncated_mid_line_without_fences() -> None:
    output = "def f(x):\n    y = x + 1\n    return y\n\nprint(f(2)) # pri"
    assert extract_code(output, "f") == "def f(x):\n    y = x + 1\n    return y\n"
    output = "def f(x):\n    y = x + 1\n    return y\n\nassert f(2) == (3"
    assert extract_code(output, "f") == "def f(x):\n    y = x + 1\n    return y\n"


# --- Prose without fences --------------------------------------------------------------------


def test_prose_around_unfenced_code() -> None:
    output = dedent(
        """
        Sure! Here is a solution.

        import math

        def f(x):
            return math.factorial(x)

        This computes the factorial using the standard library.
        For example, f(3) returns 6.
        """
    )
    code = extract_code(output, "f")
    assert code == "import math\n\ndef f(x):\n    return math.factorial(x)\n"


def test_indented_code_in_prose_is_dedented() -> None:
    output = "The solution is:\n\n    def f(x):\n        return x + 10\n\nHope this helps!"
    assert extract_code(output, "f") == "def f(x):\n    return x + 10\n"


@pytest.mark.parametrize(
    "output",
    [
        "",
        "   \n\t\n",
        "I'm sorry, I can't help with that.",
        "The answer is 2 + 2 = 4, which is even.\nLet me know if you need more help!",
        "Here:\n```\n42\n```",
    ],
)
def test_prose_only_gives_empty_string(output: str) -> None:
    assert extract_code(output, "f") == ""
    assert extract_code(output) == ""


def test_unparseable_code_is_returned_as_is_for_the_sandbox() -> None:
    output = "Here:\n```python\ndef f(x)\n    return x\n```"
    assert extract_code(output, "f") == "def f(x)\n    return x\n"
    output = "Well, def f(x) returns x.\ndef f(x) -> x:\n    return x +\n"
    assert extract_code(output, "f").startswith("def f(x) -> x:")


def test_doctest_style_session_is_turned_into_code() -> None:
    output = dedent(
        """
        >>> import math
        >>> def f(x):
        ...     return math.floor(x)
        ...
        >>> f(2.5)
        2
        """
    )
    code = extract_code(output, "f")
    assert "f(2.5)" not in code
    assert run(code)(3.7) == 3


def test_think_block_drafts_are_ignored() -> None:
    output = "<think>\ndef f(x):\n    return 0\n</think>\n```python\ndef f(x):\n    return 1\n```"
    assert run(extract_code(output, "f"))(0) == 1


def test_chat_stop_tokens_end_the_output() -> None:
    output = "```python\ndef f():\n    return 5\n```<|im_end|>\nHuman: def f(): return 6"
    assert run(extract_code(output, "f"))() == 5


# --- Continuations of a prompt ---------------------------------------------------------------


def test_gemma_style_continuation_without_fences() -> None:
    output = BELOW_ZERO_BODY + "\n\nThe function tracks the balance."
    code = extract_code(output, "below_zero", prompt=HUMANEVAL_PROMPT)
    assert code.startswith(HUMANEVAL_PROMPT)
    assert code.count("def below_zero") == 1
    assert run(code, "below_zero")([1, -2]) is True
    assert run(code, "below_zero")([1, 2]) is False


def test_continuation_in_a_fence_after_prose() -> None:
    body = "    return any(sum(operations[: i + 1]) < 0 for i in range(len(operations)))"
    output = f"Here is the completion:\n```python\n{body}\n```"
    code = extract_code(output, "below_zero", prompt=HUMANEVAL_PROMPT)
    assert run(code, "below_zero")([1, -2]) is True


def test_continuation_closing_a_fence_the_prompt_opened() -> None:
    output = BELOW_ZERO_BODY + "```\n\nExplanation.\n```python\nprint(below_zero([1]))\n```"
    code = extract_code(output, "below_zero", prompt=HUMANEVAL_PROMPT)
    assert code == HUMANEVAL_PROMPT + BELOW_ZERO_BODY


def test_continuation_entry_point_taken_from_the_prompt() -> None:
    code = extract_code("    return sum(operations) < 0\n", prompt=HUMANEVAL_PROMPT)
    assert code == HUMANEVAL_PROMPT + "    return sum(operations) < 0\n"


def test_continuation_written_at_column_zero_is_indented() -> None:
    output = textwrap.dedent(BELOW_ZERO_BODY)
    code = extract_code(output, "below_zero", prompt=HUMANEVAL_PROMPT)
    assert run(code, "below_zero")([-1]) is True


def test_continuation_followed_by_test_code() -> None:
    tests = "print(below_zero([1]))\nassert below_zero([-1])\n"
    output = "    return min(0, *operations) < 0\n\n\n" + tests
    code = extract_code(output, "below_zero", prompt=HUMANEVAL_PROMPT)
    assert "print" not in code and "assert below_zero" not in code
    assert code.startswith("from typing import List")


def test_restated_signature_is_not_duplicated() -> None:
    output = dedent(
        '''
        ```python
        from typing import List


        def below_zero(operations: List[int]) -> bool:
            """ Detect if the balance ever falls below zero."""
            balance = 0
            for op in operations:
                balance += op
                if balance < 0:
                    return True
            return False
        ```
        '''
    )
    code = extract_code(output, "below_zero", prompt=HUMANEVAL_PROMPT)
    assert code.count("def below_zero") == 1
    assert code.startswith("from typing import List")
    assert run(code, "below_zero")([5, -6]) is True


def test_continuation_truncated_mid_line_reports_a_syntax_error() -> None:
    code = extract_code("    return any(op < 0 for op in", "below_zero", prompt=HUMANEVAL_PROMPT)
    with pytest.raises(SyntaxError):
        ast.parse(code)


def test_continuation_truncated_later_keeps_the_parsed_part() -> None:
    output = BELOW_ZERO_BODY + "\n\ndef check(candidate):\n    assert candidate([1, -"
    code = extract_code(output, "below_zero", prompt=HUMANEVAL_PROMPT)
    assert "check" not in code
    assert run(code, "below_zero")([-3]) is True


# --- Cleaning -------------------------------------------------------------------------------


def test_main_guard_asserts_and_prints_are_dropped() -> None:
    output = dedent(
        """
        ```python
        import sys

        def f(n):
            return n + 1

        assert f(1) == 2
        print(f(5))
        f(3)
        n = int(input())
        doctest_result = None
        import doctest
        doctest.testmod()

        if __name__ == "__main__":
            print(f(int(sys.argv[1])))
        ```
        """
    )
    expected = "import sys\n\ndef f(n):\n    return n + 1\n\n\nimport doctest\n"
    assert extract_code(output, "f") == expected


def test_helper_used_by_the_entry_point_is_kept_and_unused_test_function_dropped() -> None:
    output = dedent(
        """
        ```python
        def _is_prime(n):
            if n < 2:
                return False
            return all(n % d for d in range(2, int(n ** 0.5) + 1))

        def count_primes(limit):
            return sum(1 for k in range(limit) if _is_prime(k))

        def test_count_primes():
            assert count_primes(10) == 4

        class TestPrimes:
            def test_small(self):
                assert _is_prime(2)
        ```
        """
    )
    code = extract_code(output, "count_primes")
    assert "def _is_prime" in code and "def count_primes" in code
    assert "test_" not in code and "TestPrimes" not in code
    assert run(code, "count_primes")(10) == 4


def test_reachable_test_named_function_is_kept() -> None:
    output = dedent(
        """
        def test_digit(c):
            return c.isdigit()

        def f(s):
            return [c for c in s if test_digit(c)]
        """
    )
    assert extract_code(output, "f") == output


def test_mbpp_entry_point_named_like_a_test() -> None:
    output = dedent(
        """
        ```python
        def test_duplicate(nums):
            return len(nums) != len(set(nums))

        assert test_duplicate([1, 1])
        ```
        """
    )
    assert extract_code(output, "test_duplicate") == (
        "def test_duplicate(nums):\n    return len(nums) != len(set(nums))\n"
    )


def test_loop_variable_shared_with_a_comprehension_is_not_needed() -> None:
    output = dedent(
        """
        SQUARES = [i * i for i in range(10)]

        def f(n):
            return SQUARES[n]

        for i in range(3):
            print(f(i))
        """
    )
    code = extract_code(output, "f")
    assert "print" not in code
    assert run(code)(3) == 9


def test_unittest_class_and_main_are_dropped() -> None:
    output = dedent(
        """
        import unittest

        def f(x):
            return abs(x)

        class FTest(unittest.TestCase):
            def test_neg(self):
                self.assertEqual(f(-1), 1)

        unittest.main()
        """
    )
    assert extract_code(output, "f") == "import unittest\n\ndef f(x):\n    return abs(x)\n"


def test_imports_anywhere_at_module_level_are_kept() -> None:
    output = dedent(
        """
        def f(xs):
            return Counter(xs).most_common(1)[0][0]

        from collections import Counter
        """
    )
    code = extract_code(output, "f")
    assert "from collections import Counter" in code
    assert run(code)([1, 2, 2]) == 2


def test_constant_table_used_by_the_function_is_kept() -> None:
    output = dedent(
        """
        ```python
        ROMAN = [(10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
        LOOKUP = dict(ROMAN)
        UNUSED = {"a": 1}

        def to_roman(n):
            out = ""
            for value, numeral in ROMAN:
                while n >= value:
                    out += numeral
                    n -= value
            return out

        result = to_roman(14)
        print(result)
        ```
        """
    )
    code = extract_code(output, "to_roman")
    assert code.startswith('ROMAN = [(10, "X")')
    assert "LOOKUP" not in code and "UNUSED" not in code and "result" not in code
    assert run(code, "to_roman")(14) == "XIV"


def test_constants_depending_on_constants_and_setup_loops() -> None:
    output = dedent(
        """
        import sys
        sys.setrecursionlimit(10000)
        N = 20
        SIEVE = [True] * (N + 1)
        for i in range(2, N + 1):
            for j in range(i * i, N + 1, i):
                SIEVE[j] = False
        CACHE = {}
        CACHE.update({0: 0})

        def f(k):
            if k not in CACHE:
                CACHE[k] = sum(1 for p in range(2, k + 1) if SIEVE[p])
            return CACHE[k]

        for k in range(5):
            print(f(k))
        """
    )
    code = extract_code(output, "f")
    assert "setrecursionlimit" in code and "CACHE.update" in code and "SIEVE[j] = False" in code
    assert "print" not in code
    assert run(code)(20) == 8


def test_decorators_and_comments_inside_definitions_are_verbatim() -> None:
    output = dedent(
        """
        from functools import lru_cache

        @lru_cache(maxsize=None)
        def fib(n):
            # base cases
            if n < 2:
                return n
            return fib(n - 1) + fib(n - 2)  # recurse
        """
    )
    assert extract_code(output, "fib") == output


def test_entry_point_missing_keeps_every_definition() -> None:
    output = "```python\ndef solve(x):\n    return x\n\nprint(solve(1))\n```"
    assert extract_code(output, "f") == "def solve(x):\n    return x\n"


def test_future_import_stays_first_when_blocks_are_joined() -> None:
    output = (
        "```python\ndef g() -> int:\n    return 1\n```\n"
        "```python\nfrom __future__ import annotations\n\ndef f() -> int:\n    return g()\n```"
    )
    code = extract_code(output, "f")
    assert code.startswith("from __future__ import annotations")
    assert run(code)() == 1


def test_statements_sharing_a_line_are_split() -> None:
    code = extract_code("import math; print(math.pi)\ndef f(): return math.pi\n", "f")
    assert "print" not in code
    assert run(code)() > 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_invalid_escape_sequences_do_not_reject_code() -> None:
    output = "```python\nimport re\n\ndef f(s):\n    return re.findall('\\d+', s)\n```"
    assert run(extract_code(output, "f"))("a1b22") == ["1", "22"]


# --- Properties -----------------------------------------------------------------------------

FRAGMENTS = [
    "```", "```python\n", "```py\n", "~~~\n", "\n", "    ", "\t", "def ", "def f(x):\n",
    "class A:\n", "return ", "import math\n", "from x import y\n", "x = 1\n", "'", '"', '"""',
    "`", "(", ")", "[", ":", "@dec\n", "if __name__ == '__main__':\n", "assert ", "print(", "#",
    "\\", "\r\n", "\x00", "é", "<|im_end|>", "</think>", "f", "1", " ", "lambda", "yield",
    "async ", "match x:\n", "    case 1:\n",
]  # fmt: skip

SAFE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SAFE
@given(
    text=st.one_of(
        st.text(),
        st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=40).map("".join),
    ),
    entry_point=st.sampled_from([None, "f", "A", "x"]),
    use_prompt=st.booleans(),
)
def test_never_raises(text: str, entry_point: str | None, use_prompt: bool) -> None:
    prompt = 'def f(x):\n    """Doc."""\n' if use_prompt else None
    result = extract_code(text, entry_point, prompt=prompt)
    assert isinstance(result, str)


BINARY_OPERATORS = ["+", "-", "*", "//", "%"]
PROSE_BEFORE = ["", "Here is the function:\n\n", "Sure! This solves it.\n", "Solution\n---\n\n"]
PROSE_AFTER = [
    "",
    "\nThis works for all integers.\n",
    "\nExplanation: we combine the helpers.\nHope it helps!",
]
TEST_CODE = [
    "assert f(0) == 123456789\n",
    "print(f(3))\n",
    'if __name__ == "__main__":\n    print(f(2))\n',
    "for i in range(3):\n    print(f(i))\n",
    "def test_f():\n    assert f(1) == -1\n",
    "result = f(5)\nprint(result)\n",
]


@st.composite
def expressions(
    draw: st.DrawFn,
    var: str,
    names: list[str],
    helpers: list[str],
    depth: int = 0,
    safe: bool = False,
) -> str:
    """An integer expression over `var`, the constants `names` and one-argument `helpers`.

    `safe` ones cannot raise (no division), for module constants.
    """
    leaves: list[st.SearchStrategy[str]] = [st.just(var), st.integers(-9, 9).map(str)]
    if names:
        leaves.append(st.sampled_from(names))
    kinds = ["leaf"] if depth >= 3 else ["leaf", "binary", "binary", "call"]
    kind = draw(st.sampled_from(kinds))
    if kind == "leaf":
        return draw(st.one_of(leaves))
    if kind == "binary":
        left = draw(expressions(var, names, helpers, depth + 1, safe))
        right = draw(expressions(var, names, helpers, depth + 1, safe))
        operators = BINARY_OPERATORS[:3] if safe else BINARY_OPERATORS
        return f"({left} {draw(st.sampled_from(operators))} {right})"
    functions = ["abs", "math.isqrt(abs", "min(7, "] + helpers
    function = draw(st.sampled_from(functions))
    argument = draw(expressions(var, names, helpers, depth + 1, safe))
    if function == "math.isqrt(abs":
        return f"math.isqrt(abs({argument}))"
    if function == "min(7, ":
        return f"min(7, {argument})"
    return f"{function}({argument})"


@st.composite
def programs(draw: st.DrawFn, every_name_used: bool = False) -> str:
    """A small valid program: constants, helpers and `f(x)` calling them, maybe `import math`.

    Cleaning would drop constants and helpers nothing uses and the `unused` function; with
    `every_name_used` the program has none, so it should come back verbatim.
    """
    constants = [f"C{i}" for i in range(draw(st.integers(0, 3)))]
    lines = ["import math", ""] if draw(st.booleans()) else []
    uses_math = bool(lines)
    for i, name in enumerate(constants):
        # Later constants may be computed from earlier ones.
        value = draw(expressions("7", constants[:i], [], safe=True))
        lines.append(f"{name} = {value}")
    if draw(st.booleans()):
        lines.append("TABLE = [3, 1, 4, 1, 5]")
        constants = [*constants, "TABLE[2]"]
    helpers: list[str] = []
    for i in range(draw(st.integers(0, 2))):
        body = draw(expressions("y", constants, helpers))
        lines += ["", "", f"def h{i}(y):", f"    return {body}"]
        helpers.append(f"h{i}")
    if not every_name_used and draw(st.booleans()):
        lines += ["", "", "def unused(z):", "    return z"]
    lines += ["", "", "def f(x):"]
    if every_name_used and constants + helpers:
        lines += [f"    every = ({', '.join(constants + helpers)},)"]
    if draw(st.booleans()):
        bound = draw(st.integers(-3, 5))
        early = draw(expressions("x", constants, helpers))
        lines += [f"    if x > {bound}:", f"        return {early}"]
    if draw(st.booleans()):
        lines += [f"    y = {draw(expressions('x', constants, helpers))}"]
    lines += [f"    return {draw(expressions('x', constants, helpers))}"]
    program = "\n".join(lines).lstrip("\n") + "\n"
    if not uses_math:
        program = program.replace("math.isqrt(", "int(")  # keep it runnable without the import
    return program


@st.composite
def model_outputs(draw: st.DrawFn, program: str) -> str:
    """`program` as a model might return it: prose, fences, trailing tests, a cut-off fence."""
    extra = draw(st.sampled_from([""] + TEST_CODE))
    layouts = ["bare", "fenced", "fenced-separate-tests", "unterminated", "truncated"]
    layout = draw(st.sampled_from(layouts))
    fence = draw(st.sampled_from(["```python", "```py", "```", "~~~"]))
    close = "~~~" if fence == "~~~" else "```"
    before = draw(st.sampled_from(PROSE_BEFORE))
    after = draw(st.sampled_from(PROSE_AFTER))
    if layout == "bare":
        return before + program + ("\n" + extra if extra else "") + after
    if layout == "fenced":
        return f"{before}{fence}\n{program}\n{extra}{close}\n{after}"
    if layout == "fenced-separate-tests":
        tests = f"\nTesting it:\n{fence}\n{extra}{close}\n" if extra else ""
        return f"{before}{fence}\n{program}{close}\n{tests}{after}"
    if layout == "unterminated":
        return f"{before}{fence}\n{program}\n{extra}"
    return f"{before}{fence}\n{program}\n{extra}print(f(1"  # cut off mid-line


def outcome(function: Any, x: int) -> tuple[str, Any]:
    try:
        return "value", function(x)
    except Exception as exc:  # the extracted program must fail the same way
        return "error", type(exc).__name__


@SAFE
@given(data=st.data(), program=programs(), entry_point=st.sampled_from(["f", None]))
def test_valid_programs_keep_their_behaviour(
    data: st.DataObject, program: str, entry_point: str | None
) -> None:
    output = data.draw(model_outputs(program))
    extracted = extract_code(output, entry_point)
    original, candidate = run(program), run(extracted)
    for x in (-7, -1, 0, 1, 2, 5, 13):
        assert outcome(candidate, x) == outcome(original, x), extracted
    assert "print(" not in extracted and "assert " not in extracted


@SAFE
@given(program=programs(every_name_used=True), with_unused=st.booleans())
def test_clean_programs_are_returned_verbatim(program: str, with_unused: bool) -> None:
    if with_unused:  # every definition is kept without an entry point
        unused = "def unused(z):\n    return z\n\n\n"
        program = program.replace("def f(x):", unused + "def f(x):")
        assert extract_code(program) == program
    else:
        assert extract_code(f"Here:\n```python\n{program}```\n", "f") == program
        assert extract_code(program, "f") == program


@SAFE
@given(program=programs(), fenced=st.booleans(), extra=st.sampled_from([""] + TEST_CODE))
def test_continuations_keep_their_behaviour(program: str, fenced: bool, extra: str) -> None:
    """The body of `f` continuing a stub, its helpers after it, then maybe tests."""
    head, body = program.split("def f(x):\n")
    prompt = 'def f(x):\n    """Compute something from x."""\n'
    output = body + "\n\n" + head + extra
    if fenced:
        output = f"Here is the rest:\n```python\n{output}```\n"
    extracted = extract_code(output, "f", prompt=prompt)
    assert extracted.startswith(prompt + body)
    original, candidate = run(program), run(extracted)
    for x in (-7, -1, 0, 1, 2, 5, 13):
        assert outcome(candidate, x) == outcome(original, x), extracted
