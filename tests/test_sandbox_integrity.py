"""Sandbox integrity (issue 12): clean-up that never fails a run, outcome classes from a closed
set, load-independent limits, a venv under a closed home. Real `Sandbox` servers, no mocks."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest

from pytest_codegen import outcome
from pytest_codegen.problems import TestCase
from pytest_codegen.sandbox import Limits, Sandbox

LIMITS = Limits(wall_seconds=5.0, cpu_seconds=5.0, memory_mb=256)
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="namespaces and a sandbox uid need root")
FAIL_LAST = "\ndef f(x):\n    return -1\n"
CHECK_F = [TestCase("one", "assert candidate(1) == 2"), TestCase("five", "assert candidate(5) == 6")]
GOOD = "def f(x):\n    return x + 1\n"


@pytest.fixture(scope="module")
def box():
    with Sandbox(LIMITS) as b:
        yield b


def run(box: Sandbox, program: str, tests=CHECK_F, **kw) -> outcome.ExecutionResult:
    return box.run(program, tests, entry_point="f", **kw)


# ------------------------------------------------------------------ scratch clean-up

# A tree deeper than any recursive removal goes (shutil.rmtree: ~1000 levels), made with
# relative steps so no path grows past PATH_MAX, in the work dir, /tmp and /dev/shm (where
# writable: a sandbox without namespaces has no scratch space of its own).
DEEP_TREE = (
    "import os\n"
    "def deep(where, levels=2500):\n"
    "    try:\n        os.chdir(where)\n    except OSError:\n        return\n"
    "    for _ in range(levels):\n"
    "        try:\n            os.mkdir('d')\n            os.chdir('d')\n        except OSError:\n            break\n"
    "    try:\n        open('leaf', 'w').close()\n    except OSError:\n        pass\n"
    "start = os.getcwd()\n"
    "for where in (start, '/tmp', '/dev/shm'):\n    deep(where)\n"
    "os.chdir(start)\n"
)


@pytest.mark.parametrize("ending", ["passes", "times out"])
def test_a_deep_directory_tree_gets_a_verdict_and_the_next_run_is_fine(box, ending):
    server = box.server_pid
    if ending == "passes":
        r = run(box, DEEP_TREE + GOOD)
        assert r.passed, r
    else:
        r = run(box, DEEP_TREE + "while True:\n    pass\n", limits=Limits(wall_seconds=3, cpu_seconds=1))
        assert r.status == outcome.TIMEOUT, r
    look = (  # the scratch dirs, but for what holds the interpreter (a venv under /tmp), mounted there
        "import os\ndef scratch(d):\n    try:\n        open(d + '/.probe', 'w').close()\n"
        "        os.remove(d + '/.probe')\n        return True\n    except OSError:\n        return False\n"
        "print('LEFT', sorted(os.listdir('.')), sorted(n for d in ('/tmp', '/dev/shm') if scratch(d)"
        " for n in os.listdir(d) if n != 'work' and not os.path.ismount(os.path.join(d, n))))\n"
        + GOOD
    )
    after = run(box, look)
    assert after.passed, after
    assert "LEFT [] []" in after.output
    assert box.server_pid == server  # the same server: nothing broke


def test_remove_tree_goes_any_depth_without_recursion(tmp_path):
    sys.path.insert(0, str(Path(outcome.__file__).parent))
    try:
        import _sandbox_scratch
    finally:
        sys.path.pop(0)
    top = tmp_path / "top"
    top.mkdir()
    here = os.getcwd()
    try:
        os.chdir(top)
        for _ in range(1500):
            os.mkdir("d")
            os.chdir("d")
        Path("leaf").write_text("x")
        os.symlink(str(tmp_path / "outside"), "link")
        os.chdir(here)
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside" / "keep").write_text("keep")
        assert _sandbox_scratch.remove_tree(str(top))
        assert not top.exists()
        assert (tmp_path / "outside" / "keep").read_text() == "keep"  # the link is not followed
    finally:
        os.chdir(here)
        if top.exists():  # pytest's own clean-up of tmp_path would hit the recursion limit
            os.system(f"rm -rf {str(top)!r}")


@needs_root
def test_scratch_filled_to_its_inode_limit_is_clean_for_the_next_run(box):
    program = (
        "import os\nn = 0\n"
        "for d in ('.', '/tmp', '/dev/shm'):\n"
        "    try:\n        os.chdir(d)\n    except OSError:\n        continue\n"
        "    while n < 20000:\n"
        "        try:\n            os.mkdir('x%d' % n)\n            n += 1\n"
        "        except OSError:\n            break\n"
        + GOOD
    )
    assert run(box, program).passed
    r = run(box, "import os\nprint('LEFT', os.listdir('.'))\nos.mkdir('fresh')\n" + GOOD)
    assert r.passed, r
    assert "LEFT []" in r.output


# ------------------------------------------------------------------ outcome classes


def test_an_exception_named_passed_is_not_a_pass(box):
    program = "passed = type('passed', (Exception,), {})\ndef f(x):\n    raise passed()\n"
    r = run(box, program)
    assert not r.passed and r.status == outcome.FAILED
    assert r.outcome_class == "passed (exception)"
    for name in ("timeout", "memory", "crashed", "no code", "error", "unknown", "PASSED", "Failed"):
        assert outcome.outcome_class(outcome.FAILED, name) == f"{name} (exception)"


def test_control_characters_and_ansi_are_stripped_from_class_names(box):
    program = (
        "E = type('\\x1b[31mRed\\x1b[0m\\u202eError\\x07', (Exception,), {})\n"
        "def f(x):\n    raise E()\n"
    )
    r = run(box, program)
    assert r.outcome_class == "RedError"
    assert r.error_type == "RedError"
    assert all(t.error_type == "RedError" for t in r.tests)


def test_tables_count_passes_from_the_passed_flag_only():
    from pytest_codegen.record import Record
    from pytest_codegen.report import outcome_table
    from pytest_codegen.stats import pass_at_1

    records = [Record.from_dict(r) for r in (
        {"benchmark": "b", "problem_id": "p1", "passed": True, "outcome_class": "passed"},
        {"benchmark": "b", "problem_id": "p2", "passed": False, "outcome_class": "passed"},
        {"benchmark": "b", "problem_id": "p3", "passed": False, "outcome_class": "\x1b[31mX"},
    )]
    table = outcome_table(records).splitlines()
    assert table[0].split() == ["benchmark", "items", "passed", "pass@1", "X", "unknown"]
    assert table[2].split() == ["b", "3", "1", "0.333", "1", "1"]
    assert pass_at_1(records) == {"b": pytest.approx(1 / 3)}


# ------------------------------------------------------------------ a venv under a closed home

SANDBOX_FROM_VENV = """
import sys
from pytest_codegen.problems import TestCase
from pytest_codegen.sandbox import Limits, Sandbox
with Sandbox(Limits(wall_seconds=5, cpu_seconds=5)) as box:
    r = box.run("import os\\ndef f(x):\\n    return x + 1\\n", [TestCase("t", "assert candidate(1) == 2")],
                entry_point="f")
    print("STATUS", r.status)
    print("ISOLATION", box.isolation)
