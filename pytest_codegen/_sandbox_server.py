"""The sandbox server: a long-lived process that runs candidate programs in forked children.

`pytest_codegen.sandbox.Sandbox` starts a fresh interpreter that imports this file by name
from its directory (not as part of the package, from its cached bytecode; see
`_sandbox_bootstrap`) and calls `main`, before any model is loaded, and talks to it over its stdin/stdout
with length-prefixed JSON. Nothing here imports `pytest_codegen/__init__.py` or anything a
model backend pulls in: forking after llama.cpp (or any threaded library) has run hangs.

This file holds the protocol, the compiling of tests and the watching of each run; its
siblings, imported the same way, hold the rest: `_sandbox_isolation` (namespaces, mounts, the
sandbox uid), `_sandbox_link` (the forker and its zygotes), `_sandbox_scratch` (what a run
leaves behind, removed), `_sandbox_procs` (the runs' processes: /proc, killing) and
`_sandbox_runstate` (the verdict of one run, without I/O).

Three kinds of process
----------------------
* This server: isolation set-up, the protocol, compiling tests, watching each run, verdicts,
  clean-up. It does not fork per run (only a killer after a run that did not end cleanly), so
  its own work costs no page copies.
* The forker (`_sandbox_forker`, a fresh interpreter this server starts once, inside its
  namespaces): forks the zygotes, reaps them and reports their exits. It loads only what the
  children need, so every fork and every child's exit handles a small image.
* Zygotes: children forked ahead of a job that confine themselves and run the harness.
Given a CPU (`Sandbox(cpu=...)`; the plugin does so when xdist workers fill the machine), the
server keeps itself, and so the forker and every child, to it.

How one execution runs
----------------------
* At start the server isolates *itself*, so that the forker and every child inherit it:
  - as root: `unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)` (no network: only a downed
    loopback; no shared SysV IPC or abstract unix sockets), a minimal root file system
    (`_sandbox_isolation`: system directories, the interpreter, its standard library and
    site-packages, read-only, with installed datasets covered; no checkout, results, caches,
    home or host sockets, wherever the venv is), a PID namespace with its own /proc (the
    forker and everything it forks are in it, the server is not), and a sandbox uid/gid of
    `200000 + server pid`, unique to this server, so concurrent servers (xdist workers) never
    share one;
  - not root: the same namespaces inside an unprivileged user namespace if the kernel allows it
    (no uid change then), otherwise nothing but rlimits and process-group/descendant killing.
  In every mode the forker's seccomp filter forbids new user namespaces, and where a memory
  cgroup can be had (`_sandbox_cgroups`), each run's processes join it: their total is capped;
  so with a CPU cgroup, which measures the CPU time of all of a run's processes, exited ones
  included (without one, only the child's own CPU time is seen: a run that forks gets more).
  The writable places (/tmp, /var/tmp, /dev/shm, /run/lock) form the *scratch space*, tmpfs
  each, with the work dir /tmp/work owned by the sandbox uid; after every run, once every
  process of the run is gone, it is emptied, the directories' modes restored, the work dir made
  anew and the server's own SysV IPC objects and POSIX message queues removed (kernel keys
  cannot be made: the forker's seccomp filter forbids the key calls; the session keyring the
  children inherit is the forker's own, empty and read-only to them). A run
  whose processes would not die ends the server instead: the client starts a new one.
* A zygote is forked ahead of each job (as root: while the previous job runs; it stays root
  until its own job arrives, so nothing done as the sandbox uid can touch it). It starts its
  own session, puts stdout and stderr on an output pipe, the result channel on fd 3 and
  /dev/null on stdin, closes every other fd, then waits for a job. (Signal dispositions and
  mask are reset once, in the server, to those of a fresh interpreter.) With the job it enters
  the work dir, sets rlimits (AS, CPU, FSIZE, NPROC; NOFILE and CORE=0 come from the forker),
  drops to the sandbox uid (setgroups/setresgid/setresuid; or drops every capability in the
  user-namespace mode), sets PDEATHSIG and runs the harness (NO_NEW_PRIVS and not being
  dumpable it has from the forker).
* Tests (and the setup) are compiled by the server (cached by source: every further sample of
  a problem reuses them): as written for the verdict, or through pytest's assertion rewriting
  to explain asserts that failed: by this server once a run is over, for a checked test whose
  calls it can replay (`Checking.explain`), else on an *explaining* server, which
  `Sandbox.run` keeps for the rest (its forker preloads the rewriter; a verdict server's
  forker never loads it, nor the threading it brings, so no child does); the candidate
  program itself is compiled in the child, under the rlimits, so a hostile program cannot
  hurt the server's compiler. The child gets the program and the setup,
  never the tests: the server runs them (`_sandbox_checking`), asking the child for each call
  of the candidate on its job pipe, which stays open for those requests.
* The server enforces the limits (select over the result and output pipes and a pidfd, with a
  deadline; output past the cap is drained and counted, never stored): the CPU-time limit
  decides (RLIMIT_CPU in each process, and the server's own reading of the run's CPU time, its
  cgroup's: `timeout (cpu)`), the wall clock is a backstop for programs that wait (`timeout
  (wall)`), not counting the time the run waited for a CPU (its cgroup's pressure stall
  information, where there is one; up to the limits' credit). When the harness
  reported everything it has already, as the sandbox uid, set RLIMIT_NPROC to 0 (no process
  of the uid can fork any more) and sent SIGKILL to every other process of the uid with
  `kill(-1)`; otherwise (timeout, crash, early exit, garbage on the channel) the server kills
  the child's process group and forks a short-lived killer that becomes the sandbox uid and
  does `kill(-1, SIGKILL)` (one call reaches every process of the uid, even one being forked:
  the kernel serialises the two). The forker (a subreaper: orphans come back to it) reaps
  them all; the server waits until none is left. Without a sandbox uid it kills the process
  group and every descendant it finds in /proc until none is left.

Verdicts
--------
The server checks the tests itself (`_sandbox_checking`): the child defines the program and
then only answers calls, with the candidate's result as plain data (`_sandbox_codec`) or the
exception it raised, on a dedicated pipe (fd 3, one JSON line per message). A test passes when
the server's own asserts hold on those values; nothing the candidate does in its process
(walking frames, `gc`, reading its own memory, writing on fd 3, returning an object whose
`__eq__` always says True, redefining a prompt helper, exiting early, killing its parent,
closing fds, leaving threads or processes behind) turns into a pass. Tests that need more of
the program than its entry point (see `_sandbox_routes`: 3 of MBPP's 1,324, none of
HumanEval's) still run in the child, as before: there the harness protects what it can (a
private, pristine copy of the builtins, the test's own namespace, references captured before
any candidate code runs), and a candidate that reaches into it can forge their report. A run
passes only with every test's report and the child's end message, which it sends once the
server has closed the job pipe.

Deviations from a flat `exec`: a checked test sees the candidate through its results (arguments
and results are copied across, so a test does not see the candidate mutate its arguments; a
result that is not plain data keeps only its truth); an in-process test runs in a namespace of
its own (a copy of the program's namespace taken after the program and the setup are defined,
minus names that shadow builtins, plus a private copy of the builtins).

Known limits
------------
* In-process tests (above) share the candidate's process and can be forged by a candidate that
  deliberately introspects the harness.
* Without root there is no uid change: the candidate runs as the caller's uid and can signal
  the server and the caller's other processes (`isolation` says so).
"""

