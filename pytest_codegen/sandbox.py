"""Run candidate programs against their tests, away from the caller's process.

`Sandbox()` starts one long-lived server process (`_sandbox_server.py`, a fresh interpreter
started before any model is loaded) and `Sandbox.run` sends it one program and its tests at a
time; the server has a confined child forked per execution (by its forker process,
`_sandbox_forker.py`) and answers with an `ExecutionResult`. The candidate never runs in the
caller's process. See `_sandbox_server` for how the child is confined, how the verdict is
protected and the known limits.

    with Sandbox(Limits(wall_seconds=5)) as box:
        result = box.run(program, problem.tests, setup=problem.test_setup,
                         entry_point=problem.entry_point)
        print(box.isolation, result.status, result.first_failure)
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import select
import site
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_codegen._sandbox_bootstrap import command, environment
from pytest_codegen.outcome import FAILED, TEST, TIMEOUT, ExecutionResult
from pytest_codegen.problems import TestCase

__all__ = ["Limits", "Sandbox", "SandboxError"]

_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_server.py")
_HEADER = struct.Struct(">I")
_START_TIMEOUT = 60.0
_REPLY_MARGIN = 30.0  # on top of the wall limit: compile, kill, reap


def wall_backstop(cpu_seconds: float) -> float:
    """The wall-clock limit that goes with a CPU-time limit: well above it, so that only a
    program that waits (sleeps, blocks) rather than computes meets it, however loaded the
    machine is."""
    return 3 * cpu_seconds + 5


@dataclass(frozen=True)
class Limits:
    """The limits of one execution. `cpu_seconds` decides a timeout (`timeout (cpu)`): CPU
    time does not depend on the machine's load; `wall_seconds` is the backstop for programs
    that wait instead (`timeout (wall)`), pushed back by the time the run's processes were
    ready to run but had no CPU (a loaded machine), up to `cpu_wait_credit_seconds`, where
    the kernel measures that (a cgroup v2 CPU meter with pressure stall information)."""

    wall_seconds: float = wall_backstop(10.0)
    cpu_seconds: float = 10.0
    cpu_wait_credit_seconds: float = 20.0
    memory_mb: int = 1024  # RLIMIT_AS
    output_bytes: int = 64 * 1024  # stdout+stderr kept; the rest is drained and counted, not stored
    file_size_mb: int = 16  # RLIMIT_FSIZE and the size of the work dir
    max_processes: int = 64

    @property
    def longest_wall_seconds(self) -> float:
        """The most wall-clock time one execution may take: the backstop and its whole credit."""
        return float(self.wall_seconds) + max(float(self.cpu_wait_credit_seconds), 0.0)

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """From a run's `exec_timeout` (the CPU-time limit; the wall clock gets its backstop)
        and `exec_memory_mb`."""
        return cls(wall_seconds=wall_backstop(settings.exec_timeout), cpu_seconds=settings.exec_timeout,
                   memory_mb=settings.exec_memory_mb)


def _site_packages() -> list[str]:
    """This interpreter's site-packages directories (venv-aware: `site` has run here)."""
    found = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    found += getattr(site, "getsitepackages", list)()
    return [p for p in dict.fromkeys(found) if os.path.isdir(p)]


def cpu_for_server(index: int, servers: int) -> int | None:
    """The `cpu` for server `index` of `servers` fed side by side (xdist workers, a benchmark's
    threads): a CPU of its own when they are at least as many as the CPUs. Then every CPU is
    busy, and a server kept to one CPU hands work between its processes (client, server,
    forker, child) without cross-CPU wake-ups and TLB shoot-downs, which cost more than the
    handing over (15-20% of the time per problem, two servers on two cores). With spare CPUs,
    None: a free server is faster, as it overlaps its own steps on several CPUs."""
    return index if servers >= len(os.sched_getaffinity(0)) else None


def _cpu_id(index: int | None) -> int | None:
    """The CPU number for a CPU index (wrapping around the CPUs this process may use)."""
    if index is None:
        return None
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[index % len(allowed)]


class SandboxError(RuntimeError):
    """The sandbox itself broke (the server died, the protocol failed), not the candidate."""


class _Broken(Exception):
    """The server is unusable; restart it."""


class _NoAnswer(_Broken):
    """The server did not answer within the run's wall-clock limit and its margin."""


# `random`'s seed before every test: the same inputs for tests that draw them (HumanEval/32, /38,
# /50, /53) in every run, so the same failure messages, which a refiner is shown. Sent to the
# server only, not held by any file the candidate can read, and not a seed a program would
# pick: a program that could seed itself as the tests are could replay their draws and return
# what a test expects. (Sent with each request: the server's command line is readable as the
# PID namespace's /proc/1/cmdline.)
TEST_SEED = 0x6A09E667F3BCC908