"""


@needs_root
def test_a_venv_under_a_closed_directory_runs_the_sandbox(tmp_path):
    # As root with the venv in /root/.cache (a closed home): the venv's bin/python lies under
    # the directory the sandbox hides; the server must still start its forker from it.
    import subprocess

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    venv = home / ".cache" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": os.pathsep.join([str(Path(outcome.__file__).parents[1]), *site])}
    done = subprocess.run([str(venv / "bin" / "python"), "-c", SANDBOX_FROM_VENV], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "STATUS passed" in done.stdout, done.stdout + done.stderr
    assert "minimal read-only root" in done.stdout


# ------------------------------------------------------------------ load-independent limits


def test_an_infinite_loop_is_a_cpu_timeout_and_a_sleep_a_wall_timeout(box):
    spin = run(box, "while True:\n    pass\n", limits=Limits(wall_seconds=10, cpu_seconds=0.5))
    assert (spin.status, spin.error_type, spin.detail["timeout"]) == ("timeout", "timeout (cpu)", "cpu")
    assert spin.detail["cpu_seconds"] >= 0.45 and spin.seconds < 5  # the fraction counts
    assert spin.outcome_class == "timeout"
    sleep = run(box, "import time\ntime.sleep(100)\n", limits=Limits(wall_seconds=0.5, cpu_seconds=5))
    assert (sleep.status, sleep.error_type, sleep.detail["timeout"]) == ("timeout", "timeout (wall)", "wall")
    assert "wall-clock" in sleep.message


def test_cpu_seconds_are_filled_for_a_cpu_bound_run_that_passes(box):
    program = "import time\nwhile time.process_time() < 0.6:\n    pass\n" + GOOD
    r = run(box, program)
    assert r.passed
    assert 0.55 <= r.detail["cpu_seconds"] < 3


def test_the_outcome_class_is_the_first_failing_tests(box):
    tests = [TestCase("ok", "assert candidate(1) == 2"), TestCase("wrong", "assert candidate(2) == 99"),
             TestCase("hangs", "candidate(-1)"), TestCase("later", "assert candidate(3) == 4")]
    program = "def f(x):\n    while x < 0:\n        pass\n    return x + 1\n"
    r = box.run(program, tests, entry_point="f", limits=Limits(wall_seconds=10, cpu_seconds=0.5), explain=False)
    assert (r.status, r.error_type, r.phase) == ("failed", "AssertionError", "test")
    assert r.outcome_class == "AssertionError"
    assert [t.error_type for t in r.tests] == [None, "AssertionError", "timeout (cpu)", None]
    assert r.tests[3].message == "not run (timeout)"
    crash = box.run("import os\ndef f(x):\n    if x < 0:\n        os._exit(3)\n    return x + 1\n", tests,
                    entry_point="f", explain=False)
    assert (crash.status, crash.error_type) == ("failed", "AssertionError")
    assert crash.tests[2].error_type == "exit without result"
    memory = box.run("def f(x):\n    if x < 0:\n        return bytearray(10**10)\n    return x + 1\n", tests,
                     entry_point="f", explain=False)
    assert (memory.status, memory.error_type) == ("failed", "AssertionError")
    assert memory.tests[2].error_type == "MemoryError"


def test_limits_from_settings_judge_by_cpu_time_under_load():
    # Every core busy with a CPU hog (two per core): a program that needs 1.2 s of CPU within
    # a 2 s limit still passes, though it takes far more than 2 s of wall clock.
    import subprocess

    from pytest_codegen.settings import RunSettings

    limits = Limits.from_settings(RunSettings(exec_timeout=2.0, exec_memory_mb=256))
    assert limits.cpu_seconds == 2.0 and limits.wall_seconds >= 3 * 2.0
    hogs = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"])
            for _ in range(2 * len(os.sched_getaffinity(0)))]
    try:
        with Sandbox(limits) as loaded:
            program = "import time\nwhile time.process_time() < 1.2:\n    pass\n" + GOOD
            r = run(loaded, program, explain=False)
            assert r.passed, r
            spin = run(loaded, "while True:\n    pass\n", explain=False)
            assert (spin.status, spin.error_type) == ("timeout", "timeout (cpu)")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


# ------------------------------------------------------------------ state between runs

KEY_CALLS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}.get(os.uname().machine)
TRY_KEYS = (
    "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "add_key, request_key, keyctl = {calls}\n"
    "tries = [\n"
    "    libc.syscall(add_key, b'user', b'leak', b'secret', 6, ctypes.c_long(-4)),  # the user keyring\n"
    "    libc.syscall(add_key, b'keyring', b'box', None, 0, ctypes.c_long(-3)),  # the session one\n"
    "    libc.syscall(request_key, b'user', b'leak', None, ctypes.c_long(0)),\n"
    "    libc.syscall(keyctl, 0, ctypes.c_long(-4), 1),  # KEYCTL_GET_KEYRING_ID, creating it\n"
    "    libc.syscall(keyctl, 1, None),  # KEYCTL_JOIN_SESSION_KEYRING\n"
    "]\n"
    "print('KEYS', tries, ctypes.get_errno())\n"
) + GOOD
LEAVE_QUEUE = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "print('MQ', libc.mq_open(b'/leak', os.O_CREAT | os.O_RDWR, 0o666, None))\n" + GOOD
)
FIND_QUEUE = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "print('MQOPEN', libc.mq_open(b'/leak', os.O_RDWR, 0, None))\n" + FAIL_LAST
)


@pytest.mark.skipif(KEY_CALLS is None, reason="the key calls' numbers are known here for x86_64 and aarch64 only")
def test_no_kernel_key_can_be_made_or_read(box):
    """Kernel keys outlive processes, so a run could leave data for the next in its uid's
    keyrings: every key call fails (EPERM) wherever the forker's filter is in force."""
    if "kernel keys" not in box.isolation:
        pytest.skip(f"no seccomp filter here: {box.isolation}")
    r = run(box, TRY_KEYS.format(calls=KEY_CALLS))
    assert r.passed, r
    assert f"KEYS [-1, -1, -1, -1, -1] {errno.EPERM}" in r.output, r.output


