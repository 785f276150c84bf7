"""The verdict state machine of the sandbox server: the checking of a run's tests
(`_sandbox_checking.Checking`) against a scripted candidate's process, and the verdict
(`_sandbox_runstate.RunState`) from its reports, exits and stops: no processes."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from pytest_codegen import outcome
from pytest_codegen._sandbox_codec import encode

# Imported by name from its directory, as the sandbox server imports them (see _sandbox_bootstrap)
sys.path.insert(0, str(Path(outcome.__file__).parent))
try:
    import _sandbox_checking as checking
    import _sandbox_routes as routes
    import _sandbox_runstate as runstate
finally:
    sys.path.pop(0)

NAMES = ["first", "second", "third", "fourth"]
TESTS = [f"assert candidate({i}) == {i + 1}" for i in range(4)]
LIMITS = {"wall_seconds": 20.0, "cpu_seconds": 5.0, "memory_mb": 1024, "output_bytes": 100, "file_size_mb": 16,
          "max_processes": 64}


def line(kind: str, **fields) -> bytes:
    return json.dumps({"k": kind, **fields}).encode() + b"\n"


def value(v: object) -> bytes:
    return b'{"k":"value","v":' + encode(v) + b"}\n"


def raised(et: str, base: str, msg: str, tb: str = '  File "<candidate>", line 2, in f\n') -> bytes:
    return line("raised", et=et, base=base, msg=msg, tb=tb)


DEFINED = line("define", ok=True, entry=True)
RIGHT = [value(i + 1) for i in range(4)]
END = line("end")


class Script:
    """The candidate's process, scripted: its messages in order (fed to the run's state as the
    server feeds them); the requests it was sent. Out of messages, the run is over."""

    def __init__(self, state: runstate.RunState, messages: list[bytes]) -> None:
        self.state, self.messages, self.sent = state, list(messages), []
        self.busy = self.closed = False

    def send(self, kind: bytes, payload: bytes) -> None:
        assert not self.closed, "a request after the last one"
        self.sent.append((kind, payload))

    def close(self) -> None:
        self.closed = self.state.closed = True  # as the server's, once the requests are written

    def receive(self) -> dict:
        while not self.state.inbox:
            if not self.messages or self.state.corrupt:
                raise checking.Stopped
            self.state.feed(self.messages.pop(0))
        return self.state.inbox.popleft()


def compiled(*sources: str, checked: bool = True, literal: bool = False) -> list:
    out = []
    for i, source in enumerate(sources):
        filename = f"<test {NAMES[i]}>"
        ahead = [encode(call) for call in routes.literal_calls(source, "f")] if literal else []
        complete = literal and routes.only_literal_calls(source, "f")
        out.append([NAMES[i], filename, source, compile(source, filename, "exec"), None, checked, ahead, complete])
    return out


def check(*messages: bytes, sources=TESTS, setup: str = "", checked: bool = True, literal: bool = False,
          end: bool = True):
    """Run the checking against `messages` (the literal calls asked ahead if `literal`), then
    the end (unless `end` is False, or the checking says the child may still be busy)."""
    st = runstate.RunState(dict(LIMITS), NAMES[: len(sources)])
    script = Script(st, list(messages))
    setup_code = compile(setup, "<setup>", "exec") if setup else None
    tests = compiled(*sources, checked=checked, literal=literal)
    script.busy = checking.Checking(tests, (setup_code, setup, None), "f", script, st, 100, None, 1).run()
    st.closed = True
    if end and not st.corrupt and not script.busy:
        st.feed(END)
    return st, script


def exited(code: int) -> int:
    return code << 8  # a wait status


def killed(signo: int) -> int:
    return signo


def usage(cpu: float = 0.1, rss_mb: float = 20) -> runstate.Usage:
    return runstate.Usage(cpu, 0.0, int(rss_mb * 1024))


def classes(result: dict) -> list[str | None]:
    return [t["error_type"] for t in result["tests"]]


# --------------------------------------------------------------------------- checking


def test_right_values_for_every_test_and_the_end_is_a_pass():
    st, script = check(DEFINED, *RIGHT)
    st.set_exit(exited(0), usage(cpu=0.25))
    r = st.result("root")
    assert st.end and not st.corrupt
    assert (r["status"], r["error_type"], r["phase"]) == ("passed", None, None)
    assert [t["passed"] for t in r["tests"]] == [True] * 4
    assert [kind for kind, _ in script.sent] == [b"C"] * 4
    assert script.sent[2][1] == encode(((2,), {}))
    assert r["detail"]["cpu_seconds"] == 0.25 and r["detail"]["exit"] == "code 0"


def test_literal_calls_are_asked_before_the_tests_run_and_answered_in_order():
    st, script = check(DEFINED, *RIGHT, literal=True)
    assert st.result("root")["status"] == "passed"
    assert script.sent == [(b"C", encode(((i,), {}))) for i in range(4)]  # no second request for any
    assert script.closed  # nothing but those can come: the child may end once it has answered


def test_a_test_that_may_make_other_calls_keeps_the_channel_open():
    sources = [*TESTS[:3], "for i in range(2):\n    assert candidate(i) == i + 1"]
    st, script = check(DEFINED, *RIGHT[:3], value(1), value(2), sources=sources, literal=True)
    assert st.result("root")["status"] == "passed" and not script.closed
    assert [p for _, p in script.sent][3:] == [encode(((0,), {})), encode(((1,), {}))]


def test_a_call_that_is_not_the_next_literal_one_is_asked_for():
    sources = ["assert candidate(0) == 1 and candidate(5 - 5) == 1", "x = 1\nassert candidate(x) == 2"]
    st, script = check(DEFINED, value(1), value(1), value(2), sources=sources, literal=True)
    assert st.result("root")["status"] == "passed"
    assert script.sent == [(b"C", encode(((0,), {}))), (b"C", encode(((0,), {}))), (b"C", encode(((1,), {})))]


def test_literal_calls_a_test_skips_are_passed_over():
    source = "assert candidate(1) == 2, str(candidate(1))\nassert candidate(2) == 3, str(candidate(2))"
    st, script = check(DEFINED, value(2), value(2), value(3), value(3), sources=[source], literal=True)
    assert st.result("root")["status"] == "passed" and script.closed and len(script.sent) == 4


def test_a_failed_run_does_not_wait_for_answers_no_test_wanted():
    source = "assert candidate(0) == 1\nassert candidate(1) == 2"  # the second call never comes
    st, script = check(DEFINED, value(5), sources=[source], literal=True)
    assert script.busy and st.result("root")["status"] == "failed"
    st, script = check(DEFINED, raised("MemoryError", "MemoryError", ""), sources=TESTS[:2], literal=True)
    st.settled = True  # what the server says when it stops such a child
    st.set_exit(killed(signal.SIGKILL), usage())
    assert script.busy and classes(st.result("root")) == ["MemoryError", None]
    st, script = check(DEFINED, value(1), value(2), sources=["assert candidate(0) == 1 or candidate(1)"],
                       literal=True)
    assert not script.busy and st.result("root")["status"] == "passed" and not script.messages


def test_a_message_split_across_reads_counts_once_it_is_whole():
    whole = DEFINED + b"".join(RIGHT)
    st, _ = check(*(whole[i : i + 7] for i in range(0, len(whole), 7)))
    assert st.result("root")["status"] == "passed"


def test_the_server_asserts_on_the_values_and_says_why():
    st, _ = check(DEFINED, value(0), value(2), value([1]), value(None))
    r = st.result("root")
    assert (r["status"], r["error_type"], r["phase"]) == ("failed", "AssertionError", "test")
    assert classes(r) == ["AssertionError", None, "AssertionError", "AssertionError"]
    assert r["tests"][0]["line"] == "assert candidate(0) == 1"


def test_an_exception_the_candidate_raised_is_its_class_with_its_frames():
    st, _ = check(DEFINED, value(1), raised("MyError", "ValueError", "bad input"), *RIGHT[2:])
    r = st.result("root")
    assert classes(r) == [None, "MyError", None, None]
    assert r["message"] == "MyError: bad input"
    assert r["traceback"].splitlines() == [
        "Traceback (most recent call last):",
        '  File "<test second>", line 1, in <module>', "    assert candidate(1) == 2",
        '  File "<candidate>", line 2, in f', "MyError: bad input",
    ]


def test_an_exception_is_raised_as_its_builtin_class_so_tests_can_catch_it():
    source = "try:\n    candidate(0)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no error')"
    st, _ = check(DEFINED, raised("MyError", "ValueError", "bad"), sources=[source])
    assert st.result("root")["status"] == "passed"
    st, _ = check(DEFINED, raised("MyExit", "SystemExit", "0"), sources=[source])
    assert classes(st.result("root")) == ["MyExit"]
    for base in ("UnicodeDecodeError", "ExceptionGroup", "print", "NoSuchName"):  # no plain instance of these
        st, _ = check(DEFINED, raised("Odd", base, "odd"), sources=TESTS[:1])
        assert classes(st.result("root")) == ["Odd"]


def test_a_result_that_is_not_plain_data_keeps_its_truth_and_equals_nothing():
    sources = ["assert candidate(0)", "assert not candidate(1)", "assert candidate(2) == 3",
               "assert list(candidate(3)) == [1]"]
    truthy = line("notplain", what="a Match", truth=True, error="")
    falsy = line("notplain", what="a Match", truth=False, error="")
    equal = line("notplain", what="an int subclass Yes", truth=True, error="")
    st, _ = check(DEFINED, truthy, falsy, equal, line("notplain", what="a generator", truth=True, error=""),
                  sources=sources)
    r = st.result("root")
    assert classes(r) == [None, None, "AssertionError", "TypeError"]
    assert "the candidate returned a generator, which is not plain data" in r["tests"][3]["message"]


def test_a_test_that_passes_the_candidate_a_function_fails_saying_so():
    st, script = check(DEFINED, sources=["assert candidate(len) == 1"])
    assert classes(st.result("root")) == ["TypeError"]
    assert "passes the candidate a builtin_function_or_method" in st.result("root")["message"]
    assert script.sent == []


def test_the_setup_runs_here_and_its_helpers_are_the_tests_own():
    setup = "def helper(v):\n    return v == 8\n"
    st, _ = check(DEFINED, value(8), sources=["assert helper(candidate(7))"], setup=setup)
    assert st.result("root")["status"] == "passed"
    st, _ = check(DEFINED, value(9), sources=["assert helper(candidate(7))"], setup=setup)
    assert st.result("root")["status"] == "failed"


def test_in_process_tests_are_sent_and_their_reports_taken():
    st, script = check(DEFINED, line("result", ok=True),
                       line("result", ok=False, et="NameError", msg="NameError: x", line="x", tb=""),
                       sources=TESTS[:2], checked=False)
    r = st.result("root")
    assert classes(r) == [None, "NameError"] and r["message"] == "NameError: x"
    assert [kind for kind, _ in script.sent] == [b"T", b"T"]


def test_a_program_that_fails_to_define_fails_every_test():
    st, script = check(line("define", ok=False, et="SyntaxError", msg="SyntaxError: bad", line="def (", tb=""))
    r = st.result("root")
    assert (r["status"], r["error_type"], r["phase"]) == ("failed", "SyntaxError", "define")
    assert classes(r) == ["SyntaxError"] * 4 and script.sent == []
    assert all(t["message"].startswith("not run: the program failed to define (SyntaxError: bad") for t in r["tests"])


def test_without_the_entry_point_the_tests_meet_a_name_error():
    st, script = check(line("define", ok=True, entry=False), sources=TESTS[:1])
    assert classes(st.result("root")) == ["NameError"] and script.sent == []


def test_a_memory_error_ends_the_checking():
    st, script = check(DEFINED, value(1), raised("MemoryError", "MemoryError", ""))
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("memory", "MemoryError")
    assert classes(r) == [None, "MemoryError", None, None] and len(script.sent) == 2


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ((b"not json\n",), "unparsable"),
        ((b"[1]\n",), "not an object"),
        ((value(1),), "instead of the definition"),
        ((DEFINED, line("result", ok=True)), "answered a call with 'result'"),
        ((DEFINED, line("value", v={"a": 1})), "malformed value"),
        ((DEFINED, line("value", v=["x", 1])), "malformed value"),
        ((DEFINED, line("raised", et="E", base="Exception", msg=1, tb="")), "answered a call with 'raised'"),
        ((DEFINED, value(1), END), "end message before the server's last request"),
    ],
)
def test_anything_out_of_protocol_is_a_corrupt_result(messages, why):
    st, _ = check(*messages, *RIGHT)
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("crashed", "corrupt result")
    assert why in r["message"]
    assert not any(t["passed"] for t in r["tests"][len(st.results):])


def test_an_end_before_every_answer_is_corrupt():
    st, _ = check(line("define", ok=True) + END, sources=TESTS[:2], literal=True, end=False)  # in one read
    assert st.result("root")["error_type"] == "corrupt result"
    assert "before every request was answered" in st.result("root")["message"]


def test_a_forged_end_without_every_report_is_no_pass():
    st, _ = check(DEFINED, value(1), end=False)
    st.feed(END)
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("crashed", "corrupt result")


# ---------------------------------------------------------------------------- verdict


def test_every_report_but_no_end_is_not_a_pass():
    st, _ = check(DEFINED, *RIGHT, end=False)
    st.set_exit(exited(0), usage())
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("crashed", "exit without result")
    assert "before finishing" in r["message"]


def test_an_early_failure_decides_over_a_later_timeout():
    st, _ = check(DEFINED, value(1), value(0), end=False)
    st.cpu_timed_out, st.cpu_seen = True, 5.0
    st.set_exit(killed(signal.SIGKILL), usage(cpu=5.0))
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("failed", "AssertionError")
    assert classes(r) == [None, "AssertionError", runstate.TIMEOUT_CPU, None]
    assert r["tests"][3]["message"] == "not run (timeout)"


@pytest.mark.parametrize("how", ["measured", "SIGXCPU", "SIGKILL at the limit"])
def test_a_cpu_timeout(how):
    st, _ = check(DEFINED, value(1), end=False)
    if how == "measured":
        st.cpu_timed_out, st.cpu_seen = True, 5.01
    elif how == "SIGXCPU":
        st.set_exit(killed(signal.SIGXCPU), usage(cpu=5.0))
    else:
        st.set_exit(killed(signal.SIGKILL), usage(cpu=4.99))
    r = st.result("root")
    assert (r["status"], r["error_type"], r["phase"]) == ("timeout", runstate.TIMEOUT_CPU, "test")
    assert r["detail"]["timeout"] == "cpu"
    assert "CPU limit of 5.0s exceeded" in r["message"]
    assert classes(r) == [None, runstate.TIMEOUT_CPU, None, None]


def test_a_wall_timeout_is_told_from_a_cpu_timeout():
    st, _ = check(DEFINED, end=False)
    st.timed_out = True
    st.set_exit(killed(signal.SIGKILL), usage(cpu=0.02))
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("timeout", runstate.TIMEOUT_WALL)
    assert r["detail"]["timeout"] == "wall"
    assert r["detail"]["cpu_seconds"] == 0.02
    assert r["message"] == (
        "wall-clock limit of 20.0s exceeded before the CPU limit of 5.0s (waiting, sleeping or starved)"
    )


def test_a_timeout_while_defining_is_in_the_define_phase():
    st, _ = check(end=False)
    st.timed_out = True
    r = st.result("root")
    assert (r["status"], r["phase"]) == ("timeout", "define")
    assert classes(r) == [None] * 4 and r["detail"]["exit"] is None


def test_a_crash_by_signal_and_an_early_exit():
    st, _ = check(DEFINED, value(1), end=False)
    st.set_exit(killed(signal.SIGSEGV), usage())
    r = st.result("root")
    assert (r["status"], r["error_type"], r["message"]) == ("crashed", "SIGSEGV", "killed by SIGSEGV")
    assert classes(r) == [None, "SIGSEGV", None, None]
    st, _ = check(DEFINED, value(1), value(2), end=False)
    st.set_exit(exited(3), usage())
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("crashed", "exit without result")
    assert r["message"] == "the program exited with code 3 before reporting test 'third'"


def test_a_kill_near_the_memory_limit_is_a_memory_outcome():
    st, _ = check(DEFINED, end=False)
    st.set_exit(killed(signal.SIGKILL), usage(rss_mb=1000))
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("memory", "MemoryError")
    assert "at 1000 MB (limit 1024 MB)" in r["message"]


def test_more_data_than_the_harness_writes_is_corrupt():
    st = runstate.RunState(dict(LIMITS), NAMES)
    st.feed(b" " * (runstate.MAX_RESULT_BYTES + 1))
    assert st.corrupt and "more data" in st.corrupt
    assert st.result("root")["error_type"] == "corrupt result"


def test_a_sandbox_error_before_the_definition_is_kept_apart():
    st, _ = check(line("sandbox_error", msg="could not confine the child: EPERM"), end=False)
    assert st.sandbox_error == "could not confine the child: EPERM"
    assert st.corrupt


def test_a_sandbox_error_from_the_program_is_its_own_failure():
    """After the harness's start the channel is the candidate's too: a forged "sandbox_error"
    (or a second start) is a verdict on the program, not a broken sandbox to retry forever."""
    for forged in (line("sandbox_error", msg="forged"), line("start")):
        st, _ = check(line("start"), forged, DEFINED, *RIGHT)
        assert st.sandbox_error is None
        r = st.result("root")
        assert (r["status"], r["error_type"]) == ("crashed", "corrupt result")
        assert "harness message" in r["message"]


def test_a_run_the_memory_cap_cut_short_is_memory():
    """A process of the run killed by the memory cgroup: the run fails for memory, whichever
    of its processes the kernel chose (the program's own assert on it, or the child itself)."""
    st, _ = check(line("start"), DEFINED, RIGHT[0], end=False)
    st.set_exit(killed(signal.SIGKILL), usage())
    st.memory_cap_mb = 1024
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("memory", "MemoryError")
    assert "memory cap of 1024 MB" in r["message"] and r["detail"]["memory_cap_mb"] == 1024


@pytest.mark.parametrize("limit", ["cpu", "wall"])
def test_a_limit_reached_after_the_memory_cap_killed_a_process_is_memory(limit):
    """Under load the kernel's reclaim near a v1 cap took the run past its CPU limit (seen:
    `timeout (cpu)` for four 600 MB processes against a 1024 MB cap): the cap is the cause."""
    st, _ = check(line("start"), end=False)
    if limit == "cpu":
        st.cpu_timed_out, st.cpu_seen = True, 5.01
    else:
        st.timed_out = True
    st.set_exit(killed(signal.SIGKILL), usage(cpu=5.0 if limit == "cpu" else 0.5))
    st.memory_cap_mb = 1024
    r = st.result("root")
    assert (r["status"], r["error_type"], r["phase"]) == ("memory", "MemoryError", "define")
    assert "exceeded" in r["message"] and "memory cap of 1024 MB" in r["message"]
    assert r["detail"]["timeout"] == limit and r["detail"]["memory_cap_mb"] == 1024


def test_a_run_whose_child_could_not_join_its_cgroups_says_so():
    """The isolation line promises a memory cap and a CPU meter for each run: a child that
    could not be moved into them runs without, and its result says so; others say nothing."""
    st, _ = check(DEFINED, *RIGHT)
    st.not_in_cgroups = "No such process"
    r = st.result("root")
    assert r["status"] == "passed"
    assert r["detail"]["cgroups"] == ("not joined (No such process): no cap on the run's total memory, "
                                      "its CPU time counted per process")
    assert "cgroups" not in check(DEFINED, *RIGHT)[0].result("root")["detail"]


def test_output_past_the_cap_is_counted_not_kept():
    st, _ = check(DEFINED, *RIGHT)
    st.add_output(b"x" * 60, 100)
    st.add_output(b"y" * 60, 100)
    st.add_output(b"z" * 10, 100)
    r = st.result("root")
    assert r["output"] == "x" * 60 + "y" * 40
    assert (r["detail"]["output_bytes"], r["detail"]["output_truncated"]) == (130, True)
    st, _ = check(DEFINED, *RIGHT)
    st.add_output("é".encode() + b"\xff", 100)
    r = st.result("root")
    assert r["output"] == "é\ufffd" and not r["detail"]["output_truncated"]


def test_what_a_checked_test_prints_joins_the_output():
    st, _ = check(DEFINED, value(1), sources=["print('seen', candidate(0))"])
    assert st.result("root")["output"] == "seen 1\n"


def test_texts_are_cut_and_lose_object_addresses():
    long = "E: " + "x" * (runstate.MAX_TEXT + 50) + " <function f at 0x7f0011223344>"
    st, _ = check(DEFINED, line("result", ok=False, et="E", msg=long, line="", tb=""), sources=TESTS[:1],
                  checked=False)
    message = st.result("root")["message"]
    assert message.endswith("more characters]") and len(message) < runstate.MAX_TEXT + 40
    assert runstate.clean_text("<function f at 0x7f0011223344>") == "<function f>"
