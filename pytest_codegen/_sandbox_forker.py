"""The forker: the process that forks a sandbox server's children.

A sandbox server (`_sandbox_server`) starts this file in a fresh interpreter (see
`_sandbox_bootstrap`), after it has set up its namespaces and mounts, so this process shares
them, and asks it over a unix socket for *zygotes*: children forked ahead of a job, confined as
far as possible without knowing it, that wait for the job on a pipe, confine themselves further
(limits, the sandbox uid), and run the harness (`_sandbox_harness`).

Why a process of its own, and why this one is small: every fork copies the page tables of all
the forking process has mapped and write-protects its memory; every page either side writes
afterwards is copied while the other still shares it; every child's exit tears its mappings
down. A server forking for itself pays that on the ~300 pages its own work per run touches and
on everything it ever loaded (the protocol, compiled tests, the verdict code). This process
loads only what the children need (the harness, libc calls, the modules candidates commonly
import), runs a warm-up program once so the compiler's first-use set-up is shared, and
between forks does little but fork. It is also the zygotes' parent and subreaper: it sees their
exits through pidfds, reaps them and their orphans and reports each zygote's exit (wait status
and resource use).

Imports stay few on purpose: `threading` and `random` would register at-fork handlers that run
in every child, `socket` adds a few hundred kB of enums and modules (`_socket` does the job),
and heavier modules (dataclasses, hashlib, fractions) are left for the candidates that import
them.
"""

from __future__ import annotations

import _json
import _socket
import ctypes
import errno
import gc
import io
import marshal
import os
import resource
import select
import signal
import struct
import sys
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_harness as harness
else:
    import _sandbox_harness as harness

# isort: split
# Pre-imported for the candidates: their imports of these are a dict lookup after the fork.
# (Not bisect or heapq: each extension module maps five more regions that every fork copies
# and every exit unmaps, for an import few candidates make.)
import collections  # noqa: F401,E402
import copy  # noqa: F401,E402
import functools  # noqa: F401,E402
import itertools  # noqa: F401,E402
import math  # noqa: F401,E402
import operator  # noqa: F401,E402
import string  # noqa: F401,E402

# --------------------------------------------------------------------------- constants

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522

RESULT_FD, MAX_TEXT, MAX_TB = harness.RESULT_FD, harness.MAX_TEXT, harness.MAX_TB
_ESC = _json.encode_basestring_ascii

_HEADER = struct.Struct(">I")

# ------------------------------------------------------------------ libc via ctypes

# dlopen(NULL): libc's symbols through the interpreter itself (ctypes.util would pull in
# subprocess and threading, whose at-fork handler then runs in every child)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def prctl(option: int, arg: int = 0) -> int:
    return libc.prctl(option, arg, 0, 0, 0)


def _drop_capabilities() -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (Data * 2)()
    check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


# No user namespaces and no kernel keys inside the sandbox. In a user namespace, a process has
# every capability over what it creates there (mounts, networks); kernel keys outlive the
# processes that store them, so one run could hand data to the next in its uid's keyrings. A
# seccomp filter, inherited by every child, fails unshare(2) and clone(2) asked for
# CLONE_NEWUSER, and add_key(2), request_key(2) and keyctl(2), with EPERM, and clone3(2), whose
# flags a filter cannot read, with ENOSYS (libc falls back to clone). Calls of another ABI
# (32-bit, x32) fail too. Per architecture: (AUDIT_ARCH, unshare, clone, clone3, the key calls).
_SECCOMP_ABI = {
    "x86_64": (0xC000003E, 272, 56, 435, (248, 249, 250)),
    "aarch64": (0xC00000B7, 97, 220, 435, (217, 218, 219)),
}.get(os.uname().machine)
PR_SET_SECCOMP, SECCOMP_MODE_FILTER, CLONE_NEWUSER = 22, 2, 0x10000000
KEYCTL_JOIN_SESSION_KEYRING, KEYCTL_SETPERM, KEY_SPEC_SESSION_KEYRING = 1, 5, -3
KEY_POS_VIEW_SEARCH = 0x09000000  # the possessor may look, not add, link or change