@needs_root
def test_message_queues_do_not_survive_to_the_next_run(box):
    left = run(box, LEAVE_QUEUE)
    assert left.passed, left
    assert int(left.output.split("MQ ")[1].split()[0]) >= 0, left.output
    found = run(box, FIND_QUEUE)
    assert "MQOPEN -1" in found.output, found.output


def test_a_forged_sandbox_error_is_the_programs_failure(box):
    """The result channel is the candidate's once its code runs: a message claiming the sandbox
    broke is a verdict on the program (not an item without one, retried on every resume)."""
    program = ("import os\nos.write(3, b'{\"k\":\"sandbox_error\",\"msg\":\"forged\"}\\n')\n"
               "def f(x):\n    return x\n")
    r = run(box, program)
    assert not r.passed and r.status == outcome.CRASHED
    assert run(box, GOOD).passed


# ------------------------------------------------------------------ found by a red-team review


def test_a_class_named_like_a_builtin_exception_is_not_one(box):
    """`class MemoryError(Exception)` must not read as the run running out of memory (which
    also stops the remaining tests), nor any other builtin's name as that builtin."""
    program = "class MemoryError(Exception):\n    pass\ndef f(x):\n    raise MemoryError()\n"
    r = run(box, program)
    assert r.status == outcome.FAILED and r.error_type == "MemoryError (not the builtin)"
    assert [t.error_type for t in r.tests] == ["MemoryError (not the builtin)"] * 2  # every test ran
    real = run(box, "def f(x):\n    raise MemoryError()\n")
    assert real.status == outcome.MEMORY