from __future__ import annotations

import _socket
import json
import marshal
import os
import select
import signal
import sys
import time
import typing

# Sibling files, imported the way the bootstrap imports this one (by name, not through the
# package; mypy reads them as the package's): the forker's module (the libc calls and the
# framing), the isolation set-up, the link to the forker, the clean-up between runs, the
# processes of the runs, where each test runs, the checking of the tests (and the framing of
# its requests, the harness's) and the verdict of one run.
if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_codec as codec
    from pytest_codegen import _sandbox_forker as forker
    from pytest_codegen import _sandbox_isolation as isolation
    from pytest_codegen import _sandbox_procs as procs
    from pytest_codegen import _sandbox_routes as routes
    from pytest_codegen import _sandbox_scratch as scratch
    from pytest_codegen._sandbox_checking import Checking, Stopped
    from pytest_codegen._sandbox_harness import FRAME
    from pytest_codegen._sandbox_link import Broken, ForkerLink, Zygote
    from pytest_codegen._sandbox_runstate import RunState, clean_text
else:
    import _sandbox_codec as codec
    import _sandbox_forker as forker
    import _sandbox_isolation as isolation
    import _sandbox_procs as procs
    import _sandbox_routes as routes
    import _sandbox_scratch as scratch
    from _sandbox_checking import Checking, Stopped
    from _sandbox_harness import FRAME
    from _sandbox_link import Broken, ForkerLink, Zygote
    from _sandbox_runstate import RunState, clean_text

