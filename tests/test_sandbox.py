"""The execution sandbox, for real: a server process, forked children, hostile programs.

No mocks: every test runs programs through `Sandbox`. Limits are small (wall 2 s, memory
256 MB) so the hostile corpus finishes quickly. Tests that need root (namespaces, a sandbox
uid) are skipped without it; the degraded (unprivileged) paths are exercised by making a root
server act as nobody (`Sandbox(degrade=...)`).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from pytest_codegen import outcome
from pytest_codegen.problems import TestCase
from pytest_codegen.sandbox import TEST_SEED, Limits, Sandbox, SandboxError

LIMITS = Limits(wall_seconds=2.0, cpu_seconds=2.0, memory_mb=256)
IS_ROOT = os.geteuid() == 0
NOBODY = 65534
REPO = Path(__file__).resolve().parents[1]
needs_root = pytest.mark.skipif(not IS_ROOT, reason="namespaces and a sandbox uid need root")

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def box():
    with Sandbox(LIMITS) as b:
        yield b


def tc(source: str, name: str | None = None) -> TestCase:
    return TestCase(name or f"t{abs(hash(source)) % 10000}", source)


CHECK_F = [tc("assert candidate(1) == 2", "one"), tc("assert candidate(5) == 6", "five")]


def run(box: Sandbox, program: str, tests=CHECK_F, entry: str | None = "f", **kw) -> outcome.ExecutionResult:
    return box.run(program, tests, entry_point=entry, **kw)


def _proc_uid_states(uid: int) -> list[tuple[int, str]]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            found.append((int(entry), fields.get("State", "?").strip()))
    return found


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


def _live_servers() -> list[int]:
    """Every sandbox server process on the machine (see `_sandbox_bootstrap.command`)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"_sandbox_server" in argv:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return state[state.rfind(b")") + 2 : state.rfind(b")") + 3] != b"Z"


def _named(name: str) -> list[int]:
    """Live processes whose name (comm) is `name`: how a test finds a candidate's processes,
    whose pids inside the sandbox's PID namespace are not the pids here."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == name and _alive(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return found


def assert_nothing_left(box: Sandbox, names: tuple[str, ...] = (), timeout: float = 5.0) -> None:
    """No process of the sandbox uid (zombies included), and none named one of `names`, survives."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for name in names for p in _named(name)]
        if box.sandbox_uid is not None:
            left += [p for p, _state in _proc_uid_states(box.sandbox_uid)]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes left behind: {left}")
        time.sleep(0.02)


def assert_still_healthy(box: Sandbox) -> None:
    r = run(box, "def f(x):\n    return x + 1\n")
    assert r.passed, r


# ------------------------------------------------------------------ plain outcomes


def test_isolation_line(box):
    assert box.isolation
    if IS_ROOT:
        assert box.mode == "root"
        assert f"uid {box.sandbox_uid}" in box.isolation
        assert "namespaces(net,mount,ipc,pid)" in box.isolation
        assert "minimal read-only root" in box.isolation and "no user namespaces or kernel keys" in box.isolation
        assert box.sandbox_uid == 200000 + box.server_pid


def test_passing_program(box):
    r = run(box, "def f(x):\n    return x + 1\n")
    assert r.status == outcome.PASSED and r.passed
    assert [t.passed for t in r.tests] == [True, True]
    assert [t.name for t in r.tests] == ["one", "five"]
    assert r.error_type is None and r.phase is None
    assert 0 < r.seconds < 2


def test_assertion_failure_shows_values_in_line(box):
    r = run(box, "def f(x):\n    return x * 2\n", [tc("assert candidate(2) == 5", "two")])
    assert r.status == outcome.FAILED
    assert (r.error_type, r.phase) == ("AssertionError", outcome.TEST)
    t = r.tests[0]
    assert not t.passed and t.error_type == "AssertionError"
    assert "assert candidate(2) == 5" in t.line
    assert "assert 4 == 5 where 4 = f(2)" in t.line
    assert t.message.startswith("AssertionError: assert 4 == 5")
    assert r.outcome_class == "AssertionError"
    assert '<test two>", line 1' in r.traceback


def test_assertion_inside_helper_function(box):
    test = tc("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(3) == 7\n\ncheck(f)\n",
              "check")
    r = run(box, "def f(x):\n    return x + 1\n", [test])
    assert r.error_type == "AssertionError"
    assert "assert candidate(3) == 7" in r.tests[0].line
    assert "assert 4 == 7" in r.tests[0].line


def test_bare_assert_false_is_assertion_error(box):
    r = run(box, "def f(x):\n    return x\n", [tc("assert False", "bare"), tc("x = candidate(0)\nassert x", "falsy")])
    assert r.status == outcome.FAILED and r.error_type == "AssertionError"
    assert [t.error_type for t in r.tests] == ["AssertionError", "AssertionError"]
    assert "assert False" in r.tests[0].line


def test_assert_in_candidate_code(box):
    r = run(box, "def f(x):\n    assert x > 3\n    return x + 1\n")
    assert r.error_type == "AssertionError" and r.phase == outcome.TEST
    assert '"<candidate>", line 2' in r.traceback


def test_name_error_at_definition(box):
    r = run(box, "x = undefined_thing\ndef f(x):\n    return x + 1\n")
    assert (r.status, r.error_type, r.phase) == (outcome.FAILED, "NameError", outcome.DEFINE)
    assert "undefined_thing" in r.message
    assert all(not t.passed for t in r.tests) and len(r.tests) == 2
    assert '"<candidate>", line 1' in r.traceback