def _seccomp_filter() -> bool:
    """Install the filter in this process (NO_NEW_PRIVS set); True if it is in force."""
    if _SECCOMP_ABI is None:
        return False
    arch, unshare, clone, clone3, (add_key, request_key, keyctl) = _SECCOMP_ABI
    allow, deny, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    # (code, jump if true, jump if false, k): a jump skips that many instructions;
    # seccomp_data: nr at 0, arch at 4, args at 16
    program = [
        (ld, 0, 0, 4), (jeq, 0, 11, arch),  # 0-1: another ABI: deny
        (ld, 0, 0, 0), (jge, 9, 0, 0x40000000),  # 2-3: x32 calls: deny
        (jeq, 9, 0, clone3),  # 4: ENOSYS
        (jeq, 7, 0, add_key), (jeq, 6, 0, request_key), (jeq, 5, 0, keyctl),  # 5-7: deny
        (jeq, 1, 0, unshare), (jeq, 0, 2, clone),  # 8-9: look at the flags, else allow
        (ld, 0, 0, 16), (jset, 1, 0, CLONE_NEWUSER),  # 10-11: the flags (low 32 bits of the first argument)
        (ret, 0, 0, allow), (ret, 0, 0, deny), (ret, 0, 0, enosys),  # 12, 13, 14
    ]

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(program))(*(Filter(*f) for f in program))
    fprog = Program(len(program), filters)
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


def _private_session_keyring() -> None:
    """In the forker, before the filter: a fresh session keyring for it and every child, read-only
    to them (where the filter cannot be had, the children at least do not share the server's)."""
    if _SECCOMP_ABI is None:
        return
    keyctl = _SECCOMP_ABI[4][2]  # the syscall's number
    if libc.syscall(keyctl, KEYCTL_JOIN_SESSION_KEYRING, None) > 0:
        ring, perm = ctypes.c_long(KEY_SPEC_SESSION_KEYRING), ctypes.c_long(KEY_POS_VIEW_SEARCH)
        libc.syscall(keyctl, KEYCTL_SETPERM, ring, perm)


