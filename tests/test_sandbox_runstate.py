"""The verdict state machine of the sandbox server (`_sandbox_runstate.RunState`), driven with
scripted result-channel messages, exits and stops: no processes."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

from pytest_codegen import outcome

# Imported by name from its directory, as the sandbox server imports it (see _sandbox_bootstrap)
sys.path.insert(0, str(Path(outcome.__file__).parent))
try:
    import _sandbox_runstate as runstate
finally:
    sys.path.pop(0)

TOKEN = "0123456789abcdef"
NAMES = ["first", "second", "third", "fourth"]
LIMITS = {"wall_seconds": 20.0, "cpu_seconds": 5.0, "memory_mb": 1024, "output_bytes": 100, "file_size_mb": 16,
          "max_processes": 64}


def line(kind: str, token: str = TOKEN, **fields) -> bytes:
    return json.dumps({"t": token, "k": kind, **fields}).encode() + b"\n"


def ok(i: int) -> bytes:
    return line("result", i=i, ok=True)


def fail(i: int, et: str) -> bytes:
    return line("result", i=i, ok=False, et=et, msg=f"{et}: boom", line="assert x", tb="Traceback ...")


DEFINED = line("define", ok=True)
END = line("end")


def state(*messages: bytes, names=NAMES) -> runstate.RunState:
    st = runstate.RunState(dict(LIMITS), list(names), TOKEN)
    for message in messages:
        st.feed(message)
    return st


def exited(code: int) -> int:
    return code << 8  # a wait status


def killed(signo: int) -> int:
    return signo


def usage(cpu: float = 0.1, rss_mb: float = 20) -> runstate.Usage:
    return runstate.Usage(cpu, 0.0, int(rss_mb * 1024))


def classes(result: dict) -> list[str | None]:
    return [t["error_type"] for t in result["tests"]]


def test_every_test_reported_and_the_end_is_a_pass():
    st = state(DEFINED, *(ok(i) for i in range(4)), END)
    st.set_exit(exited(0), usage(cpu=0.25))
    r = st.result("root")
    assert st.end and not st.corrupt
    assert (r["status"], r["error_type"], r["phase"]) == ("passed", None, None)
    assert [t["passed"] for t in r["tests"]] == [True] * 4
    assert r["detail"]["cpu_seconds"] == 0.25 and r["detail"]["isolation"] == "root"
    assert r["detail"]["exit"] == "code 0"


def test_a_message_split_across_reads_counts_once_it_is_whole():
    whole = DEFINED + ok(0) + ok(1) + ok(2) + ok(3) + END
    st = runstate.RunState(dict(LIMITS), NAMES, TOKEN)
    for i in range(0, len(whole), 7):
        st.feed(whole[i : i + 7])
    assert st.result("root")["status"] == "passed"


def test_every_report_but_no_end_is_not_a_pass():
    st = state(DEFINED, *(ok(i) for i in range(4)))
    st.set_exit(exited(0), usage())
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("crashed", "exit without result")
    assert "before finishing" in r["message"]


def test_the_class_is_the_first_failing_tests_and_every_test_keeps_its_own():
    st = state(DEFINED, ok(0), fail(1, "AssertionError"), fail(2, "TypeError"), ok(3), END)
    r = st.result("root")
    assert (r["status"], r["error_type"], r["phase"]) == ("failed", "AssertionError", "test")
    assert classes(r) == [None, "AssertionError", "TypeError", None]
    assert r["message"] == "AssertionError: boom" and r["traceback"] == "Traceback ..."


def test_an_early_failure_decides_over_a_later_timeout():
    st = state(DEFINED, ok(0), fail(1, "AssertionError"))
    st.cpu_timed_out, st.cpu_seen = True, 5.0
    st.set_exit(killed(signal.SIGKILL), usage(cpu=5.0))
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("failed", "AssertionError")
    assert classes(r) == [None, "AssertionError", runstate.TIMEOUT_CPU, None]
    assert r["tests"][3]["message"] == "not run (timeout)"


@pytest.mark.parametrize("how", ["measured", "SIGXCPU", "SIGKILL at the limit"])
def test_a_cpu_timeout(how):
    st = state(DEFINED, ok(0))
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
    st = state(DEFINED)
    st.timed_out = True
    st.set_exit(killed(signal.SIGKILL), usage(cpu=0.02))
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("timeout", runstate.TIMEOUT_WALL)
    assert r["detail"]["timeout"] == "wall"
    assert "wall-clock limit of 20.0s exceeded (CPU used 0.02s" in r["message"]


def test_a_timeout_while_defining_is_in_the_define_phase():
    st = state()
    st.timed_out = True
    r = st.result("root")
    assert (r["status"], r["phase"]) == ("timeout", "define")
    assert classes(r) == [None] * 4 and r["detail"]["exit"] is None


def test_a_crash_by_signal_and_an_early_exit():
    st = state(DEFINED, ok(0))
    st.set_exit(killed(signal.SIGSEGV), usage())
    r = st.result("root")
    assert (r["status"], r["error_type"], r["message"]) == ("crashed", "SIGSEGV", "killed by SIGSEGV")
    assert classes(r) == [None, "SIGSEGV", None, None]
    st = state(DEFINED, ok(0), ok(1))
    st.set_exit(exited(3), usage())
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("crashed", "exit without result")
    assert r["message"] == "the program exited with code 3 before reporting test 'third'"


def test_a_kill_near_the_memory_limit_is_a_memory_outcome():
    st = state(DEFINED)
    st.set_exit(killed(signal.SIGKILL), usage(rss_mb=1000))
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("memory", "MemoryError")
    assert "at 1000 MB (limit 1024 MB)" in r["message"]


def test_a_memory_error_may_end_the_run_before_the_remaining_tests():
    st = state(DEFINED, ok(0), fail(1, "MemoryError"), END)
    r = st.result("root")
    assert st.end and not st.corrupt
    assert (r["status"], r["error_type"]) == ("memory", "MemoryError")
    assert classes(r) == [None, "MemoryError", None, None]


def test_a_program_that_fails_to_define_fails_every_test():
    st = state(line("define", ok=False, et="SyntaxError", msg="SyntaxError: bad", line="def (", tb=""), END)
    r = st.result("root")
    assert (r["status"], r["error_type"], r["phase"]) == ("failed", "SyntaxError", "define")
    assert classes(r) == ["SyntaxError"] * 4
    assert all(t["message"].startswith("not run: the program failed to define (SyntaxError: bad") for t in r["tests"])


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ((line("define", token="f" * 16, ok=True),), "without the run's token"),
        ((b"not json\n",), "unparsable"),
        ((DEFINED, ok(1)), "out of order"),
        ((DEFINED, ok(0), ok(0)), "out of order"),
        ((ok(0),), "unexpected 'result'"),
        ((DEFINED, DEFINED), "unexpected 'define'"),
        ((DEFINED, ok(0), END), "without reporting every test"),
        ((DEFINED, *(ok(i) for i in range(4)), ok(4)), "out of order"),
    ],
)
def test_anything_but_the_expected_sequence_is_a_corrupt_result(messages, why):
    st = state(*messages, *(ok(i) for i in range(4)), END)
    r = st.result("root")
    assert (r["status"], r["error_type"]) == ("crashed", "corrupt result")
    assert why in r["message"]
    assert not any(t["passed"] for t in r["tests"][len(st.results):])


def test_more_data_than_the_harness_writes_is_corrupt():
    st = state(DEFINED)
    st.feed(b" " * (runstate.MAX_RESULT_BYTES + 1))
    assert st.corrupt and "more data" in st.corrupt
    assert st.result("root")["error_type"] == "corrupt result"


def test_a_sandbox_error_before_the_definition_is_kept_apart():
    st = state(line("sandbox_error", msg="could not confine the child: EPERM"))
    assert st.sandbox_error == "could not confine the child: EPERM"
    assert st.corrupt


def test_output_past_the_cap_is_counted_not_kept():
    st = state(DEFINED, *(ok(i) for i in range(4)), END)
    st.add_output(b"x" * 60, 100)
    st.add_output(b"y" * 60, 100)
    st.add_output(b"z" * 10, 100)
    r = st.result("root")
    assert r["output"] == "x" * 60 + "y" * 40
    assert (r["detail"]["output_bytes"], r["detail"]["output_truncated"]) == (130, True)
    st = state(DEFINED, *(ok(i) for i in range(4)), END)
    st.add_output("é".encode() + b"\xff", 100)
    r = st.result("root")
    assert r["output"] == "é\ufffd" and not r["detail"]["output_truncated"]


def test_texts_are_cut_and_lose_object_addresses():
    long = "E: " + "x" * (runstate.MAX_TEXT + 50) + " <function f at 0x7f0011223344>"
    st = state(DEFINED, line("result", i=0, ok=False, et="E", msg=long, line="", tb=""), END, names=["only"])
    message = st.result("root")["message"]
    assert message.endswith("more characters]") and len(message) < runstate.MAX_TEXT + 40
    assert runstate.clean_text("<function f at 0x7f0011223344>") == "<function f>"