TIMEOUT_WALL = "timeout (wall)"  # the server's name for a wall-clock timeout (_sandbox_runstate)


class Sandbox:
    """A server process that runs candidate programs in confined, forked children.

    `isolation` is a one-line description of the confinement in force (for the pytest run
    header). `degrade` is for tests only: "userns" makes a root server act as an unprivileged
    one (it becomes nobody and uses a user namespace if the kernel allows), "none" also skips
    the user namespace. `explaining` makes a server that imports pytest's assertion rewriter at
    start; `run` starts one of those on the first failed assert, so that the rewriter (which
    brings threading along, and its at-fork handler into every child) never slows down the
    forks that decide verdicts.

    `cpu` (an index into the CPUs this process may run on, wrapping around) keeps the server,
    its forker and every child on that one CPU; `cpu_for_server` says when that pays.
    """

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        degrade: str | None = None,
        explaining: bool = False,
        cpu: int | None = None,
    ) -> None:
        if degrade not in (None, "userns", "none"):
            raise ValueError(f"degrade must be None, 'userns' or 'none', not {degrade!r}")
        self.limits = limits
        self._degrade = degrade
        self._explaining = explaining
        self._cpu = cpu
        self._explainer: Sandbox | None = None
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()
        self._closed = False
        self.isolation = ""
        self.mode = ""
        self.sandbox_uid: int | None = None
        self.server_pid: int | None = None
        self.notes: list[str] = []
        atexit.register(self.close)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # --- lifecycle -----------------------------------------------------------------------

    def _start(self) -> None:
        cfg = {
            "degrade": self._degrade,
            "file_size_mb": self.limits.file_size_mb,
            "rewriter": self._explaining,
            # the server runs without `site` (-S): it takes this interpreter's site-packages
            "site_packages": _site_packages(),
            "cpu": _cpu_id(self._cpu),
        }
        env = environment({"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": os.environ.get("LANG", "C.UTF-8")})
        try:
            proc = subprocess.Popen(
                # -S: no .pth files run in the server (they import threading and friends,
                # whose at-fork handlers would run in every child); it adds site-packages itself
                command(_SERVER, json.dumps(cfg)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                start_new_session=True,  # a terminal's Ctrl-C goes to the caller, who closes us
                env=env,
                cwd="/",
            )
        except OSError as e:
            raise SandboxError(f"cannot start the sandbox server: {e}") from e
        self._proc = proc
        try:
            hello = self._read(time.monotonic() + _START_TIMEOUT)
        except _Broken as e:
            self._kill_server()
            raise SandboxError(f"the sandbox server did not start: {e}") from e
        if not hello.get("ok"):
            self._kill_server()
            raise SandboxError(f"the sandbox server failed to start: {hello.get('error')}")
        self.isolation = hello["isolation"]
        self.mode = hello["mode"]
        self.sandbox_uid = hello.get("uid")
        self.server_pid = hello["pid"]
        self.notes = list(hello.get("notes") or ())
        self._owner_pid = os.getpid()

    def _kill_server(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.kill()
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Stop the server (idempotent; also runs at interpreter exit)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                atexit.unregister(self.close)
            except Exception:
                pass
            if self._explainer is not None:
                self._explainer.close()
            proc = self._proc
            if proc is None or os.getpid() != self._owner_pid:
                self._proc = None
                return
            try:
                self._write({"op": "quit"})
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(timeout=5)
            except (OSError, ValueError, subprocess.TimeoutExpired, _Broken):
                pass
            self._kill_server()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- protocol ------------------------------------------------------------------------

    def _write(self, obj: dict) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise _Broken("no server")
        data = json.dumps(obj).encode("utf-8", "surrogatepass")
        try:
            fd = proc.stdin.fileno()
            view = memoryview(_HEADER.pack(len(data)) + data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except (OSError, ValueError) as e:
            raise _Broken(f"cannot write to the server: {e}") from e

    def _read_exact(self, fd: int, n: int, deadline: float) -> bytes:
        chunks = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _NoAnswer("the server did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, min(n, 1 << 20))
            if not chunk:
                code = self._proc.poll() if self._proc is not None else None
                raise _Broken(f"the server closed its pipe (exit status {code})")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _read(self, deadline: float) -> dict:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise _Broken("no server")
        fd = proc.stdout.fileno()
        try:
            (n,) = _HEADER.unpack(self._read_exact(fd, _HEADER.size, deadline))
            reply = json.loads(self._read_exact(fd, n, deadline))
        except (OSError, ValueError) as e:
            raise _Broken(f"bad reply from the server: {e}") from e
        if not isinstance(reply, dict):
            raise _Broken("bad reply from the server")
        return reply

    # --- running -------------------------------------------------------------------------

    def run(
        self,
        program: str,
        tests: Sequence[TestCase],
        *,
        setup: str = "",
        entry_point: str | None = None,
        limits: Limits | None = None,
        explain: bool = True,
    ) -> ExecutionResult:
        """Define `program`, run `setup`, then each test with `candidate` bound to the entry point.

        The verdict comes from tests compiled as written. Failed asserts are then explained:
        their `line` and message gain the values involved, from the assert compiled through
        pytest's assertion rewriting. The server does that itself for a checked test, once the
        run is over, replaying the answers the candidate gave (see `Checking.explain`); the
        rest (tests run in the candidate's process, tests whose calls differ when run again)
        go to a second run of just those tests on a second server kept for that. Neither
        changes the verdict; where the test behaves differently, the explanation is dropped.
        `explain=False` skips both, for callers that need only the outcome class.
        """
        lim = limits or self.limits
        request: dict[str, Any] = {
            "op": "run",
            "program": program,
            "setup": setup or "",
            "entry_point": entry_point,
            "tests": [[t.name, t.source] for t in tests],
            "limits": dataclasses.asdict(lim),
            "explain": False,
            "explain_here": explain,
            "test_seed": TEST_SEED,
        }
        result, explained_here = self._exchange(request, lim)
        failed_asserts = [
            i for i, t in enumerate(result.tests) if t.error_type == "AssertionError" and i not in explained_here
        ]
        if not explain or result.status != FAILED or result.phase != TEST or not failed_asserts:
            return result
        # Bounded: a program that failed fast must not buy a second full wall-clock allowance.
        wall = min(lim.wall_seconds, 1.0 + 2 * result.seconds)
        quick = dataclasses.replace(lim, wall_seconds=wall,
                                    cpu_wait_credit_seconds=min(lim.cpu_wait_credit_seconds, wall))
        with self._lock:
            if self._explainer is None or os.getpid() != self._explainer._owner_pid:
                self._explainer = Sandbox(self.limits, degrade=self._degrade, explaining=True, cpu=self._cpu)
            explainer = self._explainer
        explained, _ = explainer._exchange(
            {**request, "explain": True, "explain_here": False, "limits": dataclasses.asdict(quick),
             "tests": [[tests[i].name, tests[i].source] for i in failed_asserts]},
            quick,
        )
        return _with_explanations(result, failed_asserts, explained)

    def _exchange(self, request: dict, lim: Limits) -> tuple[ExecutionResult, list[int]]:
        """The server's result, and the failed asserts it explained itself (their indices)."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox is closed")
            if os.getpid() != self._owner_pid:  # forked caller: the pipes belong to the parent
                self._proc = None
            problems, unanswered, started = [], 0, time.monotonic()
            for _attempt in range(2):
                try:
                    if self._proc is None:
                        self._start()
                    self._write(request)
                    reply = self._read(time.monotonic() + lim.longest_wall_seconds + _REPLY_MARGIN)
                    if not reply.get("ok"):
                        raise _Broken(f"the server failed: {reply.get('error')}")
                    explained = [i for i in reply.get("explained", ()) if type(i) is int]
                    return ExecutionResult.from_dict(reply["result"]), explained
                except (_Broken, SandboxError, KeyError, TypeError) as e:
                    problems.append(str(e))
                    unanswered += isinstance(e, _NoAnswer)
                    self._kill_server()
                except BaseException:
                    # e.g. KeyboardInterrupt mid-exchange: the protocol state is unknown
                    self._kill_server()
                    raise
            if unanswered == 2:
                # A fresh server computed past every limit on this program's results twice (the
                # trusted side builds what the tests ask of them: a set of numbers whose hashes
                # collide grows quadratically): the program's timeout, as in its own process.
                return ExecutionResult(TIMEOUT, TIMEOUT_WALL, message=(
                    "checking this program's results outlasted the wall-clock limit (twice, on a "
                    "fresh sandbox server): values that are very slow to hash or compare?"),
                    seconds=round(time.monotonic() - started, 3), detail={"timeout": "wall"}), []
            raise SandboxError("the sandbox server failed twice: " + " / ".join(problems))


def _with_explanations(
    result: ExecutionResult, indices: list[int], explained: ExecutionResult
) -> ExecutionResult:
    """Take the explained `line` and message of asserts that failed the same way twice."""
    tests = list(result.tests)
    for position, index in enumerate(indices):
        if position >= len(explained.tests):
            break
        again = explained.tests[position]
        if again.error_type == "AssertionError" and again.name == tests[index].name:
            tests[index] = dataclasses.replace(tests[index], line=again.line, message=again.message)
    first = result.first_failure
    updated = dataclasses.replace(result, tests=tuple(tests))
    if first is not None and result.message == first.message and updated.first_failure is not None:
        updated = dataclasses.replace(updated, message=updated.first_failure.message)
    return updated