READ_SIZE = scratch.READ_SIZE  # reads from the children's pipes (see there why this size)


# ------------------------------------------------------------------ test compiling

_compile_cache: dict[tuple[str, str, bool], tuple[object, dict | None]] = {}


def compile_trusted(filename: str, source: str, rewrite: bool = True) -> tuple[object, dict | None]:
    """Compile a test (or setup) source, through pytest's assertion rewriting if asked; cached.

    Rewriting costs about 2 ms per HumanEval problem, far more than the plain compile; the
    client asks for it only to explain asserts that already failed (see Sandbox.run).
    """
    key = (filename, source, rewrite)
    hit = _compile_cache.get(key)
    if hit is not None:
        return hit
    try:
        if rewrite:
            import ast

            # The rewritten code imports the rewriter's helpers: an explaining server's forker
            # preloaded them, so every child has them.
            import _pytest.assertion.rewrite as rewriter

            tree = ast.parse(source, filename=filename)
            rewriter.rewrite_asserts(tree, source.encode("utf-8", "surrogatepass"), None, None)
            code = compile(tree, filename, "exec", dont_inherit=True)
        else:  # straight from the source: no AST objects built and converted back
            code = compile(source, filename, "exec", dont_inherit=True)
        out: tuple[object, dict | None] = (code, None)
    except Exception as e:  # SyntaxError, ValueError (null bytes), RecursionError...
        line = ""
        if isinstance(e, SyntaxError) and e.text:
            line = e.text.strip()
        out = (None, {"et": type(e).__name__, "msg": clean_text(f"{type(e).__name__}: {e}"), "line": clean_text(line)})
    if len(_compile_cache) >= 2048:
        _compile_cache.pop(next(iter(_compile_cache)))
    _compile_cache[key] = out
    return out


def _rewritten(filename: str, source: str) -> object:
    """A checked test's code through pytest's assertion rewriting, to explain its failed
    assert in this server (see `Checking.explain`); None if it does not compile."""
    return compile_trusted(filename, source, rewrite=True)[0]


_route_cache: dict[tuple[tuple[str, ...], str, str | None], list[bool]] = {}


def checked(sources: tuple[str, ...], setup: str, entry_point: str | None) -> list[bool]:
    """Which tests the server checks itself (see `_sandbox_routes`); cached like the code."""
    key = (sources, setup, entry_point)
    hit = _route_cache.get(key)
    if hit is None:
        hit = [r.path == routes.CHECKED for r in routes.routes(sources, setup, entry_point)]
        if len(_route_cache) >= 1024:
            _route_cache.pop(next(iter(_route_cache)))
        _route_cache[key] = hit
    return hit


_literal_cache: dict[tuple[str, str | None], tuple[list[bytes], bool]] = {}


def literal_requests(source: str, entry_point: str | None) -> tuple[list[bytes], bool]:
    """The encoded arguments of a checked test's calls with literal arguments, which the
    checking asks for before the test runs, and whether they are all the calls it can make
    (see `_sandbox_checking`); cached like the code."""
    key = (source, entry_point)
    hit = _literal_cache.get(key)
    if hit is None:
        requests, complete = [], bool(entry_point) and routes.only_literal_calls(source, str(entry_point))
        for args, kwargs in routes.literal_calls(source, entry_point) if entry_point else ():
            try:
                requests.append(codec.encode((args, kwargs)))
            except codec.NotPlain:
                complete = False  # (the test fails on it when it makes the call)
        hit = (requests, complete)
        if len(_literal_cache) >= 2048:
            _literal_cache.pop(next(iter(_literal_cache)))
        _literal_cache[key] = hit
    return hit


# -------------------------------------------------------------------------- server


