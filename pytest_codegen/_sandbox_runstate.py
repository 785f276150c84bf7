"""The verdict of one run, from what the server saw of it: a state machine without I/O.

The server feeds it the bytes of the run's result channel (`feed`: the candidate's process's
messages, queued in `inbox` for the checking, see `_sandbox_checking`), its output
(`add_output`), its exit (`set_exit`) and what stopped it (`timed_out`, `cpu_timed_out`,
`cpu_seen`, `seconds`, `leftovers`); the checking fills in the definition's report and each
test's (`define`, `results`); then the server asks for the verdict (`result`). Imported by name
from its directory like every sandbox file (see `_sandbox_bootstrap`).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_forker as forker
else:
    import _sandbox_forker as forker

MAX_RESULT_BYTES = 8 << 20
MAX_TEXT, MAX_TB = forker.MAX_TEXT, forker.MAX_TB
TIMEOUT_CPU, TIMEOUT_WALL = "timeout (cpu)", "timeout (wall)"  # a timeout's error type

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{4,16}>")


def clean_text(s: object, limit: int = MAX_TEXT) -> str:
    """A plain str of at most `limit` characters that encodes as UTF-8, without object addresses.

    (`<function f at 0x7f..>` becomes `<function f>` so the same failure reads the same in
    every run.)
    """
    if not isinstance(s, str):
        s = "" if s is None else str(s)
    s = _ADDRESS.sub(">", s)
    if len(s) > limit:
        s = s[:limit] + f"... [{len(s) - limit} more characters]"
    return s.encode("utf-8", "replace").decode("utf-8")


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


class Usage(typing.NamedTuple):
    """What the verdict needs of a child's rusage (the forker reaps it, not the server)."""

    ru_utime: float
    ru_stime: float
    ru_maxrss: int