def test_name_error_in_test(box):
    r = run(box, "def f(x):\n    return x + missing\n")
    assert (r.status, r.error_type, r.phase) == (outcome.FAILED, "NameError", outcome.TEST)


def test_syntax_error(box):
    r = run(box, "def f(x)\n    return x\n")
    assert (r.status, r.error_type, r.phase) == (outcome.FAILED, "SyntaxError", outcome.DEFINE)
    assert "def f(x)" in r.traceback


def test_type_error(box):
    r = run(box, "def f(x):\n    return x + 'a'\n")
    assert (r.error_type, r.phase) == ("TypeError", outcome.TEST)
    assert r.tests[0].line == "assert candidate(1) == 2"


def test_index_error(box):
    r = run(box, "def f(x):\n    return [][x]\n")
    assert r.error_type == "IndexError" and r.message.startswith("IndexError: list index out of range")


def test_recursion_error(box):
    r = run(box, "def f(x):\n    return f(x + 1)\n")
    assert (r.status, r.error_type) == (outcome.FAILED, "RecursionError")
    assert "Previous line repeated" in r.traceback or "frames omitted" in r.traceback
    assert len(r.traceback) < 8000


def test_per_test_results(box):
    tests = [tc("assert candidate(1) == 2", "a"), tc("assert candidate(2) == 99", "b"),
             tc("assert candidate(3) == 4", "c")]
    r = run(box, "def f(x):\n    return x + 1\n", tests)
    assert r.status == outcome.FAILED
    assert [t.passed for t in r.tests] == [True, False, True]
    assert r.first_failure is not None and r.first_failure.name == "b"


def test_main_block_does_not_run_and_setup_and_output(box):
    program = "print('defined')\ndef f(x):\n    return helper(x)\nif __name__ == '__main__':\n    raise SystemExit(3)\n"
    setup = "def helper(x):\n    return x + 1\nEXPECTED = {1: 2, 5: 6}\n"
    tests = [tc("assert candidate(1) == EXPECTED[1]"), tc("assert helper(5) == EXPECTED[5]")]
    r = run(box, program, tests, setup=setup)
    assert r.passed, r
    assert "defined" in r.output


def test_entry_point_missing(box):
    r = run(box, "def g(x):\n    return x + 1\n")
    assert (r.error_type, r.phase) == ("NameError", outcome.TEST)


def test_without_entry_point_tests_use_names(box):
    r = box.run("def g(x):\n    return x + 1\n", [tc("assert g(1) == 2")])
    assert r.passed


def test_system_exit_in_a_test_fails_only_that_test(box):
    program = "import sys\ndef f(x):\n    if x == 1:\n        sys.exit(0)\n    return x + 1\n"
    r = run(box, program)
    assert (r.status, r.error_type, r.phase) == (outcome.FAILED, "SystemExit", outcome.TEST)
    assert [t.passed for t in r.tests] == [False, True]


def test_broken_test_source_is_reported_and_others_run(box):
    r = run(box, "def f(x):\n    return x + 1\n",
            [tc("assert candidate(1) ==", "broken"), tc("assert candidate(1) == 2", "ok")])
    assert r.tests[0].error_type == "SyntaxError" and r.tests[1].passed


def test_hostile_exception_str_and_huge_values(box):
    program = (
        "class E(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\n"
        "def f(x):\n    if x == 1:\n        raise E()\n    return 'a' * 10**6\n"
    )
    r = run(box, program)
    assert r.tests[0].error_type == "E"
    assert r.tests[1].error_type == "AssertionError"
    assert len(r.tests[1].message) < 3000 and len(r.tests[1].line) < 3000


def test_keyboard_interrupt_in_test(box):
    r = run(box, "def f(x):\n    raise KeyboardInterrupt\n")
    assert (r.status, r.error_type) == (outcome.FAILED, "KeyboardInterrupt")


def test_memory_error_stops_the_tests(box):
    r = run(box, "def f(x):\n    return bytearray(10**10)\n")
    assert (r.status, r.error_type, r.phase) == (outcome.MEMORY, "MemoryError", outcome.TEST)
    assert [t.error_type for t in r.tests] == ["MemoryError", None]


def test_per_run_limits(box):
    r = run(box, "import time\ndef f(x):\n    time.sleep(0.6)\n    return x + 1\n",
            limits=Limits(wall_seconds=0.3, cpu_seconds=1))
    assert r.status == outcome.TIMEOUT
    assert run(box, "def f(x):\n    return x + 1\n", limits=Limits(wall_seconds=5, file_size_mb=4)).passed


def test_cpu_limit(box):
    r = run(box, "while True:\n    pass\n", limits=Limits(wall_seconds=6, cpu_seconds=1))
    assert r.status == outcome.TIMEOUT and "CPU" in r.message and r.seconds < 4


def test_imports_work_inside(box):
    program = ("import statistics, decimal, encodings.idna, fractions, json, csv, heapq, bisect, hashlib, random\n"
               "def f(x):\n    return x + 1\n")
    assert run(box, program).passed


