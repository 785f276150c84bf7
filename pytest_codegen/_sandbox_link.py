"""The sandbox server's link to its forker: starting it, zygotes, exits, reaping.

The forker (`_sandbox_forker`) forks the children; the server asks it over a SOCK_SEQPACKET
socket pair for a zygote (b"S" + work dir) and to reap (b"R"), and hears back each zygote's
pipes and pidfd (`SPAWNED`) and each zygote's exit (`EXITED`). Imported by name from its
directory like every sandbox file (see `_sandbox_bootstrap`).
"""

from __future__ import annotations

import _socket
import fcntl
import marshal
import os
import select
import signal
import struct
import sys
import time
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_bootstrap as bootstrap
    from pytest_codegen import _sandbox_forker as forker
    from pytest_codegen import _sandbox_isolation as isolation
    from pytest_codegen import _sandbox_procs as procs
    from pytest_codegen import _sandbox_scratch as scratch
    from pytest_codegen._sandbox_runstate import Usage
else:
    import _sandbox_bootstrap as bootstrap
    import _sandbox_forker as forker
    import _sandbox_isolation as isolation
    import _sandbox_procs as procs
    import _sandbox_scratch as scratch
    from _sandbox_runstate import Usage


class Broken(Exception):
    """The forker is gone or talks nonsense: the server cannot go on."""