class Run:
    """One run in progress: its zygote, when it started, its verdict's state, and its watch:
    the limits' deadlines, the pipes still open, requests not yet written."""

    def __init__(self, req: dict, z: Zygote, state: RunState, t0: float, cpu: procs.RunCpu) -> None:
        self.req, self.z, self.state, self.t0, self.cpu = req, z, state, t0, cpu
        lim = req["limits"]
        self.output_cap = int(lim["output_bytes"])
        self.cpu_limit = float(lim["cpu_seconds"])
        self.wall_limit = float(lim["wall_seconds"])
        self.wait_credit = float(lim["cpu_wait_credit_seconds"])
        self.deadline = t0 + self.wall_limit  # pushed back by the run's wait for a CPU (`RunCpu`)
        self.cpu_check = t0 + self.cpu_limit / cpu.rate  # the soonest it can reach the limit
        self.open_fds = [z.res_r, z.out_r]
        self.outgoing = b""  # requests for the child, not yet written
        self.closing = False  # the job pipe closes once they are
        self.over = False  # ended, stopped or broken: nothing more comes


class Requests:
    """The `Channel` of one run (see `_sandbox_checking`): requests on its job pipe, answers
    through the server's watch of the run."""

    def __init__(self, server: Server, run: Run) -> None:
        self.server, self.run = server, run

    def send(self, kind: bytes, payload: bytes) -> None:
        self.run.outgoing += FRAME.pack(len(payload) + 1) + kind + payload

    def close(self) -> None:
        self.run.closing = True
        self.server._write_requests(self.run)

    def receive(self) -> dict:
        try:
            more = self.server._watch(self.run, want_message=True)
        except Broken:  # the server's link is gone: the server restarts
            raise
        except Exception as e:  # failing on what the candidate sent: its run is corrupt, not the test's
            self.run.state.corrupt = self.run.state.corrupt or f"the result channel could not be read " \
                                                               f"({type(e).__name__})"
            raise Stopped from None
        if not more:
            raise Stopped
        return self.run.state.inbox.popleft()


