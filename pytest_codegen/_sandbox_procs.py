"""Processes of the sandbox's runs: what /proc says of them, and killing them.

Used by the sandbox server (see `_sandbox_server`, "How one execution runs", for when each
way of killing applies). Imported by name from its directory like every sandbox file (see
`_sandbox_bootstrap`).
"""

from __future__ import annotations

import os
import re
import signal
import time
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen._sandbox_cgroups import CpuMeter

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Taken at import: glibc reads it from /sys (or /proc/stat) at every call, tens of microseconds
_CPUS = os.cpu_count() or 1
# This process's /proc, taken at import: the isolation set-up later covers /proc with the
# sandbox's own (its PID namespace's), where the server's processes have other numbers or none.
PROC = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def read(path: str) -> bytes:
    """A file under this process's /proc (`path` relative to it)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=PROC)
    try:
        chunks = [os.read(fd, 1 << 16)]
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _pids() -> list[str]:
    return [entry for entry in os.listdir(PROC) if entry.isdigit()]


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in _pids():
        try:
            stat = read(f"{entry}/stat")
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int) -> list[int]:
    children = _proc_children()
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


_children_files: dict[int, int] = {}  # pid -> its children file, kept open (read once or more per run)


def children(pid: int) -> set[int] | None:
    """The direct children of a single-threaded process; None where /proc cannot say."""
    try:
        fd = _children_files.get(pid)
        if fd is None:
            fd = _children_files[pid] = os.open(f"{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC, dir_fd=PROC)
        chunks = [os.pread(fd, 1 << 16, 0)]
        while len(chunks[-1]) == 1 << 16:
            chunks.append(os.pread(fd, 1 << 16, len(chunks) << 16))
        return {int(child) for child in b"".join(chunks).split()}
    except (OSError, ValueError):
        fd = _children_files.pop(pid, None)
        if fd is not None:
            os.close(fd)
        return None


def pidfd_pid(pidfd: int, pid: int) -> int | None:
    """The pid here of the process a pidfd refers to, if it is `pid` in its own PID namespace
    (what `host_pid` finds, from one small file); None if it has exited."""
    try:
        info = read(f"self/fdinfo/{pidfd}")
    except OSError:
        return None
    here = inner = None
    for line in info.splitlines():
        if line.startswith(b"Pid:"):
            here = int(line.split()[1])
        elif line.startswith(b"NSpid:"):
            inner = int(line.split()[-1])
    return here if here is not None and here > 0 and inner == pid else None


def host_pid(parent: int, pid: int) -> int | None:
    """The pid here of the child of `parent` (a pid here) whose pid is `pid` in its own PID
    namespace (the same, without one); None if there is no such child."""
    for child in children(parent) or ():
        try:
            status = read(f"{child}/status")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith(b"NSpid:"):
                if int(line.split()[-1]) == pid:
                    return child
                break
    return None


def proc_cpu(pid: int | None) -> float | None:
    """The CPU time (user + system, seconds) of process `pid` so far; None if it is gone."""
    if pid is None:
        return None
    try:
        stat = read(f"{pid}/stat")
        fields = stat[stat.rfind(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


class RunCpu:
    """The CPU time a run has used since it began: with the server's CPU cgroup (`meter`, the
    run's zygote just joined), that of every process of the run, exited ones included; without
    one, only its first process's own (`pid`, while it exists), so a run that forks gets more.
    `slot`: the run's cgroups (see `_sandbox_cgroups`). Where the cgroup also keeps how long
    its members waited for a CPU, the wall-clock backstop does not count that wait."""

    def __init__(self, meter: CpuMeter | None, slot: int, pid: int | None) -> None:
        self.meter, self.slot, self.pid = meter, slot, pid
        self.start = self._meter_seconds() if meter is not None else None
        self.wait_start = meter.waited(slot) if meter is not None else None
        self.whole = self.start is not None  # every process's, not only the first's
        # how fast it can grow (seconds a second): the candidate may widen its CPU affinity
        self.rate = float(_CPUS) if self.whole else 1.0

    def _meter_seconds(self) -> float | None:
        try:
            return self.meter.seconds(self.slot) if self.meter is not None else None
        except (OSError, ValueError):
            return None

    def wall_deadline(self, t0: float, wall_seconds: float, credit: float) -> float:
        """When the run started at `t0` reaches its wall-clock limit: `wall_seconds` later,
        plus the time its processes were ready to run but had no CPU (a machine's load), at
        most `credit`. A program that sleeps or blocks waits for no CPU."""
        waited = 0.0
        if self.wait_start is not None and self.meter is not None:
            now = self.meter.waited(self.slot)
            waited = 0.0 if now is None else min(max(0.0, now - self.wait_start), max(credit, 0.0))
        return t0 + wall_seconds + waited

    def used(self, alive: bool) -> float | None:
        """Seconds so far; None where it cannot be read (without a cgroup: the first process
        is gone, `alive` False, and its number may be another's now)."""
        if self.start is not None:
            now = self._meter_seconds()
            return None if now is None else max(0.0, now - self.start)
        return proc_cpu(self.pid) if alive else None


def uid_tasks(uid: int) -> int:
    """How many tasks (threads count, as for RLIMIT_NPROC) run as `uid`."""
    n = 0
    for entry in _pids():
        try:
            status = read(f"{entry}/status").decode()
        except OSError:
            continue
        uid_line = re.search(r"^Uid:\s+(\d+)", status, re.M)
        threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
        if uid_line and int(uid_line.group(1)) == uid:
            n += int(threads.group(1)) if threads else 1
    return n


def kill_uid(uid: int | None, gid: int | None) -> bool:
    """Fork a killer that becomes `uid` and SIGKILLs every process of that uid; True if it did.

    kill(-1) runs under the kernel's task-list lock, which fork also needs, so one call
    gets every process of the uid, including one being forked at that moment.
    """
    assert uid is not None and gid is not None and uid != 0
    try:
        pid = os.fork()
    except OSError:  # the sandbox's PID namespace is gone (and every process in it)
        return False
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            if os.getresuid() == (uid, uid, uid) and uid != 0:  # never kill(-1) as root
                try:
                    os.kill(-1, signal.SIGKILL)
                except OSError:
                    pass
                os._exit(0)
        except BaseException:
            pass
        os._exit(1)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def kill_descendants(root: int, timeout: float = 5.0) -> None:
    """SIGKILL and reap whatever still descends from `root`, this process (orphans of a
    forker that died come back to it, a subreaper)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = descendants(root)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        time.sleep(0.005)