def test_children_start_from_a_lean_image(box):
    # threading and random register at-fork handlers that would run in every child. Explaining
    # a failed assert needs pytest's rewriter, which imports both: that happens in the server
    # (or a second server), never in the forker the children come from. The harness imports
    # random (and seeds it) only for a program that names it: the one below spells the name
    # in two pieces.
    explained = run(box, "def f(x):\n    return x * 3\n")
    assert explained.error_type == "AssertionError" and "assert 3 == 2" in explained.tests[0].line
    program = (
        "import sys\nprint('PRELOADED', [m for m in ('threading', 'ran' + 'dom') if m in sys.modules])\n"
        "print('BUILTINS', callable(exit), callable(quit), callable(help))\n" + FAIL_LAST
    )
    lean = run(box, program)
    assert "PRELOADED []" in lean.output and "BUILTINS True True True" in lean.output
    drawing = "import random\nprint('DRAW', random.random())\n" + FAIL_LAST
    assert [run(box, drawing).output for _ in range(2)] == ["DRAW 0.8444218515250481\n"] * 2


def test_a_server_keeps_to_its_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    with Sandbox(LIMITS, cpu=len(cpus) + 1) as b:  # an index, wrapping around
        r = run(b, "import os\nprint('CPUS', sorted(os.sched_getaffinity(0)))\ndef f(x):\n    return x + 1\n")
        assert r.passed and f"CPUS [{cpus[1 % len(cpus)]}]" in r.output
        assert os.sched_getaffinity(b.server_pid) == {cpus[1 % len(cpus)]}
    with Sandbox(LIMITS) as b:  # by default, anywhere
        assert os.sched_getaffinity(b.server_pid) == set(cpus)


def test_output_is_captured_and_capped(box):
    r = run(box, "import sys\nprint('hello')\nsys.stderr.write('err\\n')\ndef f(x):\n    return x + 1\n")
    assert r.passed and "hello" in r.output and "err" in r.output


def test_result_round_trips_as_json(box):
    import json

    r = run(box, "def f(x):\n    return x\n")
    assert outcome.ExecutionResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# --------------------------------------------------------------------- the server


def test_restarts_after_the_server_dies():
    with Sandbox(LIMITS) as b:
        old = b.server_pid
        os.kill(old, 9)
        assert run(b, "def f(x):\n    return x + 1\n").passed
        assert b.server_pid != old


def test_restarts_after_the_forker_dies():
    # the server's one child forks the zygotes; without it the server gives up and the
    # client starts a new one, and nothing of the old one is left
    with Sandbox(LIMITS) as b:
        old = b.server_pid
        forker = int(Path(f"/proc/{old}/task/{old}/children").read_text().split()[0])
        old_tree = [forker, *_descendants(forker)]
        os.kill(forker, 9)
        # SIGKILL takes effect asynchronously: until the forker has exited (its socket closed),
        # a zygote it forked earlier could still take the job on the old server.
        deadline = time.monotonic() + 5
        while _alive(forker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run(b, "def f(x):\n    return x + 1\n").passed
        assert b.server_pid != old
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in [old, *old_tree]) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(p) for p in [old, *old_tree])


@needs_root
def test_server_files_under_tmp(monkeypatch, tmp_path):
    # A checkout under /tmp: /tmp is a private tmpfs all the same, with the sandbox's own
    # files (the forker is started from them) bound back into it, read-only.
    import shutil

    import pytest_codegen.sandbox as sandbox_module

    assert str(tmp_path).startswith("/tmp/")
    here = Path(sandbox_module._SERVER).parent
    for path in here.glob("_sandbox_*.py"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "secret.txt").write_text("secret")
    monkeypatch.setattr(sandbox_module, "_SERVER", str(tmp_path / "_sandbox_server.py"))
    with Sandbox(LIMITS) as b:
        program = (f"import os\nprint('CWD', os.getcwd(), sorted(os.listdir({str(tmp_path)!r})))\n"
                   f"open({str(tmp_path / 'x')!r}, 'w')\ndef f(x):\n    return x + 1\n")
        r = run(b, program)
    assert r.message == f"OSError: [Errno 30] Read-only file system: {str(tmp_path / 'x')!r}", r
    assert "CWD /tmp/work [" in r.output and "'_sandbox_forker.py'" in r.output and "secret" not in r.output


def test_failed_warm_up_is_a_clear_error_and_leaves_no_process(monkeypatch, tmp_path):
    # A server whose first child cannot be started (here: its warm-up raises, in a copy of the
    # sandbox's files) answers the client's start with the reason and is gone with its forker.
    import shutil

    import pytest_codegen.sandbox as sandbox_module

    here = Path(sandbox_module._SERVER).parent
    for path in here.glob("_sandbox_*.py"):
        shutil.copy(path, tmp_path / path.name)
    server = tmp_path / "_sandbox_server.py"
    source = server.read_text()
    marker = '        """First-use costs paid at start-up'
    assert marker in source
    server.write_text(source.replace(marker, '        raise RuntimeError("injected")\n' + marker, 1))
    monkeypatch.setattr(sandbox_module, "_SERVER", str(server))

    with pytest.raises(SandboxError, match=r"failed to start: no child could be started: RuntimeError: injected"):
        Sandbox(LIMITS)

    def ours() -> list[int]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if str(tmp_path).encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 5
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ours() == []


def test_persistent_failure_raises_sandbox_error(monkeypatch):
    import pytest_codegen.sandbox as sandbox_module

    b = Sandbox(LIMITS)
    try:
        monkeypatch.setattr(sandbox_module, "_SERVER", "/nonexistent/_sandbox_server.py")
        os.kill(b.server_pid, 9)
        with pytest.raises(SandboxError):
            run(b, "def f(x):\n    return x + 1\n")
    finally:
        b.close()
    with pytest.raises(SandboxError):
        run(b, "def f(x):\n    return x\n")  # closed
    b.close()  # idempotent