def test_a_homoglyph_of_passed_is_written_as_escapes(box):
    r = run(box, "E = type('\\u0440\\u0430ss\\u0435d', (Exception,), {})\ndef f(x):\n    raise E()\n")
    assert not r.passed and r.outcome_class == "\\u0440\\u0430ss\\u0435d"


@pytest.mark.parametrize("when", ["defining", "calling"])
def test_a_message_nested_too_deep_to_parse_is_a_corrupt_run_not_the_tests_error(box, when):
    """100,000 nested arrays on the result channel make the server's JSON parser recurse too
    deep: the run is corrupt (the program wrote on the harness's channel), and the server's own
    RecursionError is never the test's class."""
    write = "import os\nos.write(3, b'[' * 100000 + b'\\n')\n"
    program = write + GOOD if when == "defining" else "import os\ndef f(x):\n" + \
        "".join("    " + line + "\n" for line in write.splitlines()) + "    return x + 1\n"
    r = run(box, program)
    assert not r.passed and (r.status, r.error_type) == (outcome.CRASHED, "corrupt result"), r
    assert run(box, GOOD).passed


def test_a_set_of_colliding_numbers_is_refused_not_built(box):
    """Distinct multiples of 2**61 - 1 all hash to 0: a set of 200,000 of them would keep the
    trusted server building it for minutes. The value is refused before it is built; honest
    sets, those of powers of two included (their hashes repeat every 61), cross."""
    program = "def f(x):\n    return {i * (2**61 - 1) for i in range(1, 6000)}\n"
    r = run(box, program, limits=Limits(wall_seconds=10, cpu_seconds=5))
    assert not r.passed and (r.status, r.error_type) == (outcome.CRASHED, "corrupt result"), r
    assert "share hashes" in r.message
    size = [TestCase("size", "assert len(candidate(1)) == 5000")]
    assert run(box, "def f(x):\n    return set(range(5000))\n", tests=size).passed
    assert run(box, "def f(x):\n    return {2**i for i in range(5000)}\n", tests=size).passed


def test_a_server_that_cannot_finish_checking_twice_gives_a_timeout_verdict(monkeypatch):
    """The test's own `set(...)` of a list of colliding numbers runs in the server, which no
    limit of the run's stops: the client gives up after the wall-clock limit and its margin,
    retries on a fresh server, and then records the program's timeout (not an item with no
    verdict, which every resume would run again)."""
    import pytest_codegen.sandbox as sandbox_module

    margin = sandbox_module._REPLY_MARGIN
    monkeypatch.setattr(sandbox_module, "_REPLY_MARGIN", 1.0)
    limits = Limits(wall_seconds=1.0, cpu_seconds=1.0, memory_mb=512)
    program = "def f(x):\n    return [i * (2**61 - 1) for i in range(1, 200000)]\n"
    with Sandbox(limits) as fresh:
        r = fresh.run(program, [TestCase("set", "assert set(candidate(1)) == {1}")], entry_point="f")
        assert (r.status, r.error_type) == (outcome.TIMEOUT, sandbox_module.TIMEOUT_WALL), r
        assert "twice" in r.message
        assert r.detail == {"timeout": "wall"} and r.seconds >= 2 * (1.0 + 1.0)
        monkeypatch.setattr(sandbox_module, "_REPLY_MARGIN", margin)  # as it was: load must not matter
        assert fresh.run(GOOD, CHECK_F, entry_point="f").passed  # the third server is fine
        asleep = fresh.run("import time\ndef f(x):\n    time.sleep(5)\n", CHECK_F, entry_point="f")
        assert "twice" not in asleep.message  # the server's own verdict, whose class name is the same
        assert (asleep.error_type, asleep.detail["timeout"]) == (r.error_type, "wall")



def test_a_failures_description_brings_no_escape_sequence_to_the_terminal(box):
    from pytest_codegen.verdict import describe_failure

    program = ("import sys\nprint('\\x1b]0;pwned\\x07\\x1b[1A\\x1b[2K=== 2 passed ===\\r')\n"
               "def f(x):\n    raise ValueError('\\x1b[32mgreen\\u202e')\n")
    r = run(box, program)
    text = describe_failure(r)
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text and "\x07" not in text
    assert "ValueError" in text and "\\x1b[32mgreen\\u202e" in text and "\\x1b]0;pwned\\x07" in text