class Server:
    def __init__(self, cfg: dict, proto_in: int, proto_out: int) -> None:
        self.cfg = cfg
        self.proto_in, self.proto_out = proto_in, proto_out
        self.iso = isolation.setup_isolation(cfg)
        self.pid = os.getpid()
        forker.prctl(forker.PR_SET_CHILD_SUBREAPER, 1)  # should the forker die, its orphans come here
        self.pending: list[Run] = []  # runs that ended cleanly, child still exiting
        # What every child gets (the forker's environment), set once here.
        os.environ.clear()
        os.environ.update(
            {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": self.iso.work if self.iso.scratch else "/tmp",
                "TMPDIR": "/tmp" if "/tmp" in self.iso.scratch_dirs else self.iso.work,
                "LANG": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8",
                "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            }
        )
        # also clears a dead namesake's leftovers
        if self.iso.uid is not None and not procs.kill_uid(self.iso.uid, self.iso.gid):
            self.iso.notes.append("could not switch to the sandbox uid")
            self.iso.uid = self.iso.gid = None
        self.scratch = scratch.Scratch(self.iso) if self.iso.scratch else None
        self.ipc = scratch.Ipc(self.iso)
        self.tainted = False  # a run left processes that would not die: stop after replying
        if self.scratch is not None:
            self.scratch.empty()
        self.link = ForkerLink(self.iso, self.pid, bool(cfg.get("rewriter")), list(cfg.get("site_packages", [])))
        self.slot = 0  # the cgroup slot of the run in progress, else of the last one
        self.running = False  # a run is in progress (its zygote has joined its slot)
        self.link.on_zygote = self._join_ahead

    def _join_ahead(self, z: Zygote) -> None:
        """A zygote that arrives while a run goes on joins the other slot's cgroups at once,
        off the next job's path (see `_sandbox_cgroups`): every earlier run in that slot is
        gone, since a run starts once the runs before it are."""
        if self.running:
            self._join(z, 1 - self.slot)

    def _join(self, z: Zygote, slot: int) -> str | None:
        """Move a zygote into the slot's cgroups; why that failed, if it did (a zygote gone
        already fails too, and its run says so)."""
        if z.host_pid is None:
            return None
        try:
            if self.iso.memory is not None:
                self.iso.memory.join(z.host_pid, slot)
            if self.iso.cpu is not None:
                self.iso.cpu.join(z.host_pid, slot)
        except OSError as e:
            return e.strerror or type(e).__name__
        z.slot = slot
        return None

    # --- one run --------------------------------------------------------------------

    def run(self, req: dict) -> tuple[dict, Run | None, bool]:
        lim = req["limits"]
        tests = []
        for name, source in req["tests"]:
            filename = "<test %s>" % str(name).replace("\n", " ")[:200]
            code, err = compile_trusted(filename, source, bool(req.get("explain", True)))
            tests.append([str(name), filename, source, code, err])
        setup_src = req.get("setup") or ""
        setup_code, setup_err = (None, None)
        if setup_src.strip():
            setup_code, setup_err = compile_trusted("<setup>", setup_src, bool(req.get("explain", True)))
        entry_point = req.get("entry_point") or None
        for test, route in zip(tests, checked(tuple(t[2] for t in tests), setup_src, entry_point)):
            test += [route, *(literal_requests(test[2], entry_point) if route else ([], False))]
        job = {  # no tests: the server runs them (those in process it sends one by one)
            "program": req["program"],
            "setup": setup_code,
            "setup_error": setup_err,
            "setup_source": setup_src,
            "entry_point": entry_point,
            "limits": lim,
            "uid_tasks": procs.uid_tasks(os.getuid()) if self.iso.uid is None else 0,
        }
        self._reap_pending(wait=True)  # the scratch space is emptied only once they are gone
        if self.tainted:
            raise Broken("a finished run left processes that would not die")
        payload = marshal.dumps(job)
        if self.scratch is not None:
            self.scratch.resize(int(lim["file_size_mb"]))
        z = self.link.take_zygote()
        if self.iso.memory is not None:
            try:  # (its job may ask for another limit)
                self.iso.memory.limit(int(lim["memory_mb"]))
            except OSError:
                pass
        not_joined = self._join(z, 1 - self.slot) if z.slot is None else None  # (unless joined ahead)
        meter = None  # the CPU cgroup, once the zygote is in it
        if z.slot is not None:
            self.slot, meter = z.slot, self.iso.cpu
        self.running = True
        cpu = procs.RunCpu(meter, self.slot, z.host_pid)
        run = Run(req, z, RunState(lim, [t[0] for t in tests]), time.monotonic(), cpu)
        run.state.not_in_cgroups = not_joined
        try:
            forker.write_frame(z.req_w, payload)
            os.set_blocking(z.req_w, False)  # requests follow, written as the child takes them
        except OSError:
            pass  # it died; the watch sees that
        st = run.state
        try:
            if self.iso.uid is not None:
                # Fork the next zygote while this job runs: it stays root until its own job
                # arrives, so nothing this run's clean-up does as the sandbox uid can touch it.
                self.link.spawn_zygote()
            setup = (setup_code, setup_src, setup_err)
            rewrite = _rewritten if req.get("explain_here") and not req.get("explain", True) else None
            checking = Checking(tests, setup, entry_point, Requests(self, run), st, run.output_cap, rewrite,
                                int(req["test_seed"]))
            if not checking.run():
                if z.req_w is not None:
                    os.close(z.req_w)  # the child's cue to finish: its end message may come
                z.req_w, st.closed = None, True  # type: ignore[assignment]
                self._watch(run, want_message=False)
            else:  # it failed, and its child may be busy with calls no test made: it is stopped
                st.settled = True
            self._watched(run)
        except Exception:
            self._stop(run, clean=False)  # a bug here must not leave the run's child or fds
            raise
        finally:
            self.running = False
        clean = st.end and not st.corrupt and not st.timed_out and not st.cpu_timed_out
        if not clean:
            self._stop(run, clean=False)
            used = run.cpu.used(alive=False) if run.cpu.whole else None
            if used is not None:  # every process of the run is gone: all of its CPU time
                st.cpu_seen = max(st.cpu_seen or 0.0, used)
        if st.sandbox_error:  # the child could not be confined: the sandbox broke, not the program
            return {"ok": False, "error": st.sandbox_error}, run, False
        if not st.corrupt:  # (after the run: its time and limits are the program's alone)
            checking.explain()
        if self.iso.memory is not None and self.iso.memory.capped(run.cpu.slot):  # it killed a process of the run
            st.memory_cap_mb = self.iso.memory.limit_mb
        result = st.result(self.iso.mode)
        return {"ok": True, "result": result, "explained": checking.explained}, run, clean

    def _watch(self, run: Run, want_message: bool) -> bool:
        """Watch the run, writing its pending requests, until a message for the checking has
        come (`want_message`: True) or the run is over (False): its end, its exit, a corrupt
        channel, its CPU time reaching the limit (the limit that decides: independent of the
        machine's load) or the wall clock's deadline (a backstop for programs that wait rather
        than compute). RLIMIT_CPU stops each process in whole seconds by itself; the server's
        own look at the run's CPU time (see `procs.RunCpu`), once it may have reached the limit,
        counts all of its processes, makes fractional limits exact and costs a run that ends
        sooner nothing."""
        z, st, sock = run.z, run.state, self.link.sock
        while True:
            if want_message and st.inbox:
                return True
            if st.end or st.corrupt:
                run.over = True
            if run.over:
                return False
            if run.outgoing:
                self._write_requests(run)
            now = time.monotonic()
            if now >= run.deadline:
                later = run.cpu.wall_deadline(run.t0, run.wall_limit, run.wait_credit)
                if later > now:  # it was kept waiting for a CPU: the backstop moves with that
                    run.deadline = later
                else:
                    st.timed_out = run.over = True
                continue
            if now >= run.cpu_check:
                used = run.cpu.used(alive=not z.reaped)
                if used is not None and used >= run.cpu_limit:
                    st.cpu_timed_out, st.cpu_seen, run.over = True, used, True
                    continue
                left = (run.cpu_limit - used) / run.cpu.rate if used is not None else 0.05
                run.cpu_check = now + max(0.01, left)
            watch: list[int | _socket.socket] = [*run.open_fds, sock]  # the forker reports the child's exit
            if z.pidfd is not None:
                watch.append(z.pidfd)
            writing = [z.req_w] if run.outgoing and z.req_w is not None else []
            try:
                ready, writable, _ = select.select(watch, writing, [], min(run.deadline, run.cpu_check) - now)
            except InterruptedError:
                continue
            if writable:
                self._write_requests(run)
            if sock in ready:
                self.link.drain()
            if z.out_r in ready and not self._read_output(run):
                run.open_fds.remove(z.out_r)
            if z.res_r in ready:
                try:
                    data = os.read(z.res_r, READ_SIZE)
                except OSError:
                    data = b""
                if not data:
                    run.open_fds.remove(z.res_r)
                else:
                    st.feed(data)
            if (z.pidfd is not None and z.pidfd in ready) or z.pid in self.link.exits:
                self._wait_child(run, block=True)
                self._drain(run, budget=0.0)  # what it wrote before it went
                run.over = True

    def _write_requests(self, run: Run) -> None:
        try:
            written = os.write(run.z.req_w, run.outgoing)
        except BlockingIOError:
            return
        except (OSError, TypeError):  # the child is gone (its exit is on its way), or the pipe closed
            run.outgoing = b""
        else:
            run.outgoing = run.outgoing[written:]
        if run.closing and not run.outgoing and run.z.req_w is not None:
            os.close(run.z.req_w)
            run.z.req_w, run.state.closed = None, True  # type: ignore[assignment]

    def _watched(self, run: Run) -> None:
        """Once the run is over: its time, its CPU time (its cgroup's, or the child's while
        /proc has it), and what is left in its pipes."""
        z, st = run.z, run.state
        st.seconds = time.monotonic() - run.t0
        used = run.cpu.used(alive=not z.reaped)
        if used is not None:
            st.cpu_seen = max(st.cpu_seen or 0.0, used)
        elif not z.reaped and st.end:  # gone already: its rusage is on its way
            self._wait_child(run, block=True)
        self._drain(run, budget=0.0)  # what is already in the pipes belongs to this run

    def _wait_child(self, run: Run, block: bool) -> bool:
        """Take the run's child's exit from the forker, waiting for it if `block`; True once
        it has been reaped."""
        z, link = run.z, self.link
        if z.reaped:
            return True
        link.drain()
        deadline = time.monotonic() + 30.0
        while block and z.pid not in link.exits:
            if time.monotonic() >= deadline:
                raise Broken("the forker never reported a child's exit")
            if not link.receive(min(0.05, deadline - time.monotonic())):
                link.nudge()  # it may not have seen the exit (no pidfd for this child)
        if z.pid not in link.exits:
            return False
        status, usage = link.exits.pop(z.pid)
        z.reaped = True
        run.state.set_exit(status, usage)
        return True

    def _read_output(self, run: Run) -> bool:
        try:
            data = os.read(run.z.out_r, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        run.state.add_output(data, run.output_cap)
        return True

    def _drain(self, run: Run, budget: float) -> None:
        z, st = run.z, run.state
        for fd in (z.out_r, z.res_r):
            if fd is None:
                continue
            os.set_blocking(fd, False)
            until = time.monotonic() + budget
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    if time.monotonic() >= until:
                        break
                    select.select([fd], [], [], max(0.0, until - time.monotonic()))
                    continue
                except OSError:
                    break
                if not data:
                    break
                if fd == z.out_r:
                    st.add_output(data, run.output_cap)
                elif not st.end and not st.corrupt:
                    st.feed(data)

    def _stop(self, run: Run, clean: bool) -> None:
        """Make sure the run's child and everything it started are gone; reap; tidy up."""
        z, st, link = run.z, run.state, self.link
        forced = not clean
        if not z.reaped and clean:
            # it reported everything and is on its way out
            deadline = time.monotonic() + 1.0
            while z.pid not in link.exits and time.monotonic() < deadline:
                link.receive(deadline - time.monotonic())
            self._wait_child(run, block=False)
        if not z.reaped:
            forced = True
            z.kill()
            self._wait_child(run, block=True)
        if self.iso.uid is not None:
            # On a clean end the harness has already SIGKILLed every other process of the uid,
            # after making forks impossible (RLIMIT_NPROC 0); otherwise do it now.
            if forced:
                procs.kill_uid(self.iso.uid, self.iso.gid)
            st.leftovers = not link.settle()
        else:
            st.leftovers = not link.sweep(z.host_pid)
        if forced:
            self._drain(run, budget=1.0)
        if st.leftovers:
            # Something of the run survived SIGKILL: it must not meet the next run. Stop after
            # this reply; the client starts a new server (with a new uid and namespaces).
            self.tainted = True
        else:
            self.ipc.empty()
            if self.scratch is not None:
                try:
                    self.scratch.empty()
                except Exception:  # not even fresh mounts: a new server takes over after this reply
                    self.tainted = True
        z.close_fds()
        if z.work and self.iso.run_dir:
            scratch.remove_tree(z.work)

    # --- main loop -------------------------------------------------------------------

    def hello(self) -> dict:
        return {
            "ok": True,
            "pid": self.pid,
            "isolation": self.iso.describe(),
            "mode": self.iso.mode,
            "uid": self.iso.uid,
            "notes": self.iso.notes,
            "subreaper": self.link.subreaper,
        }

    def send(self, obj: dict) -> None:
        forker.write_frame(self.proto_out, json.dumps(obj, ensure_ascii=True).encode())

    def _reap_pending(self, wait: bool = False, force: bool = False) -> None:
        """Finish the clean-up of runs whose child reported everything and is exiting
        (`wait`: all of them, waiting up to a second for each to exit)."""
        still = []
        for run in self.pending:
            if wait or self._wait_child(run, block=False):
                self._stop(run, clean=True)
            elif force or time.monotonic() - run.t0 - run.state.seconds > 1.0:
                self._stop(run, clean=False)  # it should have exited long ago: kill everything
            else:
                still.append(run)
        self.pending = still

    def serve(self) -> None:
        try:
            self._warm_up()
        except Exception as e:  # cleaned up before the client, told, kills this process
            self._shut_down()
            self.send({"ok": False, "error": f"no child could be started: {type(e).__name__}: {e}"})
            return
        self.send(self.hello())
        try:
            self._serve()
        except Broken as e:  # the client restarts a server that stops answering
            sys.stderr.write(f"sandbox server: {e}\n")
        finally:
            self._shut_down()

    def _warm_up(self) -> None:
        """First-use costs paid at start-up, not by the first job (about 15 ms of it): the
        first zygote joins its cgroups now (a process's first move into a cgroup waits for an
        RCU grace period, several ms), and the analyses and the compiler run once on a test of
        the common form."""
        self._join(self.link.ready_zygote(), 1 - self.slot)
        source = "def check(candidate):\n    assert candidate([1], x=2.5) == {'a': (None, True)}\ncheck(f)\n"
        checked((source,), "", "f")
        literal_requests(source, "f")
        compile(source, "<warm-up>", "exec", dont_inherit=True)

    def _serve(self) -> None:
        sock = self.link.sock
        while not self.tainted:
            # a clean run's child is waited for (or forced) a second after its end
            try:
                watch: list[int | _socket.socket] = [self.proto_in, sock]
                ready, _, _ = select.select(watch, [], [], 1.0 if self.pending else None)
            except InterruptedError:
                continue
            if sock in ready:
                self.link.drain()
            if self.pending:
                self._reap_pending()
            if self.proto_in not in ready:
                continue
            try:
                req = json.loads(forker.read_frame(self.proto_in))
            except EOFError:
                return
            op = req.get("op")
            if op == "quit":
                return
            if op == "ping":
                self.send({"ok": True})
                continue
            if op != "run":
                self.send({"ok": False, "error": f"unknown op {op!r}"})
                continue
            run, clean = None, False
            try:
                resp, run, clean = self.run(req)
            except Broken:
                raise
            except Exception:
                import traceback

                resp = {"ok": False, "error": traceback.format_exc()}
                self.link.discard_zygote()
                self._end_every_run()
            self.send(resp)
            if run is not None and clean:
                if self.iso.uid is not None:
                    # On a clean end the harness already killed every other process of the
                    # uid; its own exit is reaped when it comes (or forced within a second).
                    self.pending.append(run)
                else:
                    self._stop(run, clean=True)
            self.link.spawn_zygote()

    def _end_every_run(self) -> None:
        if self.iso.uid is not None:
            procs.kill_uid(self.iso.uid, self.iso.gid)
            self.link.settle()
        else:
            self.link.sweep(None)

    def _shut_down(self) -> None:
        for step in (lambda: self._reap_pending(force=True), self.link.discard_zygote, self._end_every_run):
            try:
                step()
            except (Broken, OSError):
                pass  # the forker is gone: what it left is swept up below
        self.link.close()
        if self.iso.uid is not None:
            procs.kill_uid(self.iso.uid, self.iso.gid)
        else:
            # last, without a sandbox uid: whatever still descends from here
            procs.kill_descendants(self.pid)
        if self.iso.run_dir:
            scratch.remove_tree(self.iso.run_dir)
        for group in (self.iso.memory, self.iso.cpu):
            if group is not None:
                group.remove()


# ---------------------------------------------------------------------------- main


def main(config: str = "{}") -> None:
    """Run the server; `config` is the client's JSON (degrade, file_size_mb, rewriter,
    site_packages, cpu)."""
    cfg = json.loads(config)
    if cfg.get("cpu") is not None:  # inherited by the forker and every child
        try:
            os.sched_setaffinity(0, {int(cfg["cpu"])})
        except OSError:
            pass  # a CPU this process may not use: run anywhere
    sys.dont_write_bytecode = True
    forker.site_without_pth(cfg.get("site_packages", []))  # pytest's rewriter; paths to expose
    # The protocol gets private fds; 0 and 1 become /dev/null so nothing stray corrupts it.
    try:
        os.fstat(2)
    except OSError:  # started with stderr closed: keep fds 0-4 as the zygote expects them
        os.dup2(os.open("/dev/null", os.O_RDWR), 2)
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    sys.stdout = sys.stderr
    # Dispositions and mask as in a fresh interpreter (nothing inherited as ignored or
    # blocked), once here for the forker and every child. The server runs in a session of
    # its own, so a terminal's Ctrl-C never reaches it.
    handler: signal.Handlers | typing.Callable[[int, typing.Any], object]
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        if sig == signal.SIGINT:
            handler = signal.default_int_handler
        elif sig in (signal.SIGPIPE, signal.SIGXFSZ):
            handler = signal.SIG_IGN
        else:
            handler = signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        server = Server(cfg, proto_in, proto_out)
    except Exception:  # a bug, not a missing capability (those are handled): say what broke
        import traceback

        forker.write_frame(proto_out, json.dumps({"ok": False, "error": traceback.format_exc()}).encode())
        raise SystemExit(1) from None
    server.serve()


if __name__ == "__main__":
    main(*sys.argv[1:2])