@needs_root
def test_concurrent_servers_get_distinct_uids():
    with Sandbox(LIMITS) as a, Sandbox(LIMITS) as b:
        assert a.sandbox_uid != b.sandbox_uid


# ------------------------------------------------------------------ hostile corpus

FAIL_LAST = "\ndef f(x):\n    return -1\n"  # so no hostile program can pass on its merits

HOSTILE = {
    "infinite loop": ("while True:\n    pass\n", {"timeout"}),
    "long sleep": ("import time\ntime.sleep(1000)\n", {"timeout"}),
    "busy test": ("def f(x):\n    while True:\n        x += 1\n", {"timeout"}),
    "memory bomb at once": ("x = bytearray(10**10)\n" + FAIL_LAST, {"memory"}),
    "memory bomb growing": ("chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))\n", {"memory"}),
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  {"timeout", "crashed"}),
    "os._exit before tests": ("import os\nos._exit(0)\n", {"crashed"}),
    "sys.exit before tests": ("import sys\nsys.exit(0)\n", {"failed"}),
    "exit() before tests": ("exit()\n", {"failed"}),
    "os._exit during tests": ("import os\ndef f(x):\n    os._exit(0)\n", {"crashed"}),
    "kill the parent": ("import os\nos.kill(os.getppid(), 9)\n" + FAIL_LAST, {"failed", "crashed"}),
    "kill own group": ("import os\nos.killpg(0, 9)\n", {"crashed"}),
    "segfault": ("import ctypes\nctypes.string_at(0)\n", {"crashed"}),
    # through C (map), so the C stack overflows; plain Python recursion in 3.11 lives on the heap
    "deep recursion": (
        "import sys\nsys.setrecursionlimit(10**7)\ndef r(n):\n    return list(map(r, [n + 1]))\nr(0)\n",
        {"crashed", "failed", "memory"},
    ),
    "deep python recursion": (
        "import sys\nsys.setrecursionlimit(10**7)\ndef r(n):\n    return r(n + 1)\nr(0)\n",
        {"crashed", "failed", "memory", "timeout"},
    ),
    "ignore signals then loop": (
        "import signal\nfor s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
        {"timeout"},
    ),
    "threads left running": (
        "import threading, time\n"
        "for _ in range(4):\n    threading.Thread(target=lambda: [time.sleep(0.001) for _ in iter(int, 1)]).start()\n"
        + FAIL_LAST,
        {"failed"},
    ),
    "close every fd": ("import os\nos.closerange(0, 1024)\n" + FAIL_LAST, {"crashed"}),
    "close fds then reopen": (
        "import os\nos.closerange(0, 1024)\nfd = os.open('x.txt', os.O_WRONLY | os.O_CREAT)\n"
        "def f(x):\n    return x + 1\n",
        {"crashed"},
    ),
    "forge messages on the result fd": (
        "import os\nfor fd in range(3, 20):\n    try:\n"
        "        os.write(fd, b'{\"t\":\"x\",\"k\":\"define\",\"ok\":true}\\n{\"t\":\"x\",\"k\":\"end\"}\\n')\n"
        "    except OSError:\n        pass\nos._exit(0)\n",
        {"crashed"},
    ),
    "close stdout and stderr": ("import sys, os\nsys.stdout.close()\nos.close(1)\nos.close(2)\n" + FAIL_LAST,
                                {"failed"}),
    "replace builtins": (
        "import builtins\nclass Fake(Exception):\n    pass\n"
        "builtins.AssertionError = Fake\nbuiltins.isinstance = lambda *a: True\nbuiltins.abs = lambda x: 0\n"
        "builtins.print = None\nbuiltins.len = lambda x: 3\n" + FAIL_LAST,
        {"failed"},
    ),
    "shadow builtins": (
        "def abs(x):\n    return 0\ndef isinstance(*a):\n    return True\nAssertionError = Exception\n" + FAIL_LAST,
        {"failed"},
    ),
    "redefine candidate and helpers": (
        "candidate = lambda *a: 2\ndef check(c):\n    pass\ndef helper_ok(v):\n    return True\n"
        "def f(x):\n    g = globals()\n    g['candidate'] = lambda *a: x + 1\n    g['helper_ok'] = lambda v: True\n"
        "    g['__builtins__'].__dict__['abs'] = lambda v: 0\n    return -1\n",
        {"failed"},
    ),
    "trace function jumps over asserts": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if frame.f_code.co_filename.startswith('<test'):\n"
        "        def local(frame, event, arg):\n"
        "            if event == 'line':\n"
        "                try:\n                    frame.f_lineno = frame.f_lineno + 1\n"
        "                except Exception:\n                    pass\n"
        "            return local\n"
        "        return local\n"
        "sys.settrace(tracer)\n" + FAIL_LAST,
        {"failed"},
    ),
    "tamper with the harness module": (
        "import __main__, sys\n"
        "for name, value in list(vars(__main__).items()):\n"
        "    if isinstance(value, dict) and 'abs' in value:\n"
        "        value['abs'] = lambda v: 0\n        value['isinstance'] = lambda *a: True\n"
        "__main__.RESULT_FD = 1\n__main__._ESC = lambda s: '\"x\"'\n"
        "sys.modules['_pytest.assertion.rewrite'] = None\n" + FAIL_LAST,
        {"failed"},
    ),
    "100 MB of output": ("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 10**6)\n" + FAIL_LAST,
                         {"failed"}),
    "raise SystemExit in test": ("def f(x):\n    raise SystemExit(0)\n", {"failed"}),
}