class Zygote:
    """A child forked ahead of a job, confined as far as possible without knowing the job.

    `pid` is its pid as the forker knows it (in the sandbox's PID namespace), `host_pid` its
    pid here (None if it was gone before the server looked): for signals and /proc.
    """

    def __init__(self, pid: int, host_pid: int | None, req_w: int, res_r: int, out_r: int, pidfd: int | None,
                 work: str | None):
        self.pid, self.host_pid = pid, host_pid
        self.req_w, self.res_r, self.out_r, self.pidfd = req_w, res_r, out_r, pidfd
        self.work = work
        self.reaped = False
        self.slot: int | None = None  # the cgroup slot it joined (see `_sandbox_cgroups`)

    def close_fds(self) -> None:
        for name in ("req_w", "res_r", "out_r", "pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)

    def kill(self) -> None:
        if self.reaped:
            return
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            elif self.host_pid is not None:
                os.kill(self.host_pid, signal.SIGKILL)
        except OSError:
            pass
        if self.host_pid is not None:
            try:
                os.killpg(self.host_pid, signal.SIGKILL)  # its session/process group, while it still exists
            except OSError:
                pass


class ForkerLink:
    """The forker of a server isolated as `iso`, and the zygote it has ready.

    `exits` holds the zygotes' exits the forker reported and nobody took yet.
    """

    def __init__(self, iso: isolation.Isolation, server_pid: int, rewriter: bool, site_packages: list[str]) -> None:
        self.iso, self.server_pid = iso, server_pid
        self.zygote: Zygote | None = None
        self.zygote_requested = False
        self.zygote_work: list[str | None] = []  # work dirs of requested zygotes, in order
        self.exits: dict[int, tuple[int, Usage]] = {}  # zygote pid -> (wait status, usage)
        self.runs = 0
        self.pidns = False  # the forker is in a PID namespace of its own
        self.init: tuple[int, int] | None = None  # its first process: pid, the pipe that keeps it
        self.on_zygote: typing.Callable[[Zygote], None] | None = None  # called with each zygote that arrives
        self.pid, self.sock, self.subreaper = self._start(rewriter, site_packages)

    def _start(self, rewriter: bool, site_packages: list[str]) -> tuple[int, _socket.socket, bool]:
        """Start the forker: a fresh interpreter in this server's namespaces and mounts that
        loads only the children's side (see `_sandbox_forker`). It inherits fds 0-2 (0 and 1
        are /dev/null) and its end of a socket pair; no other fd of the server is inheritable.

        With a minimal root, it is in a new PID namespace (the server's children from then on
        are in it; the server is not), with a /proc of its own. What could be done of that and
        of forbidding user namespaces goes to the isolation."""
        iso = self.iso
        if iso.minimal_root:
            try:
                isolation.unshare(isolation.CLONE_NEWPID)
                self.init, proc = self._start_init()
                self.pidns = True
                if proc:
                    iso.namespaces.append("pid")
                else:
                    iso.missing.append("no /proc of the PID namespace (the host's processes show)")
            except OSError as e:
                iso.missing.append(f"no PID namespace ({e.strerror})")
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        config = {
            "server_pid": self.server_pid, "sock": theirs.fileno(), "rewriter": rewriter,
            "site_packages": site_packages,
            "uid": iso.uid, "gid": iso.gid, "userns": iso.userns, "scratch": iso.scratch, "work": iso.work,
        }
        os.set_inheritable(theirs.fileno(), True)
        try:
            pid = os.posix_spawn(
                sys.executable,
                bootstrap.command(forker.__file__, marshal.dumps(config).hex()),
                bootstrap.environment(dict(os.environ)),
            )
        finally:
            theirs.close()
        ready, _, _ = select.select([ours], [], [], 60.0)
        hello = ours.recv(16) if ready else b""
        if hello[:1] != b"H" or len(hello) != 3:
            raise RuntimeError("the forker did not start")
        if hello[2:3] == b"1":
            iso.no_userns = True
        else:
            iso.missing.append("user namespaces not blocked (no seccomp filter)")
        return pid, ours, hello[1:2] == b"1"

    @staticmethod
    def _start_init() -> tuple[tuple[int, int], bool]:
        """The PID namespace's first process, a fork of this server: it mounts the namespace's
        /proc over the host's (a process in the namespace must, and a fresh interpreter would
        have no capabilities left in a user namespace), then waits for the server to go.
        ((pid, the pipe that keeps it), whether /proc is mounted.)

        Not the forker: a candidate's `kill(-1)` (the harness's last step as the sandbox uid)
        fails with ESRCH when it finds no process to try but the first; the forker is one.
        When this process ends (the server gone, its pipe closed), the kernel kills every
        process of the namespace.
        """
        keep, hold = os.pipe()
        told, tell = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(told)
                try:
                    flags = isolation.MS_NOSUID | isolation.MS_NODEV | isolation.MS_NOEXEC
                    isolation.mount("proc", "/proc", "proc", flags)
                    os.write(tell, b"1")
                except OSError:
                    os.write(tell, b"0")
                for low, high in ((3, keep), (keep + 1, 1 << 16)):  # none of the server's fds
                    os.closerange(low, high)
                while os.read(keep, 1):
                    pass
            finally:
                os._exit(0)
        os.close(keep)
        os.close(tell)
        proc = os.read(told, 1) == b"1"
        os.close(told)
        return (pid, hold), proc

    def close(self) -> None:
        """End the forker (it exits when its socket closes, and its zygote with it: PDEATHSIG)
        and the PID namespace."""
        self.sock.close()
        for pid, hold in ((self.pid, None), *([self.init] if self.init else [])):
            if hold is not None:
                os.close(hold)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass

    # --- messages ---------------------------------------------------------------------

    def receive(self, timeout: float | None) -> bool:
        """Take one message from the forker if one comes within `timeout`; False if none did."""
        if timeout is not None and timeout > 0:
            try:
                ready, _, _ = select.select([self.sock], [], [], timeout)
            except InterruptedError:
                return True
            if not ready:
                return False
        try:
            flags = _socket.MSG_DONTWAIT if timeout is not None else 0
            data, ancillary, flags, _addr = self.sock.recvmsg(64, _socket.CMSG_SPACE(4 * 4), flags)
        except BlockingIOError:
            return False
        except InterruptedError:
            return True
        except OSError as e:
            raise Broken(f"the forker is gone: {e}") from e
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.extend(struct.unpack("%di" % (len(payload) // 4), payload[: len(payload) // 4 * 4]))
        if flags & _socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise Broken("a message from the forker lost its file descriptors")
        if not data:
            raise Broken("the forker is gone")
        if data[:1] == b"X" and len(data) == forker.EXITED.size:
            _, pid, status, utime, stime, maxrss = forker.EXITED.unpack(data)
            self.exits[pid] = (status, Usage(utime, stime, maxrss))
        elif data[:1] == b"Z" and len(data) == forker.SPAWNED.size and len(fds) in (3, 4) and self.zygote_requested:
            _, pid = forker.SPAWNED.unpack(data)
            pidfd = fds[3] if len(fds) == 4 else None
            host_pid = pid
            if self.pidns:
                found = procs.pidfd_pid(pidfd, pid) if pidfd is not None else None
                host_pid = found if found is not None else procs.host_pid(self.pid, pid)
            for fd in fds[1:3]:
                try:
                    fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups for chatty programs
                except OSError:
                    pass
            self.zygote = Zygote(pid, host_pid, fds[0], fds[1], fds[2], pidfd, self.zygote_work.pop(0))
            self.zygote_requested = False
            if self.on_zygote is not None:
                self.on_zygote(self.zygote)
        else:
            for fd in fds:
                os.close(fd)
            raise Broken(f"unexpected message from the forker: {data[:16]!r}")
        return True

    def nudge(self) -> None:
        """Have the forker reap: it learns of its zygotes' exits, not of orphans'."""
        try:
            self.sock.send(b"R")
        except OSError as e:
            raise Broken(f"the forker is gone: {e}") from e

    def drain(self) -> None:
        while self.receive(0.0):
            pass

    # --- the zygote ----------------------------------------------------------------

    def spawn_zygote(self) -> None:
        """Ask the forker for the next zygote (taken when a job needs it)."""
        if self.zygote is not None or self.zygote_requested:
            return
        work = None
        if self.iso.run_dir is not None:
            self.runs += 1
            work = os.path.join(self.iso.run_dir, f"run-{self.runs}")
            os.mkdir(work, 0o700)
        self.zygote_work.append(work)
        self.zygote_requested = True
        try:
            self.sock.send(b"S" + (work or "").encode())
        except OSError as e:
            raise Broken(f"the forker is gone: {e}") from e

    def _take_requested_zygote(self) -> None:
        deadline = time.monotonic() + 10.0
        while self.zygote_requested:
            if time.monotonic() >= deadline:
                raise Broken("the forker did not send a zygote")
            self.receive(deadline - time.monotonic())

    def ready_zygote(self) -> Zygote:
        """The zygote for the next job (a live one), waited for; it stays the next one."""
        if self.zygote is not None and not self._alive(self.zygote):
            self.discard_zygote()
        self.spawn_zygote()
        self._take_requested_zygote()
        assert self.zygote is not None
        return self.zygote

    def take_zygote(self) -> Zygote:
        """The zygote for the next job (a live one), now the caller's."""
        z = self.ready_zygote()
        self.zygote = None
        return z

    def _alive(self, z: Zygote) -> bool:
        if not z.reaped:
            self.drain()
            if z.pid in self.exits:
                del self.exits[z.pid]
                z.reaped = True
        return not z.reaped

    def discard_zygote(self) -> None:
        self._take_requested_zygote()
        z, self.zygote = self.zygote, None
        if z is None:
            return
        z.kill()
        deadline = time.monotonic() + 10.0
        while not z.reaped and time.monotonic() < deadline:
            if z.pid in self.exits:
                del self.exits[z.pid]
                z.reaped = True
            else:
                self.receive(deadline - time.monotonic())
        z.close_fds()
        if z.work and self.iso.run_dir:
            scratch.remove_tree(z.work)

    # --- reaping the runs ----------------------------------------------------------

    def run_processes(self) -> set[int]:
        """Processes of runs not yet reaped: the forker's children but the waiting zygote.

        A live descendant always has a live ancestor among them (orphans go back to the
        forker, a subreaper), so an empty set means every run is gone.
        """
        self._take_requested_zygote()  # it may exist already: known, it is not counted
        children = procs.children(self.pid)
        if children is None:
            children = set(procs.descendants(self.pid))
        if self.zygote is not None:
            children.discard(self.zygote.host_pid)
        return children

    def settle(self, timeout: float = 1.0) -> bool:
        """After a run's processes (of the sandbox uid) were SIGKILLed: wait until the forker
        has reaped them all, killing once more if they take long; False if some are left."""
        deadline = time.monotonic() + timeout
        retried = False
        delay = 0.0002
        while self.run_processes():
            if time.monotonic() >= deadline:
                if retried:
                    return False
                retried, deadline = True, time.monotonic() + timeout
                procs.kill_uid(self.iso.uid, self.iso.gid)
            self.nudge()
            self.receive(delay)
            delay = min(delay * 2, 0.01)
        return True

    def sweep(self, pgid: int | None) -> bool:
        """Without a sandbox uid: kill the process group and every run process until none is left."""
        deadline = time.monotonic() + 5.0
        delay = 0.0005
        while self.run_processes():
            if time.monotonic() > deadline:
                return False
            if pgid is not None:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except OSError:
                    pass
            spare = {self.pid, self.zygote.host_pid if self.zygote is not None else 0, self.init[0] if self.init else 0}
            for pid in procs.descendants(self.server_pid):
                if pid not in spare:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            self.nudge()
            self.receive(delay)
            delay = min(delay * 2, 0.02)
        return True