# ------------------------------------------------------------------------- framing


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the pipe")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def read_frame(fd: int) -> bytes:
    (n,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return _read_exact(fd, n)


def write_frame(fd: int, payload: bytes) -> None:
    _write_all(fd, _HEADER.pack(len(payload)) + payload)


_HARD_LIMITS: dict[int, int] = {}  # the forker's, which its children inherit: no getrlimit each


def _hard_limit(which: int) -> int:
    hard = _HARD_LIMITS.get(which)
    return resource.getrlimit(which)[1] if hard is None else hard


def _setrlimit(which: int, value: int) -> None:
    """Set soft and hard limit to `value` (or to the current hard limit if that is lower)."""
    hard = _hard_limit(which)
    if hard != resource.RLIM_INFINITY and value > hard:
        value = hard
    resource.setrlimit(which, (value, value))




# ------------------------------------------------------------------------- warm-up

_WARM_UP = "from typing import List\ndef f(x: List[int]) -> int:\n    return sum(x)\nassert f([1, 2]) == 3\n"


def _warm_up() -> None:
    """Compile and run a small program once in the forker, so that the compiler's and the
    import system's first-use set-up is in the image every child starts from, not redone (and
    its pages copied) in each child; then hand freed heap back (glibc: malloc_trim)."""
    exec(compile(_WARM_UP, "<warm-up>", "exec", dont_inherit=True), {"__name__": "__warm_up__"})
    gc.collect()
    gc.freeze()  # the children's collections then never walk (and copy) these objects
    getattr(libc, "malloc_trim", lambda pad: 0)(0)



# -------------------------------------------------------------------------- forker


class Confinement(typing.NamedTuple):
    """What the server's isolation set-up decided, for the children's own confinement."""

    uid: int | None  # the sandbox uid (and gid) to drop to; None: no uid change
    gid: int | None
    userns: bool  # the server is in an unprivileged user namespace: drop capabilities instead
    scratch: bool  # the scratch tmpfs exists and `work` is its work dir
    work: str


# Forker <-> server messages (a SOCK_SEQPACKET pair, one message per send)
SPAWNED = struct.Struct("<ci")  # b"Z", pid; fds req_w, res_r, out_r[, pidfd] attached
EXITED = struct.Struct("<ciiddq")  # b"X", pid, wait status, utime, stime, maxrss


class Forker:
    """The forker's loop (see the module's docstring), and what runs in each zygote.

    Commands from the server: b"S" + work dir (may be empty): fork a zygote and send back its
    pipes and pidfd (`SPAWNED`); b"R": reap what has exited (orphans the server waits for).
    Unasked, on each zygote's exit: `EXITED`.
    """

    def __init__(self, server_pid: int, iso: Confinement, devnull: int, sock: _socket.socket) -> None:
        self.server_pid, self.iso, self.devnull, self.sock = server_pid, iso, devnull, sock
        self.pid = os.getpid()
        self.zygotes: dict[int, int | None] = {}  # pid -> this process's pidfd for it

    def loop(self) -> None:
        """Runs in the forker process; never returns."""
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() not in (self.server_pid, 0):  # 0: the server is outside its PID namespace
                os._exit(0)
            subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
            # limits that are the same for every child, set once here for all of them
            for which, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 256)):
                _setrlimit(which, value)
            for which in (resource.RLIMIT_CPU, resource.RLIMIT_AS, resource.RLIMIT_FSIZE, resource.RLIMIT_NPROC):
                _HARD_LIMITS[which] = resource.getrlimit(which)[1]
            prctl(PR_SET_NO_NEW_PRIVS, 1)  # inherited by every child, and never needed here
            _private_session_keyring()
            filtered = _seccomp_filter()
            # Not dumpable (inherited too): in a user namespace the candidates run as this
            # process's uid, and could otherwise write its memory through /proc/PID/mem.
            prctl(PR_SET_DUMPABLE, 0)
            _warm_up()
            self.sock.send(b"H" + bytes(b"01"[flag] for flag in (subreaper, filtered)))
            # Exits are seen through pidfds, not SIGCHLD: no signal handler or wake-up fd for
            # each child to reset. Between two forks this loop should write to as few pages
            # as it can: each one written is copied while a zygote shares it.
            buffer = bytearray(4096)  # a command: b"S" and a path, or b"R"
            watch: list[_socket.socket | int]  # the server's socket and the zygotes' pidfds
            while True:
                # a zygote without a pidfd (kernels before 5.3): look every 10 ms
                polling = None in self.zygotes.values()
                try:
                    watch = [self.sock, *(fd for fd in self.zygotes.values() if fd is not None)]
                    ready, _, _ = select.select(watch, (), (), 0.01 if polling else None)
                except InterruptedError:
                    continue
                if polling or len(ready) > 1 or self.sock not in ready:
                    self._reap()
                if self.sock in ready:
                    size = self.sock.recv_into(buffer)
                    if not size:
                        break  # the server is gone
                    if buffer[0] == ord("S"):
                        self._spawn(buffer[1:size].decode() or None)
                    elif buffer[0] == ord("R"):
                        self._reap()
        except BaseException:
            try:
                import traceback

                traceback.print_exc()
            except BaseException:
                pass
        os._exit(0)

    def _reap(self) -> None:
        """Reap every child that has exited (zygotes and orphans); report the zygotes."""
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except InterruptedError:
                continue
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.zygotes:
                pidfd = self.zygotes.pop(pid)
                if pidfd is not None:
                    os.close(pidfd)
                self.sock.send(EXITED.pack(b"X", pid, status, ru.ru_utime, ru.ru_stime, ru.ru_maxrss))

    def _spawn(self, work: str | None) -> None:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                self._zygote_main(req_r, res_w, out_w, work)
            except BaseException:
                try:
                    import traceback

                    traceback.print_exc()
                except BaseException:
                    pass
            finally:
                os._exit(70)
        for fd in (req_r, res_w, out_w):
            os.close(fd)
        fds = [req_w, res_r, out_r]
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(pid)
                fds.append(os.dup(pidfd))  # the server's
            except OSError:
                pass
        self.zygotes[pid] = pidfd
        try:
            rights = struct.pack("%di" % len(fds), *fds)
            self.sock.sendmsg([SPAWNED.pack(b"Z", pid)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
        finally:
            for fd in fds:
                os.close(fd)

    # --- in the zygote ---------------------------------------------------------------

    def _zygote_main(self, req_r: int, res_w: int, out_w: int, work: str | None) -> None:
        """The forked child, still privileged: everything that does not depend on the job.
        (Should the server die meanwhile, reading the job gets end-of-file, and it exits.)"""
        os.setsid()
        iso = self.iso
        setup_error = None
        # fds: results on 3, output on 1 and 2, /dev/null on 0, the job pipe on 4 until read
        # (the pipes are above 4: main() keeps 3 and 4 taken in the forker)
        os.dup2(self.devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.dup2(res_w, RESULT_FD)
        os.dup2(req_r, 4)
        os.closerange(5, max(os.sysconf("SC_OPEN_MAX"), 1 << 16))
        req_fd = 4
        prepared: list = []
        try:
            prepared = harness.prepare_harness()
        except Exception as e:  # reported with the job: a sandbox failure, not the candidate's
            setup_error = f"preparing the child failed: {type(e).__name__}: {e}"

        # --- wait for the job (the pipe then carries the server's requests: see the harness) ---
        try:
            job = marshal.loads(read_frame(req_fd))
        except (EOFError, OSError, ValueError):
            os._exit(0)
        if job is None:
            os._exit(0)
        if setup_error is not None:
            self._child_report(setup_error)
        try:
            self._confine(job, work or (iso.work if iso.scratch else None))
        except Exception as e:
            self._child_report(f"could not confine the child: {type(e).__name__}: {e}")
        harness.run_harness(job, req_fd, os.getpid(), iso.uid is not None, prepared)

    @staticmethod
    def _child_report(text: str) -> None:
        data = '{"k":"sandbox_error","msg":%s}\n' % _ESC(text)
        try:
            _write_all(RESULT_FD, data.encode())
        finally:
            os._exit(71)

    def _confine(self, job: dict, work: str | None) -> None:
        """Job-dependent limits and the work dir (made or emptied since the fork), then drop
        privileges for good."""
        iso = self.iso
        if work is not None:
            if iso.uid is not None and not iso.scratch:
                assert iso.gid is not None  # set with the uid
                os.chown(work, iso.uid, iso.gid)
            os.chdir(work)
            if not iso.scratch:  # the server's environment names the scratch work dir
                os.environ["HOME"] = os.environ["TMPDIR"] = work
        lim = job["limits"]
        mb = 1 << 20
        cpu = max(1, int(-(-float(lim["cpu_seconds"]) // 1)))
        cpu_hard = _hard_limit(resource.RLIMIT_CPU)
        if cpu_hard == resource.RLIM_INFINITY or cpu_hard > cpu + 1:
            cpu_hard = cpu + 1  # SIGXCPU at the soft limit, SIGKILL a second later
        resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, cpu_hard), cpu_hard))
        if int(lim["memory_mb"]) > 0:
            _setrlimit(resource.RLIMIT_AS, int(lim["memory_mb"]) * mb)
        _setrlimit(resource.RLIMIT_FSIZE, max(int(lim["file_size_mb"]), 0) * mb)
        nproc = max(int(lim["max_processes"]), 1)
        if iso.uid is None:  # a shared uid: leave room for the processes it already runs
            nproc += int(job.get("uid_tasks", 0))
        _setrlimit(resource.RLIMIT_NPROC, nproc)
        if iso.uid is not None:
            assert iso.gid is not None  # set with the uid
            os.setgroups([])
            os.setresgid(iso.gid, iso.gid, iso.gid)
            os.setresuid(iso.uid, iso.uid, iso.uid)
            if os.getresuid() != (iso.uid,) * 3:
                raise OSError(errno.EPERM, "setresuid did not take")
        elif iso.userns or os.geteuid() == 0:
            _drop_capabilities()
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a uid change clears it (NO_NEW_PRIVS: the forker's)
        if os.getppid() != self.pid:
            os._exit(0)


# ---------------------------------------------------------------------------- main


def site_without_pth(site_packages: list[str]) -> None:
    """What `site` gives a normal interpreter, minus running .pth files: the caller's
    site-packages on the import path (candidates may import what is installed; under -S an
    interpreter may not even know its venv) and exit/quit/help/copyright."""
    import site

    sys.path.extend(p for p in site_packages if os.path.isdir(p) and p not in sys.path)
    site.setquit()
    site.setcopyright()
    site.sethelper()


def main(config: str) -> None:
    """Run the forker; `config` is the server's marshal-dumped dict, hex-encoded: the server's
    pid, the socket's fd, the `Confinement` fields, the client's site-packages and whether to
    preload pytest's rewriter."""
    cfg = marshal.loads(bytes.fromhex(config))
    sys.argv = [""]  # what every child's program sees
    sys.dont_write_bytecode = True
    site_without_pth(cfg["site_packages"])
    # The children's standard streams, made once here (0 and 1 are /dev/null, from the
    # server): a child only moves its pipes under fds 1 and 2.
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    # Final in typeshed; rebound on purpose: the children's original streams are these
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr  # type: ignore[misc]
    import builtins

    harness.PRISTINE_BUILTINS.update(vars(builtins))
    if cfg["rewriter"]:  # an explaining server's: every rewritten test needs its helpers
        import _pytest.assertion.rewrite  # noqa: F401
    iso = Confinement(cfg["uid"], cfg["gid"], cfg["userns"], cfg["scratch"], cfg["work"])
    sock = _socket.socket(fileno=cfg["sock"])
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (3, 4):  # taken, so that every pipe made here lies above a child's fds 0-4
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(devnull, fd)
    Forker(cfg["server_pid"], iso, devnull, sock).loop()
