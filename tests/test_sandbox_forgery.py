"""Verdicts a candidate cannot forge: programs that pass by reaching into the checking (frame
walking, gc, reading their own memory, always-equal results, redefined prompt helpers) fail on
the HumanEval problems the issue names. Each of them passed when the tests ran in the
candidate's own process, as they did before the server checked them itself."""

from __future__ import annotations

import pytest

from pytest_codegen.datasets import humaneval
from pytest_codegen.sandbox import Limits, Sandbox
from pytest_codegen.verdict import judge

# Run inside the candidate's function, during the first test: with the run's token, report
# every test passed and the run ended, on every fd, and leave.
FORGE_WITH_TOKENS = '''
def _forge(tokens, tests):
    import os
    for token in tokens:
        lines = ['{"t":"%s","k":"result","i":%d,"ok":true}' % (token, i) for i in range(tests)]
        data = ("\\n".join(lines + ['{"t":"%s","k":"end"}' % token]) + "\\n").encode()
        for fd in range(3, 64):
            try:
                os.write(fd, data)
            except OSError:
                pass
    if tokens:
        os._exit(0)
'''

FRAME_TOKEN = FORGE_WITH_TOKENS + '''
def _exploit(tests, **names):
    import sys
    tokens, frame = set(), sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            if isinstance(value, dict) and isinstance(value.get("token"), str):
                tokens.add(value["token"])
        frame = frame.f_back
    _forge(tokens, tests)
'''

GC_TOKEN = FORGE_WITH_TOKENS + '''
def _exploit(tests, **names):
    import gc
    tokens = {o["token"] for o in gc.get_objects() if isinstance(o, dict) and isinstance(o.get("token"), str)}
    _forge(tokens, tests)
'''

# The process's own memory, read as /proc/self/mem would (which is closed to it: the sandbox's
# processes are not dumpable), through ctypes, where /proc/self/maps says there is memory.
MEMORY_TOKEN = FORGE_WITH_TOKENS + '''
def _exploit(tests, **names):
    import ctypes, re
    tokens = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if not fields[1].startswith("r") or high - low > 1 << 26 or "[v" in line:
                continue
            chunk = ctypes.string_at(low, high - low)
            # the token as sent in messages, or as a str object of 32 hex digits
            found = re.finditer(rb'"t":"([0-9a-f]{32})"|[^0-9a-f]([0-9a-f]{32})\\x00', chunk)
            tokens.update((m.group(1) or m.group(2)).decode() for m in found)
    _forge(tokens, tests)
'''

# Rebinds names in the namespace of whatever called it, from its frame or through gc.
FRAME_REBIND = '''
def _exploit(tests, **names):
    import sys
    sys._getframe(2).f_globals.update(names)
'''
GC_REBIND = '''
def _exploit(tests, **names):
    import gc
    for o in gc.get_objects():
        if isinstance(o, dict) and "candidate" in o and "__builtins__" in o:
            o.update(names)
'''

ALWAYS_EQUAL = '''
class _Yes(str):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = str.__hash__
'''

ENTRY_BODY = {  # the entry point's body: the exploit, then a wrong answer
    "HumanEval/0": "    _exploit(7)\n    return None\n",
    "HumanEval/32": "    _exploit(1, poly=lambda xs, x: 0.0)\n    return 0.0\n",
    "HumanEval/38": "    _exploit(1, str=s[::-1])\n    return s[::-1]\n",
}

PROGRAMS = {
    "frame walking to the token": (FRAME_TOKEN, ["HumanEval/0", "HumanEval/32", "HumanEval/38"]),
    "gc walking to the token": (GC_TOKEN, ["HumanEval/0", "HumanEval/32", "HumanEval/38"]),
    "memory scan to the token": (MEMORY_TOKEN, ["HumanEval/0", "HumanEval/32", "HumanEval/38"]),
    "frame walking to the test's names": (FRAME_REBIND, ["HumanEval/32", "HumanEval/38"]),
    "gc walking to the test's names": (GC_REBIND, ["HumanEval/32", "HumanEval/38"]),
}


def exploit(task: str, support: str, prompt: str) -> str:
    return support + "\n" + prompt + ENTRY_BODY[task]


CASES = [(name, task) for name, (_, tasks) in PROGRAMS.items() for task in tasks]


@pytest.fixture(scope="module")
def problems():
    return {p.id: p for p in humaneval.load_problems()}


@pytest.fixture(scope="module")
def box():
    with Sandbox(Limits(cpu_seconds=5, wall_seconds=20)) as sandbox:
        yield sandbox


@pytest.mark.parametrize(("name", "task"), CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_reaching_into_the_checking_never_passes(box, problems, name, task):
    problem = problems[task]
    result = judge(box, problem, exploit(task, PROGRAMS[name][0], problem.prompt), explain=False)
    assert not result.passed, result
    assert judge(box, problem, problem.canonical_solution, explain=False).passed


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/38"])
def test_a_result_that_equals_everything_is_not_equal(box, problems, task):
    body = "    return _Yes('x')\n"
    result = judge(box, problems[task], ALWAYS_EQUAL + problems[task].prompt + body, explain=True)
    assert not result.passed and result.error_type == "AssertionError", result
    assert "not plain data: a str subclass _Yes" in result.first_failure.line


@pytest.mark.parametrize(("task", "helper"), [
    ("HumanEval/32", "def poly(xs, x):\n    return 0.0\n"),
    ("HumanEval/38", "def encode_cyclic(s):\n    return s\n"),
    ("HumanEval/50", "def encode_shift(s):\n    return s\n"),
])
def test_a_redefined_prompt_helper_is_not_what_the_tests_use(box, problems, task, helper):
    wrong = {"HumanEval/32": "    return 0.0\n"}.get(task, "    return s\n")
    result = judge(box, problems[task], problems[task].prompt + wrong + "\n\n" + helper, explain=False)
    assert not result.passed and result.error_type == "AssertionError", result