class RunState:
    """One run: `limits` as the client sent them and the tests' `names` in order."""

    def __init__(self, limits: dict, names: list[str]) -> None:
        self.limits, self.names = limits, names
        self.buf = b""
        self.received = 0
        self.inbox: collections.deque[dict] = collections.deque()  # messages for the checking
        self.define: dict | None = None
        self.results: list[dict] = []
        self.closed = False  # the server has sent its last request: the end may come
        self.settled = False  # a test failed and the server stopped the child: no test was cut short
        self.end = False
        self.corrupt: str | None = None
        self.sandbox_error: str | None = None
        self.started = False  # the harness's "start": the candidate's code runs from then on
        self.memory_cap_mb: int | None = None  # set when the run's memory cgroup killed one of its processes
        self.not_in_cgroups: str | None = None  # why its child could not join the run's cgroups
        self.timed_out = False  # the wall-clock backstop
        self.cpu_timed_out = False  # the CPU limit, as the server measured it
        self.cpu_seen: float | None = None  # the child's CPU time, read before it was reaped
        self.exit_status: int | None = None
        self.rusage: Usage | None = None
        self.output = b""
        self.output_total = 0
        self.seconds = 0.0
        self.leftovers = False

    def set_exit(self, status: int, ru: Usage) -> None:
        self.exit_status, self.rusage = status, ru

    def add_output(self, data: bytes, cap: int) -> None:
        self.output_total += len(data)
        room = cap - len(self.output)
        if room > 0:
            self.output += data[:room]

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > MAX_RESULT_BYTES:
            self.corrupt = "the result channel carried more data than the harness ever writes"
            return
        self.buf += data
        while not self.end and not self.corrupt:
            nl = self.buf.find(b"\n")
            if nl < 0:
                break
            line, self.buf = self.buf[:nl], self.buf[nl + 1 :]
            self._message(line)

    def _message(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):  # (arrays nested 100,000 deep: the parser recurses)
            self.corrupt = "unparsable message on the result channel"
            return
        if not isinstance(msg, dict):
            self.corrupt = "a message on the result channel that is not an object"
            return
        kind = msg.get("k")
        if kind == "start" and not self.started:
            self.started = True
        elif kind == "sandbox_error" and not self.started:
            self.sandbox_error = clean_text(msg.get("msg"))
            self.corrupt = "sandbox error"
        elif kind in ("start", "sandbox_error"):
            self.corrupt = "the program wrote a harness message on the result channel"
        elif kind == "end":
            if self.closed:
                self.end = True
            else:
                self.corrupt = "an end message before the server's last request"
        else:
            self.inbox.append(msg)

    # --- the verdict ---

    def result(self, isolation_mode: str) -> dict:
        """The verdict. A pass needs every test's report and the end message. Otherwise the
        class is the first failure in test order: the definition's, else the first failing
        test's, else what stopped the run (a timeout, a kill, an exit) in the test it was
        running; every test keeps its own class."""
        lim = self.limits
        names = self.names
        tests: list[dict] = []
        status = error_type = phase = None
        message = traceback = ""

        def test(i: int, passed: bool, et=None, msg="", line="") -> dict:
            return {
                "name": names[i], "passed": passed, "error_type": et,
                "message": clean_text(msg), "line": clean_text(line, 1500),
            }

        for i, r in enumerate(self.results):
            if r.get("ok") is True:
                tests.append(test(i, True))
            else:
                tests.append(test(i, False, clean_text(r.get("et"), 200), r.get("msg"), r.get("line")))
        reported_failure = next((r for r in self.results if r.get("ok") is not True), None)
        define_failed = self.define is not None and self.define.get("ok") is not True
        if self.end and not define_failed and reported_failure is None and len(self.results) != len(names):
            self.corrupt = self.corrupt or "the run ended without a report for every test"
        in_define = self.define is None
        # the test in progress when it stopped: the first one not reported (results come in order)
        current = (
            len(self.results)
            if self.define is not None and not self.end and not self.settled and len(self.results) < len(names)
            else None
        )
        exit_desc, cpu, maxrss_mb = self._exit_info()
        stop = None if self.end else self._stop_cause(lim, cpu, maxrss_mb, in_define, current, names)

        first = None  # the first failure reported in order: the definition's or a test's
        if define_failed:
            first = self.define or {}
        elif reported_failure is not None:
            first = reported_failure
        if self.corrupt:
            status, error_type, message = "crashed", "corrupt result", self.corrupt
        elif first is not None:
            memory = first.get("et") == "MemoryError"
            status, error_type = ("memory", "MemoryError") if memory else ("failed", clean_text(first.get("et"), 200))
            phase = "define" if define_failed else "test"
            message, traceback = clean_text(first.get("msg")), clean_text(first.get("tb"), MAX_TB + 100)
        elif stop is not None:
            status, error_type, message = stop
        else:
            status = "passed"
        # the cap killed one of the run's processes: whatever then failed, memory is the cause.
        # A limit reached after it too: near the cap the kernel reclaims memory on the run's own
        # CPU time, for seconds under load, before it kills (a verdict that load must not decide)
        if status in ("crashed", "failed", "timeout") and self.memory_cap_mb is not None and not self.corrupt:
            status, error_type = "memory", "MemoryError"
            message = f"{message}: the run's processes together reached the memory cap of {self.memory_cap_mb} MB"

        if phase is None and status != "passed":
            phase = "define" if in_define or define_failed else "test"
        if define_failed:
            d = self.define or {}
            not_run = "not run: the program failed to define (%s)" % clean_text(d.get("msg"), 300)
            tests = [test(i, False, error_type, not_run) for i in range(len(names))]
        elif status != "passed":
            for i in range(len(tests), len(names)):
                if i == current and stop is not None:  # what stopped it, in the test it was running
                    tests.append(test(i, False, stop[1], stop[2]))
                else:
                    tests.append(test(i, False, None, f"not run ({stop[0] if stop else status})"))
        output = self.output.decode("utf-8", "replace")
        detail = {
            "exit": exit_desc,
            "cpu_seconds": round(cpu, 4),
            "max_rss_mb": round(maxrss_mb, 1),
            "output_bytes": self.output_total,
            "output_truncated": self.output_total > len(self.output),
            "isolation": isolation_mode,
        }
        if stop is not None and stop[0] == "timeout":
            detail["timeout"] = "cpu" if stop[1] == TIMEOUT_CPU else "wall"
        if self.leftovers:
            detail["leftover_processes"] = True
        if self.memory_cap_mb is not None:
            detail["memory_cap_mb"] = self.memory_cap_mb
        if self.not_in_cgroups is not None:  # rare: the isolation line promised them
            detail["cgroups"] = (f"not joined ({clean_text(self.not_in_cgroups, 200)}): no cap on the run's "
                                 "total memory, its CPU time counted per process")
        return {
            "status": status,
            "error_type": error_type,
            "phase": phase,
            "tests": tests,
            "message": clean_text(message),
            "traceback": traceback,
            "output": output,
            "seconds": round(self.seconds, 6),
            "detail": detail,
        }

    def _stop_cause(self, lim: dict, cpu: float, maxrss_mb: float, in_define: bool, current: int | None,
                    names: list[str]) -> tuple[str, str, str]:
        """(status, error type, message) of a run that ended without its end message."""
        cpu_limit = float(lim["cpu_seconds"])
        signo = (
            os.WTERMSIG(self.exit_status) if self.exit_status is not None and os.WIFSIGNALED(self.exit_status) else None
        )
        mem_limit = float(lim["memory_mb"])
        if self.cpu_timed_out or signo == signal.SIGXCPU or (signo == signal.SIGKILL and cpu >= cpu_limit - 0.05):
            how = f" ({signal_name(signo)})" if signo is not None and not self.cpu_timed_out else ""
            return "timeout", TIMEOUT_CPU, f"CPU limit of {lim['cpu_seconds']}s exceeded{how}"
        if self.timed_out:
            # No measured figure in the message (the CPU time used is in the detail): a program
            # that waits gets the same message, and a refiner the same feedback, in every run.
            return "timeout", TIMEOUT_WALL, (
                f"wall-clock limit of {lim['wall_seconds']}s exceeded before the CPU limit of {lim['cpu_seconds']}s "
                "(waiting, sleeping or starved)"
            )
        if signo is not None:
            if mem_limit > 0 and maxrss_mb >= 0.9 * mem_limit:
                return "memory", "MemoryError", (
                    f"killed by {signal_name(signo)} at {maxrss_mb:.0f} MB (limit {lim['memory_mb']} MB)"
                )
            return "crashed", signal_name(signo), f"killed by {signal_name(signo)}"
        where = (
            "while defining the program" if in_define
            else f"before reporting test {names[current]!r}" if current is not None and current < len(names)
            else "before finishing"
        )
        if self.exit_status is not None and os.WIFEXITED(self.exit_status):
            code = os.WEXITSTATUS(self.exit_status)
            return "crashed", "exit without result", f"the program exited with code {code} {where}"
        return "crashed", "exit without result", f"the program closed its result channel {where}"

    def _exit_info(self) -> tuple[str | None, float, float]:
        """(exit, CPU seconds, peak RSS in MB): from the child's rusage once it is reaped,
        else the CPU time read from /proc while it still existed."""
        ru = self.rusage
        cpu = max((ru.ru_utime + ru.ru_stime) if ru else 0.0, self.cpu_seen or 0.0)
        rss = (ru.ru_maxrss / 1024.0) if ru else 0.0
        if self.exit_status is None:
            return None, cpu, rss
        if os.WIFSIGNALED(self.exit_status):
            return signal_name(os.WTERMSIG(self.exit_status)), cpu, rss
        return f"code {os.WEXITSTATUS(self.exit_status)}", cpu, rss