# These need a test's own tmp_path, port or pid check; they are in the tests below.
HOSTILE_TESTS = [
    tc("assert candidate(1) == 2", "one"),
    tc("assert isinstance(candidate(2), int) and abs(candidate(2) - 3) < 1e-9", "builtins"),
    tc("def check(candidate):\n    assert candidate(5) == 6\n\ncheck(f)\n", "check"),
    tc("assert helper_ok(candidate(7))", "helper"),
]
HOSTILE_SETUP = "def helper_ok(v):\n    return v == 8\n"


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile(box, name):
    program, expected = HOSTILE[name]
    t0 = time.monotonic()
    r = box.run(program, HOSTILE_TESTS, setup=HOSTILE_SETUP, entry_point="f")
    elapsed = time.monotonic() - t0
    assert not r.passed, r
    assert r.status in expected, (r.status, r.error_type, r.message)
    assert elapsed < LIMITS.wall_seconds + 5, elapsed
    assert len(r.output) <= LIMITS.output_bytes
    assert_nothing_left(box)
    assert_still_healthy(box)
    if name == "100 MB of output":
        assert r.detail["output_bytes"] >= 100 * 10**6 and r.detail["output_truncated"]
        assert len(r.output) == LIMITS.output_bytes
    if name in ("shadow builtins", "redefine candidate and helpers", "trace function jumps over asserts"):
        assert [t.error_type for t in r.tests] == ["AssertionError"] * 4, r.tests
    if name == "replace builtins":
        # every test fails; pytest's own explanation helpers use the (tampered) builtins
        # module, so the failure may surface as their exception rather than AssertionError
        assert all(not t.passed and t.error_type for t in r.tests), r.tests
    if name == "segfault":
        assert r.error_type == "SIGSEGV"
    if name in ("os._exit before tests", "close every fd"):
        assert r.error_type == "exit without result"
    if name == "sys.exit before tests":
        assert (r.error_type, r.phase) == ("SystemExit", outcome.DEFINE)


def test_hostile_daemon_is_killed(box):
    name = f"cg-{uuid.uuid4().hex[:8]}"
    program = (
        "import os, sys, time\n"
        "r, w = os.pipe()\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        __import__('ctypes').CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)  # PR_SET_NAME\n"
        "        os.write(1, ('DAEMON %d\\n' % os.getpid()).encode())\n"
        "        os.write(w, b'x')\n"
        "        while True:\n"
        "            time.sleep(1)\n"
        "    os._exit(0)\n"
        "os.read(r, 1)\n" + FAIL_LAST
    )
    r = run(box, program)
    assert r.status == outcome.FAILED
    assert "DAEMON" in r.output
    assert_nothing_left(box, (name,))
    assert_still_healthy(box)


def test_hostile_fork_bomb_leaves_nothing(box):
    r = run(box, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert r.status in (outcome.TIMEOUT, outcome.CRASHED)
    assert_nothing_left(box)
    assert_still_healthy(box)


@needs_root
def test_hostile_writes_stay_inside(box, tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep")
    marker = f"pytest-codegen-evil-{uuid.uuid4().hex}"
    program = (
        "import os\nreport = []\n"
        f"for path in [{str(tmp_path / 'evil.txt')!r}, {str(sentinel)!r}, '/tmp/{marker}', '/var/tmp/{marker}',\n"
        f"             '/dev/shm/{marker}', {str(REPO / marker)!r}, '/root/{marker}', '/etc/{marker}', 'local.txt']:\n"
        "    try:\n"
        "        with open(path, 'w') as fh:\n"
        "            fh.write('evil')\n"
        "        report.append('wrote ' + path)\n"
        "    except OSError as e:\n"
        "        report.append('%s: %s' % (path, type(e).__name__))\n"
        "print(report)\n" + FAIL_LAST
    )
    r = run(box, program)
    assert r.status == outcome.FAILED
    assert sentinel.read_text() == "keep"
    assert not (tmp_path / "evil.txt").exists()
    for place in ("/tmp", "/var/tmp", "/dev/shm", str(REPO), "/root", "/etc"):
        assert not Path(place, marker).exists(), place
    # its own scratch space works, and is gone with the run; /tmp is a private tmpfs, or
    # read-only where the interpreter itself lives under /tmp (a checkout in /tmp, say)
    assert "wrote local.txt" in r.output
    assert f"wrote /tmp/{marker}" in r.output or f"/tmp/{marker}: OSError" in r.output
    r2 = run(box, f"import os\nprint(os.path.exists('/tmp/{marker}'), os.listdir('.'))\n" + FAIL_LAST)
    assert "False []" in r2.output


@needs_root
def test_scratch_space_is_empty_for_the_next_run(box):
    # A thread keeps creating files after the tests passed, right up to the harness's exit;
    # the next run still starts with empty scratch directories and a fresh work dir. (The
    # scratch space: these; what is mounted in them holds the interpreter or this checkout,
    # read-only, where they live under /tmp.)
    dirs = "('/tmp', '/var/tmp', '/dev/shm', '/run/lock', '.')"
    program = (
        "import itertools, os, threading\n"
        "def spam():\n    for i in itertools.count():\n"
        f"        for d in {dirs}:\n"
        "            try:\n                open('%s/left-%d' % (d, i), 'w').close()\n"
        "            except OSError:\n                pass\n"
        "threading.Thread(target=spam, daemon=True).start()\n"
        "import time\ntime.sleep(0.05)\ndef f(x):\n    return x + 1\n"
    )
    look = (
        f"import os\nwritable = [d for d in {dirs} if os.path.isdir(d) and os.access(d, os.W_OK)]\n"
        "print('LEFT', sorted((os.path.realpath(d), n) for d in writable for n in os.listdir(d)\n"
        "                     if not os.path.ismount(os.path.join(d, n))))\n"
        "print('CWD', os.getcwd())\n"
        "print('WORK', oct(os.stat('.').st_mode & 0o777), os.stat('.').st_uid)\n" + FAIL_LAST
    )
    # and what a run did to the work dir itself is undone: its mode, or a new one in its place
    chmod = "import os\nos.chmod('.', 0o777)\ndef f(x):\n    return x + 1\n"
    replace = (  # the work dir's parent (/tmp, sticky) lets it
        "import os\nwork = os.getcwd()\nos.chdir('..')\ntry:\n    os.rmdir(work)\n    os.mkdir(work, 0o700)\n"
        "except PermissionError:\n    pass\ndef f(x):\n    return x + 1\n"
    )
    for before in (program, program, chmod, replace, program):
        assert run(box, before).passed
        r = run(box, look)
        work = r.output.split("CWD ")[1].split()[0]
        assert work == "/tmp/work"
        left = eval(r.output.split("LEFT ")[1].splitlines()[0])
        assert not [entry for entry in left if entry != (os.path.dirname(work), "work")], left
        assert f"WORK 0o700 {box.sandbox_uid}" in r.output


LEAVE_STATE = (
    "import ctypes, os\n"
    "def attempt(f):\n    try:\n        f()\n    except OSError:\n        pass\n"
    "attempt(lambda: os.setxattr('.', 'user.leak', b'secret'))\n"
    "attempt(lambda: os.utime('.', (123456789, 987654321)))\n"
    "libc = ctypes.CDLL(None)\n[libc.shmget(0, 4096, 0o1600) for _ in range(300)]  # a listing of pages\n"
    "libc.shmget(4242, 4096, 0o1666)\n"
    "attempt(lambda: os.chmod(os.path.dirname(os.getcwd()), 0o555))\n"
    "attempt(lambda: open('/run/leak', 'w').close())\n"
    "def f(x):\n    return x + 1\n"
)
FIND_STATE = (
    "import ctypes, os\ntry:\n    os.getxattr('.', 'user.leak')\n    print('XATTR found')\n"
    "except OSError:\n    pass\n"
    "print('MTIME', int(os.stat('.').st_mtime), 'SHM', ctypes.CDLL(None).shmget(4242, 0, 0))\n"
    "print('SEGMENTS', len(open('/proc/sysvipc/shm').read().splitlines()) - 1)\n"
    "print('PARENT', oct(os.stat(os.path.dirname(os.getcwd())).st_mode & 0o7777), 'RUN', os.path.exists('/run/leak'))\n"
    + FAIL_LAST
)


def assert_no_state_left(box: Sandbox) -> None:
    assert run(box, LEAVE_STATE).passed
    r = run(box, FIND_STATE)
    assert "XATTR found" not in r.output and "MTIME 987654321" not in r.output
    assert "SHM -1" in r.output and "SEGMENTS 0" in r.output  # its SysV segments are gone with it
    assert "RUN False" in r.output and ("PARENT 0o1777" in r.output or "PARENT 0o755" in r.output), r.output


@needs_root
def test_a_run_leaves_no_state_for_the_next(box):
    # what the old per-run tmpfs mounts dropped by themselves: attributes of the work dir,
    # SysV IPC objects, the scratch directories' modes, /run
    assert_no_state_left(box)


@needs_root
def test_hostile_deletes_nothing_outside(box, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "a.txt").write_text("a")
    repo_file = REPO / "pytest_codegen" / "outcome.py"
    before = repo_file.read_bytes()
    program = (
        "import os, shutil\nreport = []\n"
        f"for action in [lambda: shutil.rmtree({str(victim)!r}), lambda: os.remove({str(repo_file)!r}),\n"
        f"               lambda: shutil.rmtree({str(REPO / 'tests')!r})]:\n"
        "    try:\n        action()\n        report.append('done')\n"
        "    except OSError as e:\n        report.append(type(e).__name__)\n"
        "print(report)\n" + FAIL_LAST
    )
    r = run(box, program)
    assert r.status == outcome.FAILED
    assert (victim / "a.txt").read_text() == "a"
    assert repo_file.read_bytes() == before
    assert Path(__file__).exists()
    assert "done" not in r.output


@pytest.mark.slow  # waits out connection attempts
@needs_root
def test_hostile_network_is_unreachable(box):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    got = []

    def accept() -> None:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            got.append(conn.recv(100))
            conn.close()

    t = threading.Thread(target=accept)
    t.start()
    program = (
        "import socket\n"
        "try:\n"
        f"    s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        "    s.sendall(b'stolen')\n"
        "    print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('BLOCKED', type(e).__name__, e)\n" + FAIL_LAST
    )
    try:
        r = run(box, program)
    finally:
        t.join()
        listener.close()
    assert r.status == outcome.FAILED
    assert "BLOCKED" in r.output and "CONNECTED" not in r.output
    assert got == []


@needs_root
def test_hostile_cannot_signal_or_see_the_caller(box):
    program = (
        "import os, signal\nreport = []\n"
        f"for pid in ({os.getpid()}, {box.server_pid}, 1):\n"
        "    try:\n        os.kill(pid, signal.SIGKILL)\n        report.append('killed %d' % pid)\n"
        "    except OSError as e:\n        report.append(type(e).__name__)\n"
        "print(report, os.getuid(), os.environ.get('HOME'))\n" + FAIL_LAST
    )
    r = run(box, program)
    assert r.status == outcome.FAILED
    assert "killed" not in r.output
    assert f"{box.sandbox_uid} /tmp/work" in r.output
    assert_still_healthy(box)


# ------------------------------------------------------------------ degraded paths


@pytest.fixture(scope="module", params=["userns", "none"])
def degraded(request):
    if request.param == "userns" and not IS_ROOT:
        pytest.skip("simulating the unprivileged path needs root (it becomes nobody)")
    with Sandbox(LIMITS, degrade=request.param) as b:
        yield b


def test_degraded_isolation_line(degraded):
    assert degraded.sandbox_uid is None
    assert "not root" in degraded.isolation
    assert degraded.mode in ("userns", "none")


@pytest.mark.slow  # a degraded sandbox server per mode, and memory/timeout limits hit
def test_degraded_outcomes(degraded):
    assert run(degraded, "def f(x):\n    return x + 1\n").passed
    r = run(degraded, "def f(x):\n    return x * 2\n", [tc("assert candidate(2) == 5")])
    assert r.error_type == "AssertionError" and "assert 4 == 5" in r.tests[0].line
    assert run(degraded, "while True:\n    pass\n").status == outcome.TIMEOUT
    assert run(degraded, "x = bytearray(10**10)\n").status == outcome.MEMORY
    assert run(degraded, "import os\nos._exit(0)\n").error_type == "exit without result"


@pytest.mark.slow
def test_degraded_daemon_and_fork_bomb_are_killed(degraded):
    name = f"cg-{uuid.uuid4().hex[:8]}"
    program = (
        "import os, time\nr, w = os.pipe()\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        __import__('ctypes').CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)  # PR_SET_NAME\n"
        "        os.write(1, ('DAEMON %d\\n' % os.getpid()).encode())\n        os.write(w, b'x')\n"
        "        while True:\n            time.sleep(1)\n    os._exit(0)\n"
        "os.read(r, 1)\n" + FAIL_LAST
    )
    r = run(degraded, program)
    assert "DAEMON" in r.output
    assert_nothing_left(degraded, (name,))
    r = run(degraded, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert r.status in (outcome.TIMEOUT, outcome.CRASHED)
    deadline = time.monotonic() + 5
    # what may stay: the forker, the next run's zygote and (in a PID namespace) its first process
    stay = 3 if "pid" in degraded.isolation else 2
    while [p for p in _descendants(degraded.server_pid) if _alive(p)][stay:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len([p for p in _descendants(degraded.server_pid) if _alive(p)]) <= stay
    assert_still_healthy(degraded)


def test_degraded_candidates_cannot_reach_the_forker(degraded):
    # Same uid as the forker here: it is not dumpable, so its memory is out of reach.
    program = (
        "import os\ntry:\n    open('/proc/%d/mem' % os.getppid(), 'r+b')\n    print('MEM open')\n"
        "except OSError as e:\n    print('MEM', type(e).__name__)\n" + FAIL_LAST
    )
    assert "MEM PermissionError" in run(degraded, program).output


@needs_root
def test_degraded_killing_the_forker_leaves_nothing(degraded):
    # Killing its parent costs the candidate's server (the client starts another); what it
    # started must not outlive that server. (Degraded servers run as nobody when root.)
    before = {p for p, _state in _proc_uid_states(NOBODY)}
    sleeper = (
        "import os, time\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(300)\n    os._exit(0)\n"
        "time.sleep(0.2)\nos.kill(os.getppid(), 9)\ntime.sleep(1)\n" + FAIL_LAST
    )
    with pytest.raises(SandboxError):  # it kills the forker of both servers it is given
        run(degraded, sleeper)
    deadline = time.monotonic() + 5
    while True:
        # Live servers' own processes do not count: this one's, its explaining one's, and
        # those of degraded servers another xdist worker started meanwhile (nobody's too).
        servers = set()
        for server in _live_servers():
            servers |= {server, *_descendants(server)}
        left = {p for p, state in _proc_uid_states(NOBODY) if state[0] != "Z"} - before - servers
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left
    assert_still_healthy(degraded)


def test_degraded_userns_leaves_no_state(degraded):
    if degraded.mode != "userns":
        pytest.skip("without namespaces runs share the caller's files and IPC")
    assert_no_state_left(degraded)


def test_degraded_userns_blocks_network_and_writes(degraded, tmp_path):
    if degraded.mode != "userns":
        pytest.skip("only the user-namespace mode isolates network and files")
    program = (
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
        "except OSError as e:\n    print('BLOCKED', type(e).__name__)\n"
        f"try:\n    open({str(REPO / 'evil.txt')!r}, 'w')\n"
        "except OSError as e:\n    print('NOWRITE', type(e).__name__)\n"
        + FAIL_LAST
    )
    r = run(degraded, program)
    assert "BLOCKED" in r.output and "NOWRITE" in r.output
    assert not (REPO / "evil.txt").exists()


def test_tests_draw_the_same_random_inputs_in_every_run():
    # HumanEval/38, /50 and /53 draw their inputs from `random` without a seed: seeded for
    # every test (`sandbox.TEST_SEED`), on the server's side and in the candidate's process, their failure
    # messages (a refiner's feedback) are the same in every run and every server.
    checked = TestCase("checked", "import random\nx = random.randint(0, 10**9)\nassert f(x) == x + 1, x\n")
    in_process = TestCase("in_process", "import random\nassert f.__name__ == str(random.random())\n")
    draws = []
    for _ in range(2):
        with Sandbox(LIMITS) as box:
            for _ in range(2):
                r = box.run("def f(x):\n    return x\n", [checked, in_process], entry_point="f", limits=LIMITS)
                assert [t.passed for t in r.tests] == [False, False], r
                draws.append([t.message for t in r.tests])
    assert all(d == draws[0] for d in draws), draws
    assert draws[0][0].startswith("AssertionError: ") and draws[0][0] != draws[0][1]


def test_calls_made_in_another_order_than_the_source_shows_are_answered(box):
    # Literal calls are asked ahead in the order of the source; Python makes these in another.
    tests = [
        tc("assert (f(2) if f(1) == 2 else 0) == 3\n"),
        tc("d = {}\nd[f(10)] = f(20)\nassert d == {11: 21}\n"),
        tc("assert f(5) == 6 or f(6) == 0\n"),  # a call never made: left over, no harm
    ]
    r = run(box, "def f(x):\n    return x + 1\n", tests)
    assert r.passed, r


def test_two_lone_surrogates_do_not_pass_for_the_character_they_would_pair_into(box):
    r = run(box, "def f(x):\n    return '\\ud83d\\ude00'\n", [tc("assert f(2) == '\\U0001F600'\n")])
    assert r.error_type == "AssertionError", r


def test_a_program_cannot_replay_the_tests_draws():
    # Tests and programs are seeded, but not alike: a program that draws (its `random` seeded
    # for it, or seeded by itself as the tests once were) does not return what a test that
    # draws its expected value expects; and the tests' seed is in no file or process the
    # program can read.
    test = TestCase("t", "import random\nassert f() == [random.random() for _ in range(3)]\n")
    for seeding in ("", "random.seed(0)\n"):
        program = f"import random\n{seeding}def f():\n    return [random.random() for _ in range(3)]\n"
        with Sandbox(LIMITS) as box:
            r = box.run(program, [test], entry_point="f", limits=LIMITS)
        assert r.error_type == "AssertionError", r
    # An in-process test runs in the candidate's process, which can read its seed: not the
    # checked tests' one.
    draws = [
        TestCase("checked", "import random\nx = random.random()\nassert f(x) == -1, repr(x)\n"),
        TestCase("in_process", "import random\nassert f.__name__ == repr(random.random())\n"),
    ]
    with Sandbox(LIMITS) as box:
        r = box.run("def f(x):\n    return x\n", draws, entry_point="f", limits=LIMITS)
    checked_draw = re.match(r"AssertionError: ([0-9.]+)", r.tests[0].message)
    in_process_draw = re.search(r"== '([0-9.]+)'", r.tests[1].message)
    assert checked_draw and in_process_draw, r.tests
    assert float(checked_draw[1]) != float(in_process_draw[1])
    seed = str(TEST_SEED)
    search = (
        "import glob, os\n"
        "found = []\n"
        f"for path in glob.glob({str(REPO / 'pytest_codegen')!r} + '/**', recursive=True) + "
        "glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        with open(path, 'rb') as f:\n"
        f"            found += [path] if {seed!r}.encode() in f.read() else []\n"
        "    except OSError:\n"
        "        pass\n"
        "print('FOUND', found)\n"
    )
    with Sandbox(LIMITS) as box:
        r = run(box, search + FAIL_LAST)
    assert "FOUND []" in r.output, r.output


def test_a_program_gets_the_same_draws_and_string_order_in_every_run():
    # A program that draws from `random`, or returns (or prints) a set of strings, in the order
    # of their hashes: the same verdict and the same failure message in every run and server.
    program = (
        "import random\n"
        "def f():\n"
        "    words = {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta'}\n"
        "    print(list(words))\n"
        "    return [random.random(), list(words)]\n"
    )
    # the test's own message lists a set in the order of the server's hashing
    test = TestCase("t", "assert f() == [], list({'one', 'two', 'three', 'four', 'five', 'six', 'seven'})\n")
    seen = []
    for _ in range(2):
        with Sandbox(LIMITS) as box:
            for _ in range(2):
                r = box.run(program, [test], entry_point="f", limits=LIMITS)
                assert not r.passed
                seen.append((r.tests[0].message, r.output))
    assert all(s == seen[0] for s in seen), seen
    assert "0.844421851525" in seen[0][0], seen[0]  # random.seed(0), then random.random()


def test_the_callers_python_variables_do_not_reach_the_sandbox(monkeypatch, tmp_path):
    # The sandbox's interpreters honour PYTHON* variables (they run without -E, for the hash
    # seed), so every environment they get is made by the sandbox itself.
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "startup.py"))
    monkeypatch.setenv("PYTHONWARNINGS", "error")
    monkeypatch.setenv("PYTHONINSPECT", "1")
    program = (
        "import os, sys\n"
        f"print('PATH0', '' in sys.path or os.getcwd() in sys.path, {str(tmp_path)!r} in sys.path)\n"
        "print('VARS', sorted(k for k in os.environ if k.startswith('PYTHON')))\n"
    ) + FAIL_LAST
    with Sandbox(LIMITS) as box:
        r = run(box, program)
    assert "PATH0 False False" in r.output, r.output
    assert "VARS ['PYTHONHASHSEED', 'PYTHONIOENCODING']" in r.output, r.output
