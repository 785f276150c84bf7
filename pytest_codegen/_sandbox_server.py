"""The sandbox server: a long-lived process that runs candidate programs in forked children.

`pytest_codegen.sandbox.Sandbox` starts a fresh interpreter that imports this file by name
from its directory (not as part of the package, from its cached bytecode; see
`_sandbox_bootstrap`) and calls `main`, before any model is loaded, and talks to it over its stdin/stdout
with length-prefixed JSON. Nothing here imports `pytest_codegen/__init__.py` or anything a
model backend pulls in: forking after llama.cpp (or any threaded library) has run hangs.

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
    loopback; no shared SysV IPC or abstract unix sockets), all mounts made private, every real
    file system re-mounted read-only, fresh tmpfs over /tmp, /var/tmp, /dev/shm and /run (which
    also hides host unix sockets there), directories others cannot enter (/root when the
    interpreter is a pyenv under it) covered by an empty tmpfs with only the interpreter's
    directories bound back read-only, and a sandbox uid/gid of `200000 + server pid`, unique to
    this server, so concurrent servers (xdist workers) never share one;
  - not root: the same namespaces inside an unprivileged user namespace if the kernel allows it
    (no uid change then), otherwise nothing but rlimits and process-group/descendant killing.
  The writable places (/tmp, /var/tmp, /dev/shm, /run/lock) form the *scratch space*, with the
  work dir /tmp/work owned by the sandbox uid; after every run, once every process of the run
  is gone, it is emptied, the directories' modes restored, the work dir made anew and the
  server's own SysV IPC objects and POSIX message queues removed (/run itself is read-only); the
  uid's kernel keyrings are emptied by the next child when /proc/key-users shows it has keys
  (the session keyring the children inherit is the forker's own, read-only to them). A run
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
* Tests (and the setup) are compiled by the server before the job is handed to the child
  (cached by source: every further sample of a problem reuses them): as written for the verdict,
  or through pytest's assertion rewriting on an *explaining* server, which `Sandbox.run` uses to
  explain asserts that failed (its forker preloads the rewriter; the verdict server never loads
  it, nor the threading it brings); the candidate program itself is compiled in the child,
  under the rlimits, so a hostile program cannot hurt the server's compiler.
* The server enforces the limits (select over the result and output pipes and a pidfd, with a
  deadline; output past the cap is drained and counted, never stored): the CPU-time limit
  decides (RLIMIT_CPU in the child, and the server's own reading of the child's CPU time once
  the wall clock has passed the limit: `timeout (cpu)`), the wall clock is a backstop for
  programs that wait (`timeout (wall)`). When the harness
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
The harness reports on a dedicated pipe (fd 3), one JSON line per event, each carrying a random
per-run token, written with references (`os.write`, the fd, the JSON string encoder, the
builtins it uses) captured before any candidate code runs. The server accepts only the exact
sequence it expects (define result, then a result for each test in order, then end) and
passes a program only if it saw every test pass *and* the end message. Exiting early
(`sys.exit`, `os._exit`, `exit()`), killing the parent, closing fds, replacing signal handlers,
replacing entries of `builtins` (tests see a private, pristine copy of the builtins), shadowing
builtins or the test helpers in the program's own namespace (tests run in their own namespace,
seeded from the program's: `candidate`, the program's names and the setup's names), leaving
threads or processes behind: none of those turns into a pass.

Deviation from a flat `exec`: the tests run in a namespace of their own (a copy of the
program's namespace taken after the program and the setup are defined, minus names that shadow
builtins, plus a private copy of the builtins). A program therefore does not see names the tests
define, and rebinding its globals while a test runs does not change what the test sees.

Known limits
------------
* The candidate and the harness share one process and one interpreter. A candidate that
  deliberately introspects the harness (walking frames with `sys._getframe`, `gc.get_objects()`
  to find the token or the test namespace, setting `f_trace` on a test frame to jump over an
  assert, patching shared modules such as `math` or `_pytest.assertion.rewrite` helpers) can
  still forge or hide a failure. Closing that needs the checking out of the candidate's
  process: run the candidate in one process that only answers calls (arguments in, pickled/JSON
  return values out) and evaluate the test's assertions in a separate process it cannot reach,
  or a seccomp filter plus a stripped interpreter.
* Objects that lie about equality (a return value whose `__eq__` always says True) pass an
  `assert candidate(x) == y`; that is Python semantics, not something the sandbox can see.
* Without root there is no uid change: the candidate runs as the caller's uid and can signal
  the server and the caller's other processes (`isolation` says so).
"""

from __future__ import annotations

import _socket
import ctypes
import fcntl
import json
import marshal
import os
import re
import select
import signal
import struct
import sys
import time
import typing

# Sibling files, imported the way the bootstrap imports this one (by name, not through the
# package): how sandbox processes start, and the forker's module, with the harness, the libc
# calls and the framing both use.
import _sandbox_bootstrap  # type: ignore[import-not-found]
import _sandbox_forker as forker  # type: ignore[import-not-found]
from _sandbox_forker import (  # (mypy reports the missing module once, at the line above)
    _EXITED,
    _SPAWNED,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_DUMPABLE,
    _check,
    _libc,
    _prctl,
    read_frame,
    write_frame,
)

# --------------------------------------------------------------------------- constants

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000

MQUEUE_DIR = "/run/.mqueue"
TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # the scratch space (with /run/lock): tmpfs, emptied per run
MAX_RESULT_BYTES = 8 << 20
# Reads from the children's pipes: under glibc's mmap threshold, so each read is not an
# mmap/munmap pair (which also raises the threshold and leaves the heap bigger for every fork)
READ_SIZE = 64 * 1024
MAX_TEXT, MAX_TB = forker.MAX_TEXT, forker.MAX_TB
SANDBOX_UID_BASE = 200000
NOBODY = 65534
TIMEOUT_CPU, TIMEOUT_WALL = "timeout (cpu)", "timeout (wall)"  # a timeout's error type
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# ------------------------------------------------------------------ libc via ctypes

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2


def _unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def _mount_flags(path: str) -> int:
    """The per-mount flags of `path`, to keep when re-mounting it (locked in a user namespace)."""
    f = os.statvfs(path).f_flag
    flags = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    if f & 4096:  # ST_RELATIME
        flags |= MS_RELATIME
    return flags


def _mount_points() -> list[str]:
    points = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4:
                    points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4]))
    except OSError:
        pass
    return points


# ------------------------------------------------------------------------ helpers


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{4,16}>")


def _clean(s: object, limit: int = MAX_TEXT) -> str:
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH_FDS = 32


def remove_tree(path: str) -> bool:
    """Remove `path` and everything under it, at any depth; True if it is gone.

    Unlike `shutil.rmtree` (one Python frame per level: a RecursionError past ~1000 levels,
    which a program makes in a moment), this walks without recursion, through directory fds
    (no path grows past PATH_MAX), never follows symlinks, and keeps at most
    `_MAX_DEPTH_FDS` fds open: deeper directories are moved up to the top one first.
    Entries it cannot remove are left (and the result says so); it never raises.
    """
    try:
        top = os.open(path, _DIR_FLAGS)
    except OSError:
        try:
            os.unlink(path)
        except OSError:
            pass
        return not os.path.lexists(path)
    stack, names = [top], [""]
    skip: list[set[str]] = [set()]
    moved = 0
    try:
        while stack:
            fd = stack[-1]
            child = None
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name in skip[-1]:
                            continue
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                child = entry.name
                                break
                            os.unlink(entry.name, dir_fd=fd)
                        except OSError:
                            skip[-1].add(entry.name)
            except OSError:
                pass
            if child is None:  # this level is as empty as it gets: up, and remove it
                stack.pop()
                name = names.pop()
                skip.pop()
                os.close(fd)
                if stack:
                    try:
                        os.rmdir(name, dir_fd=stack[-1])
                    except OSError:
                        skip[-1].add(name)
                continue
            if len(stack) >= _MAX_DEPTH_FDS:  # flatten: move it up to the top directory
                moved += 1
                try:
                    os.rename(child, f".up-{moved}", src_dir_fd=fd, dst_dir_fd=top)
                except OSError:
                    skip[-1].add(child)
                continue
            try:
                sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                try:  # a directory its owner made unreadable
                    os.chmod(child, 0o700, dir_fd=fd)
                    sub = os.open(child, _DIR_FLAGS, dir_fd=fd)
                except (OSError, NotImplementedError):
                    skip[-1].add(child)
                    continue
            stack.append(sub)
            names.append(child)
            skip.append(set())
    except Exception:  # MemoryError and the like: leave the rest, say so
        pass
    finally:
        for fd in stack:
            try:
                os.close(fd)
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass
    return not os.path.lexists(path)


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(root: int) -> list[int]:
    children = _proc_children()
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _proc_cpu(pid: int) -> float | None:
    """The CPU time (user + system, seconds) of process `pid` so far; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return None


def _uid_tasks(uid: int) -> int:
    """How many tasks (threads count, as for RLIMIT_NPROC) run as `uid`."""
    n = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                status = f.read()
        except OSError:
            continue
        uid_line = re.search(r"^Uid:\s+(\d+)", status, re.M)
        threads = re.search(r"^Threads:\s+(\d+)", status, re.M)
        if uid_line and int(uid_line.group(1)) == uid:
            n += int(threads.group(1)) if threads else 1
    return n


# ----------------------------------------------------------------------- isolation


class Isolation:
    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.uid: int | None = None  # sandbox uid (root mode only)
        self.gid: int | None = None
        self.userns = False
        self.read_only_root = False
        # Private tmpfs scratch space, emptied after every run (every process of the run gone)
        self.scratch = False
        self.scratch_dirs: list[str] = []  # the writable directories the candidate sees
        self.scratch_mounts: list[str] = []  # their tmpfs mounts (resized for a run that asks)
        self.scratch_mb = 0
        self.run_dir: str | None = None  # parent of per-run work dirs when there is no scratch
        self.work = "/tmp/work"  # the child's work dir in the scratch space
        self.hidden: list[str] = []  # closed directories covered but for the interpreter's parts
        self.mqueue: str | None = None  # where this IPC namespace's POSIX message queues show
        self.notes: list[str] = []

    @property
    def mode(self) -> str:
        if self.uid is not None:
            return "root"
        return "userns" if self.userns else "none"

    def describe(self) -> str:
        parts = []
        if self.namespaces:
            kind = "user namespace" if self.userns else "namespaces"
            parts.append(f"{kind}({','.join(self.namespaces)})")
        if self.uid is not None:
            parts.append(f"uid {self.uid}")
        parts.append("rlimits")
        if self.read_only_root:
            parts.append("read-only root + private tmpfs")
        if self.hidden:
            parts.append(f"{', '.join(self.hidden)} hidden but for the interpreter")
        if self.uid is None:
            parts.append("process group")
        line = " + ".join(parts)
        if self.uid is None and not self.namespaces:
            line = "rlimits + process group only (not root: no network/filesystem isolation)"
        elif self.uid is None:
            line += " (not root: runs as the caller's uid)"
        elif not self.namespaces:
            line += " (no namespaces: no network/filesystem isolation)"
        return line


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _interpreter_paths() -> list[str]:
    """Directories the forker and the children must be able to read: the interpreter, its
    import path and the forker's own module."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    # The command the forker (and a candidate's own subprocess) starts: a venv's bin/python
    # is a link that lies outside sys.prefix here (the server runs without `site`, so
    # sys.prefix is the base interpreter's): the venv itself, when it is one.
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    venv = os.path.dirname(bindir)
    paths.add(venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else bindir)
    paths.add(os.path.dirname(os.path.abspath(forker.__file__)))
    paths.update(p for p in sys.path if p and os.path.isabs(p))
    real = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)}, key=len)
    out: list[str] = []
    for p in real:
        if not any(_under(p, q) for q in out):
            out.append(p)
    return out


def _closed_ancestor(path: str) -> str | None:
    """The highest directory above `path` that others cannot traverse (like /root), if any."""
    current = ""
    for part in path.strip("/").split("/")[:-1]:
        current += "/" + part
        try:
            if not os.stat(current).st_mode & 0o001:
                return current
        except OSError:
            return None
    return None


def _expose(iso: Isolation, needed: list[str]) -> None:
    """Make the interpreter readable for the sandbox uid without opening its surroundings.

    For each closed directory above a needed path (a pyenv under /root, say): bind the needed
    trees aside, cover the closed directory with an empty read-only tmpfs, and move the binds
    back to their places, read-only. Everything else in that directory stays hidden.
    """
    closed: dict[str, list[str]] = {}
    for p in needed:
        a = _closed_ancestor(p)
        if a is not None:
            closed.setdefault(a, []).append(p)
    if not closed:
        return
    stage = "/run/.sandbox-stage"
    os.makedirs(stage, exist_ok=True)
    for n, (ancestor, paths) in enumerate(closed.items()):
        staged = []
        for i, p in enumerate(paths):
            spot = f"{stage}/{n}-{i}"
            os.mkdir(spot)
            _mount(p, spot, None, MS_BIND | MS_REC)
            staged.append((spot, p))
        _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for spot, p in staged:
            os.makedirs(p, mode=0o755, exist_ok=True)
            _mount(spot, p, None, MS_MOVE)
            os.rmdir(spot)
            _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _mount_flags(p))
        _mount(None, ancestor, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY, "size=1m,mode=755")
        iso.hidden.append(ancestor)
        iso.notes.append(f"{ancestor} hidden; exposed read-only: {', '.join(paths)}")
    os.rmdir(stage)


def _setup_mounts(iso: Isolation, file_size_mb: int, root: bool) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Every real file system read-only: the candidate can write only to the fresh tmpfs below.
    for point in sorted(set(_mount_points()), key=len):
        if point == "/proc" or point.startswith(("/proc/", "/sys", "/dev")):
            continue
        try:
            _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _mount_flags(point))
            if point == "/":
                iso.read_only_root = True
        except OSError as e:
            if point == "/":
                iso.notes.append(f"could not make / read-only: {e}")
    needed = _interpreter_paths()
    size = f"size={max(file_size_mb, 1)}m,nr_inodes=8192"
    # Fresh tmpfs over the writable places (and /run, which also hides host sockets), except
    # where the interpreter itself lives (a venv under /tmp stays visible, read-only).
    overlay = []
    for d in ("/run", *TMP_DIRS):
        if not os.path.isdir(d) or os.path.islink(d) or any(_under(p, d) for p in needed):
            continue
        try:
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode={'755' if d == '/run' else '1777'}")
        except OSError as e:
            iso.notes.append(f"no tmpfs on {d}: {e}")
            continue
        overlay.append(d)
        if d == "/run":
            for sub, mode in (("lock", 0o1777), ("sandbox", 0o755)):
                os.makedirs(f"/run/{sub}", exist_ok=True)
                os.chmod(f"/run/{sub}", mode)
            # This IPC namespace's POSIX message queues, for the server to empty after each run
            try:
                os.makedirs(MQUEUE_DIR, mode=0o700, exist_ok=True)
                _mount("mqueue", MQUEUE_DIR, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                iso.mqueue = MQUEUE_DIR
            except OSError as e:
                iso.notes.append(f"POSIX message queues are not emptied between runs: {e}")
            if root:
                try:
                    _expose(iso, needed)
                except OSError as e:
                    iso.notes.append(f"could not expose the interpreter: {e}")
    if "/run" in overlay:
        # /run itself read-only (the sandbox's uid owns it in a user namespace), its scratch
        # subdirectories still writable: bound onto themselves, they are mounts of their own
        try:
            for sub in ("/run/lock", "/run/sandbox"):
                _mount(sub, sub, None, MS_BIND)
            _mount(None, "/run", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        except OSError as e:
            iso.notes.append(f"/run stays writable: {e}")
    iso.scratch_dirs = [d for d in (*TMP_DIRS, "/run/lock") if d in overlay or (d == "/run/lock" and "/run" in overlay)]
    if "/tmp" in overlay:
        iso.work = "/tmp/work"
    elif "/run" in overlay:
        iso.scratch_dirs.append("/run/sandbox")
        iso.work = "/run/sandbox/work"
    else:
        return
    iso.scratch_mounts = overlay
    iso.scratch_mb = max(file_size_mb, 1)
    iso.scratch = True


def setup_isolation(cfg: dict) -> Isolation:
    iso = Isolation()
    degrade = cfg.get("degrade")
    file_size_mb = int(cfg.get("file_size_mb", 16))
    if degrade and os.geteuid() == 0:
        # Simulate an unprivileged caller (used by the tests): become nobody for good, in a
        # private mount namespace where the interpreter is readable to it (as a real user's
        # own interpreter would be; here it may live under /root).
        _unshare(CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        _expose(Isolation(), _interpreter_paths())
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        _prctl(PR_SET_DUMPABLE, 1)  # like any process that never was root
    if os.geteuid() == 0:
        try:
            _unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
            iso.namespaces = ["net", "mount", "ipc"]
        except OSError as e:
            iso.notes.append(str(e))
            for flag, name in ((CLONE_NEWNS, "mount"), (CLONE_NEWNET, "net"), (CLONE_NEWIPC, "ipc")):
                try:
                    _unshare(flag)
                    iso.namespaces.append(name)
                except OSError:
                    pass
        if "mount" in iso.namespaces:
            try:
                _setup_mounts(iso, file_size_mb, root=True)
            except OSError as e:
                iso.notes.append(str(e))
        uid = SANDBOX_UID_BASE + os.getpid()
        iso.uid = iso.gid = uid
    elif degrade != "none":
        uid, gid = os.getuid(), os.getgid()
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
            for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{path}", "w") as f:
                    f.write(text)
            iso.userns = True
            iso.namespaces = ["net", "mount", "ipc"]
            _setup_mounts(iso, file_size_mb, root=False)
        except OSError as e:
            iso.notes.append(f"no user namespace: {e}")
    if not iso.scratch:
        import tempfile

        iso.run_dir = tempfile.mkdtemp(prefix="pytest-codegen-sandbox-")
    return iso


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
        out = (None, {"et": type(e).__name__, "msg": _clean(f"{type(e).__name__}: {e}"), "line": _clean(line)})
    if len(_compile_cache) >= 2048:
        _compile_cache.pop(next(iter(_compile_cache)))
    _compile_cache[key] = out
    return out


# -------------------------------------------------------------------------- server

class Zygote:
    """A child forked ahead of a job, confined as far as possible without knowing the job."""

    def __init__(self, pid: int, req_w: int, res_r: int, out_r: int, pidfd: int | None, work: str | None):
        self.pid, self.req_w, self.res_r, self.out_r, self.pidfd = pid, req_w, res_r, out_r, pidfd
        self.work = work
        self.reaped = False

    def close_fds(self) -> None:
        for name in ("req_w", "res_r", "out_r", "pidfd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)


class Usage(typing.NamedTuple):
    """What the server needs of a child's rusage (the forker reaps it, not the server)."""

    ru_utime: float
    ru_stime: float
    ru_maxrss: int


class _Broken(Exception):
    """The forker is gone or talks nonsense: the server cannot go on."""


class Server:
    def __init__(self, cfg: dict, proto_in: int, proto_out: int) -> None:
        self.cfg = cfg
        self.proto_in, self.proto_out = proto_in, proto_out
        self.iso = setup_isolation(cfg)
        self.pid = os.getpid()
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # should the forker die, its orphans come here
        self.zygote: Zygote | None = None
        self.zygote_requested = False
        self.zygote_work: list[str | None] = []  # work dirs of requested zygotes, in order
        self.exits: dict[int, tuple[int, Usage]] = {}  # zygote pid -> (wait status, usage)
        self.pending: list[_RunState] = []  # runs that ended cleanly, child still exiting
        self.runs = 0
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
        if self.iso.uid is not None and not self._kill_uid():  # also clears a dead namesake's leftovers
            self.iso.notes.append("could not switch to the sandbox uid")
            self.iso.uid = self.iso.gid = None
        self.clean_scratch: list[tuple[int, ...]] | None = None  # the scratch space, emptied
        self.scratch_modes = {d: os.stat(d).st_mode & 0o7777 for d in self.iso.scratch_dirs}
        self.scratch_renewals = 0  # tmpfs mounts made anew because emptying failed
        self.sysvipc: dict[str, int] = {}  # listings of this server's own IPC namespace, kept open
        if "ipc" in self.iso.namespaces:
            for kind in ("shm", "msg", "sem"):
                try:
                    self.sysvipc[kind] = os.open(f"/proc/sysvipc/{kind}", os.O_RDONLY)
                except OSError:
                    pass
        self.tainted = False  # a run left processes that would not die: stop after replying
        # Keys of the sandbox uid (a dead namesake's, or a run's): the next child clears them
        self.key_users: int | None = None
        if self.iso.uid is not None:
            try:
                self.key_users = os.open("/proc/key-users", os.O_RDONLY)
            except OSError:
                pass
        self.keys_dirty = self._uid_has_keys()
        if self.iso.scratch:
            self._empty_scratch()
        self.forker_pid, self.sock, self.subreaper = self._start_forker()

    def _start_forker(self) -> tuple[int, _socket.socket, bool]:
        """Start the forker: a fresh interpreter in this server's namespaces and mounts that
        loads only the children's side (see `_sandbox_forker`). It inherits fds 0-2 (0 and 1
        are /dev/null) and its end of a socket pair; no other fd of the server is inheritable."""
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        iso = self.iso
        config = {
            "server_pid": self.pid, "sock": theirs.fileno(), "rewriter": bool(self.cfg.get("rewriter")),
            "site_packages": list(self.cfg.get("site_packages", [])),
            "uid": iso.uid, "gid": iso.gid, "userns": iso.userns, "scratch": iso.scratch, "work": iso.work,
        }
        os.set_inheritable(theirs.fileno(), True)
        try:
            pid = os.posix_spawn(
                sys.executable,
                _sandbox_bootstrap.command(forker.__file__, marshal.dumps(config).hex()),
                dict(os.environ),
            )
        finally:
            theirs.close()
        ready, _, _ = select.select([ours], [], [], 60.0)
        hello = ours.recv(16) if ready else b""
        if hello[:1] != b"H":
            raise RuntimeError("the forker did not start")
        return pid, ours, hello[1:2] == b"1"

    # --- talking to the forker --------------------------------------------------------

    def _receive(self, timeout: float | None) -> bool:
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
            raise _Broken(f"the forker is gone: {e}") from e
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.extend(struct.unpack("%di" % (len(payload) // 4), payload[: len(payload) // 4 * 4]))
        if flags & _socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise _Broken("a message from the forker lost its file descriptors")
        if not data:
            raise _Broken("the forker is gone")
        if data[:1] == b"X" and len(data) == _EXITED.size:
            _, pid, status, utime, stime, maxrss = _EXITED.unpack(data)
            self.exits[pid] = (status, Usage(utime, stime, maxrss))
        elif data[:1] == b"Z" and len(data) == _SPAWNED.size and len(fds) in (3, 4) and self.zygote_requested:
            _, pid = _SPAWNED.unpack(data)
            pidfd = fds[3] if len(fds) == 4 else None
            for fd in fds[1:3]:
                try:
                    fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups for chatty programs
                except OSError:
                    pass
            self.zygote = Zygote(pid, fds[0], fds[1], fds[2], pidfd, self.zygote_work.pop(0))
            self.zygote_requested = False
        else:
            for fd in fds:
                os.close(fd)
            raise _Broken(f"unexpected message from the forker: {data[:16]!r}")
        return True

    def _nudge_forker(self) -> None:
        """Have the forker reap: it learns of its zygotes' exits, not of orphans'."""
        try:
            self.sock.send(b"R")
        except OSError as e:
            raise _Broken(f"the forker is gone: {e}") from e

    def _drain_forker(self) -> None:
        while self._receive(0.0):
            pass

    def _take_requested_zygote(self) -> None:
        deadline = time.monotonic() + 10.0
        while self.zygote_requested:
            if time.monotonic() >= deadline:
                raise _Broken("the forker did not send a zygote")
            self._receive(deadline - time.monotonic())

    def _children(self, pid: int) -> set[int] | None:
        """The direct children of a single-threaded process; None where /proc cannot say."""
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return {int(child) for child in f.read().split()}
        except (OSError, ValueError):
            return None

    def _run_processes(self) -> set[int]:
        """Processes of runs not yet reaped: the forker's children but the waiting zygote.

        A live descendant always has a live ancestor among them (orphans go back to the
        forker, a subreaper), so an empty set means every run is gone.
        """
        self._take_requested_zygote()  # it may exist already: known, it is not counted
        children = self._children(self.forker_pid)
        if children is None:
            children = set(_descendants(self.forker_pid))
        if self.zygote is not None:
            children.discard(self.zygote.pid)
        return children

    # --- the scratch space ----------------------------------------------------------

    def _scratch_state(self) -> list[tuple[int, ...]] | None:
        """Per scratch directory (the work dir last): size (tmpfs counts entries in it), mode
        and owner."""
        try:
            dirs = [os.stat(d) for d in (*self.iso.scratch_dirs, self.iso.work)]
        except OSError:
            return None
        return [(st.st_size, st.st_mode, st.st_uid, st.st_gid) for st in dirs]

    def _empty_scratch(self) -> None:
        """Empty the writable directories and make a fresh work dir, between two runs.

        Called only once every process of the previous run is gone (reaped), so nothing can
        write there any more. (Cheaper than a mount namespace with fresh tmpfs mounts per
        child: no namespace copy and teardown.)
        Mostly a run leaves nothing: tmpfs counts a directory's entries in its size, so when
        every size, mode and owner is as it was, only the work dir is made anew (its own
        timestamps and extended attributes go with it).
        Nothing of this fails a run: what cannot be emptied (a tree deeper than any recursion,
        entries that will not go) is replaced by a fresh tmpfs (`_renew_scratch`).
        """
        iso = self.iso
        if self.clean_scratch is not None and self._scratch_state() == self.clean_scratch:
            try:
                os.rmdir(iso.work)
                self._make_work_dir()
                return
            except OSError:
                pass  # not what it seemed: the thorough way
        try:
            emptied = True
            for d in iso.scratch_dirs:
                with os.scandir(d) as found:
                    entries = list(found)
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        emptied = remove_tree(entry.path) and emptied  # never leaves the tmpfs
                    else:
                        try:
                            os.unlink(entry.path)
                        except OSError:
                            emptied = False
            for d, mode in self.scratch_modes.items():  # the scratch dirs' own: a user-namespace
                if os.stat(d).st_mode & 0o7777 != mode:  # sandbox owns them and may change them
                    os.chmod(d, mode)
            if not emptied:
                raise OSError("the scratch space could not be emptied")
            self._make_work_dir()
        except Exception:  # OSError, MemoryError...: start over on fresh mounts
            self._renew_scratch()
        self.clean_scratch = self._scratch_state()

    def _renew_scratch(self) -> None:
        """Replace every scratch directory's tmpfs by a fresh, empty one (the old one goes
        once nothing uses it: every process of the run is gone), and make the work dir."""
        size = f"size={max(self.iso.scratch_mb, 1)}m,nr_inodes=8192"
        for d in self.iso.scratch_dirs:
            mode = self.scratch_modes.get(d, 0o1777)
            try:
                _umount(d)
            except OSError:
                pass  # mounted over below all the same
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode={mode:o}")
            self.scratch_renewals += 1
        self._make_work_dir()

    def _make_work_dir(self) -> None:
        os.mkdir(self.iso.work, 0o700)
        if self.iso.uid is not None:
            assert self.iso.gid is not None  # set with the uid
            os.chown(self.iso.work, self.iso.uid, self.iso.gid)

    def _uid_has_keys(self) -> bool:
        """Does the sandbox uid own kernel keys (keyrings included)? From /proc/key-users,
        kept open: one read per run; without it, assume so."""
        if self.key_users is None:
            return self.iso.uid is not None
        try:
            os.lseek(self.key_users, 0, os.SEEK_SET)
            chunks = [os.read(self.key_users, READ_SIZE)]
            while chunks[-1]:
                chunks.append(os.read(self.key_users, READ_SIZE))
        except OSError:
            return True
        return f"\n{self.iso.uid:5d}:".encode() in b"\n" + b"".join(chunks)

    def _empty_sysv_ipc(self) -> None:
        """Remove the SysV message queues, semaphores and shared memory and the POSIX message
        queues a run left: the IPC namespace is this server's alone (never the host's: only
        with "ipc" unshared). (Kernel keyrings: each child clears its uid's, see the forker.)"""
        if self.iso.mqueue is not None:
            try:
                for name in os.listdir(self.iso.mqueue):
                    try:
                        os.unlink(os.path.join(self.iso.mqueue, name))
                    except OSError:
                        pass
            except OSError:
                pass
        for kind, fd in self.sysvipc.items():
            try:
                os.lseek(fd, 0, os.SEEK_SET)  # a fresh listing, read to its end
                chunks = [os.read(fd, READ_SIZE)]
                while chunks[-1]:
                    chunks.append(os.read(fd, READ_SIZE))
            except OSError:
                continue
            rows = b"".join(chunks).decode().splitlines()[1:]
            remove = {"shm": _libc.shmctl, "msg": _libc.msgctl, "sem": _libc.semctl}[kind]
            for row in rows:
                fields = row.split()
                if len(fields) > 1 and fields[1].isdigit():
                    if kind == "sem":
                        remove(int(fields[1]), 0, 0)  # IPC_RMID
                    else:
                        remove(int(fields[1]), 0, None)

    def _size_scratch(self, size_mb: int) -> None:
        """Resize the scratch tmpfs mounts for a run that asks for another file size limit."""
        size_mb = max(size_mb, 1)
        if size_mb == self.iso.scratch_mb:
            return
        for d in self.iso.scratch_mounts:
            mode = "755" if d == "/run" else "1777"
            _mount(None, d, None, MS_REMOUNT | MS_NOSUID | MS_NODEV, f"size={size_mb}m,nr_inodes=8192,mode={mode}")
        self.iso.scratch_mb = size_mb

    # --- killing and reaping ------------------------------------------------------------

    def _kill_uid(self) -> bool:
        """Fork a killer that becomes the sandbox uid and SIGKILLs every process of that uid.

        kill(-1) runs under the kernel's task-list lock, which fork also needs, so one call
        gets every process of the uid, including one being forked at that moment.
        """
        uid, gid = self.iso.uid, self.iso.gid
        assert uid is not None and gid is not None and uid != 0
        pid = os.fork()
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

    def _settle(self, timeout: float = 1.0) -> bool:
        """After a run's processes were SIGKILLed: wait until the forker has reaped them all."""
        deadline = time.monotonic() + timeout
        retried = False
        delay = 0.0002
        while self._run_processes():
            if time.monotonic() >= deadline:
                if retried:
                    return False
                retried, deadline = True, time.monotonic() + timeout
                self._kill_uid()
            self._nudge_forker()
            self._receive(delay)
            delay = min(delay * 2, 0.01)
        return True

    def _cleanup_by_tree(self, pgid: int | None) -> bool:
        """Without a sandbox uid: kill the process group and every run process until none is left."""
        deadline = time.monotonic() + 5.0
        delay = 0.0005
        while self._run_processes():
            if time.monotonic() > deadline:
                return False
            if pgid is not None:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except OSError:
                    pass
            spare = {self.forker_pid, self.zygote.pid if self.zygote is not None else 0}
            for pid in _descendants(self.pid):
                if pid not in spare:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            self._nudge_forker()
            self._receive(delay)
            delay = min(delay * 2, 0.02)
        return True

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
            raise _Broken(f"the forker is gone: {e}") from e

    def _zygote_ready(self) -> Zygote:
        if self.zygote is not None and not self._alive(self.zygote):
            self._discard_zygote()
        self.spawn_zygote()
        self._take_requested_zygote()
        z, self.zygote = self.zygote, None
        assert z is not None
        return z

    def _alive(self, z: Zygote) -> bool:
        if not z.reaped:
            self._drain_forker()
            if z.pid in self.exits:
                del self.exits[z.pid]
                z.reaped = True
        return not z.reaped

    def _discard_zygote(self) -> None:
        self._take_requested_zygote()
        z, self.zygote = self.zygote, None
        if z is None:
            return
        self._kill_child(z)
        deadline = time.monotonic() + 10.0
        while not z.reaped and time.monotonic() < deadline:
            if z.pid in self.exits:
                del self.exits[z.pid]
                z.reaped = True
            else:
                self._receive(deadline - time.monotonic())
        z.close_fds()
        if z.work and self.iso.run_dir:
            remove_tree(z.work)

    @staticmethod
    def _kill_child(z: Zygote) -> None:
        if z.reaped:
            return
        try:
            if z.pidfd is not None:
                signal.pidfd_send_signal(z.pidfd, signal.SIGKILL)
            else:
                os.kill(z.pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.killpg(z.pid, signal.SIGKILL)  # its session/process group, while it still exists
        except OSError:
            pass

    # --- one run --------------------------------------------------------------------

    def run(self, req: dict) -> tuple[dict, _RunState | None, bool]:
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
        token = os.urandom(16).hex()
        job = {
            "token": token,
            "program": req["program"],
            "setup": setup_code,
            "setup_error": setup_err,
            "setup_source": setup_src,
            "entry_point": req.get("entry_point") or None,
            "tests": tests,
            "limits": lim,
            "uid_tasks": _uid_tasks(os.getuid()) if self.iso.uid is None else 0,
        }
        self._reap_pending(wait=True)  # the scratch space is emptied only once they are gone
        if self.tainted:
            raise _Broken("a finished run left processes that would not die")
        if self.keys_dirty:  # what earlier runs stored in the uid's keyrings goes first
            job["fresh_keyrings"], self.keys_dirty = True, False
        payload = marshal.dumps(job)
        if self.iso.scratch:
            self._size_scratch(int(lim["file_size_mb"]))
        z = self._zygote_ready()
        st = _RunState(req, tests, token, z, time.monotonic())
        try:
            write_frame(z.req_w, payload)
        except OSError:
            pass  # it died; the monitor sees that
        os.close(z.req_w)
        z.req_w = None  # type: ignore[assignment]
        try:
            if self.iso.uid is not None:
                # Fork the next zygote while this job runs: it stays root until its own job
                # arrives, so nothing this run's clean-up does as the sandbox uid can touch it.
                self.spawn_zygote()
            self._monitor(st, float(lim["wall_seconds"]), float(lim["cpu_seconds"]))
        except Exception:
            self._stop(st, clean=False)  # a bug here must not leave the run's child or fds
            raise
        clean = st.end and not st.corrupt and not st.timed_out and not st.cpu_timed_out
        if not clean:
            self._stop(st, clean=False)
        if st.sandbox_error:  # the child could not be confined: the sandbox broke, not the program
            return {"ok": False, "error": st.sandbox_error}, st, False
        return {"ok": True, "result": st.result(self.iso)}, st, clean

    def _monitor(self, st: _RunState, wall: float, cpu_limit: float) -> None:
        """Watch the run until it ends, its CPU time reaches `cpu_limit` (the limit that
        decides: independent of the machine's load) or the wall clock `wall` (a backstop for
        programs that wait rather than compute). RLIMIT_CPU stops the child in whole seconds
        by itself; the server's own look at its CPU time, once the wall clock has passed the
        limit, makes fractional limits exact and costs a run that ends sooner nothing."""
        z = st.z
        deadline = st.t0 + wall
        cpu_check = st.t0 + cpu_limit  # CPU time grows no faster than the wall clock (one thread)
        cap = int(st.req["limits"]["output_bytes"])
        open_fds = [z.res_r, z.out_r]
        while True:
            now = time.monotonic()
            if now >= deadline:
                st.timed_out = True
                break
            if now >= cpu_check:
                used = _proc_cpu(z.pid) if not z.reaped else None
                if used is not None and used >= cpu_limit:
                    st.cpu_timed_out, st.cpu_seen = True, used
                    break
                cpu_check = now + max(0.01, cpu_limit - used) if used is not None else now + 0.05
            watch: list[int | _socket.socket] = [*open_fds, self.sock]  # the forker reports the child's exit
            if z.pidfd is not None:
                watch.append(z.pidfd)
            try:
                ready, _, _ = select.select(watch, [], [], min(deadline, cpu_check) - now)
            except InterruptedError:
                continue
            if self.sock in ready:
                self._drain_forker()
            if z.out_r in ready and not self._read_output(st, cap):
                open_fds.remove(z.out_r)
            if z.res_r in ready:
                try:
                    data = os.read(z.res_r, READ_SIZE)
                except OSError:
                    data = b""
                if not data:
                    open_fds.remove(z.res_r)
                else:
                    st.feed(data)
                    if st.end or st.corrupt:
                        break
            if (z.pidfd is not None and z.pidfd in ready) or z.pid in self.exits:
                self._wait_child(st, block=True)
                break
        st.seconds = time.monotonic() - st.t0
        if not z.reaped and st.cpu_seen is None:  # its CPU time, while /proc still has it
            st.cpu_seen = _proc_cpu(z.pid)
        self._drain(st, cap, budget=0.0)  # what is already in the pipes belongs to this run

    def _wait_child(self, st: _RunState, block: bool) -> bool:
        """Take the run's child's exit from the forker, waiting for it if `block`; True once
        it has been reaped."""
        z = st.z
        if z.reaped:
            return True
        self._drain_forker()
        deadline = time.monotonic() + 30.0
        while block and z.pid not in self.exits:
            if time.monotonic() >= deadline:
                raise _Broken("the forker never reported a child's exit")
            if not self._receive(min(0.05, deadline - time.monotonic())):
                self._nudge_forker()  # it may not have seen the exit (no pidfd for this child)
        if z.pid not in self.exits:
            return False
        status, usage = self.exits.pop(z.pid)
        z.reaped = True
        st.set_exit(status, usage)
        return True

    def _read_output(self, st: _RunState, cap: int) -> bool:
        try:
            data = os.read(st.z.out_r, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        st.add_output(data, cap)
        return True

    def _drain(self, st: _RunState, cap: int, budget: float) -> None:
        z = st.z
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
                    st.add_output(data, cap)
                elif not st.end and not st.corrupt:
                    st.feed(data)

    def _stop(self, st: _RunState, clean: bool) -> None:
        """Make sure the run's child and everything it started are gone; reap; tidy up."""
        z = st.z
        forced = not clean
        if not z.reaped and clean:
            # it reported everything and is on its way out
            deadline = time.monotonic() + 1.0
            while z.pid not in self.exits and time.monotonic() < deadline:
                self._receive(deadline - time.monotonic())
            self._wait_child(st, block=False)
        if not z.reaped:
            forced = True
            self._kill_child(z)
            self._wait_child(st, block=True)
        if self.iso.uid is not None:
            # On a clean end the harness has already SIGKILLed every other process of the uid,
            # after making forks impossible (RLIMIT_NPROC 0); otherwise do it now.
            if forced:
                self._kill_uid()
            st.leftovers = not self._settle()
        else:
            st.leftovers = not self._cleanup_by_tree(z.pid)
        if forced:
            self._drain(st, int(st.req["limits"]["output_bytes"]), budget=1.0)
        if st.leftovers:
            # Something of the run survived SIGKILL: it must not meet the next run. Stop after
            # this reply; the client starts a new server (with a new uid and namespaces).
            self.tainted = True
        else:
            self._empty_sysv_ipc()
            if self.iso.uid is not None:
                self.keys_dirty = self.keys_dirty or self._uid_has_keys()
            if self.iso.scratch:
                try:
                    self._empty_scratch()
                except Exception:  # not even fresh mounts: a new server takes over after this reply
                    self.tainted = True
        z.close_fds()
        if z.work and self.iso.run_dir:
            remove_tree(z.work)

    # --- main loop -------------------------------------------------------------------

    def hello(self) -> dict:
        return {
            "ok": True,
            "pid": self.pid,
            "isolation": self.iso.describe(),
            "mode": self.iso.mode,
            "uid": self.iso.uid,
            "notes": self.iso.notes,
            "subreaper": self.subreaper,
        }

    def send(self, obj: dict) -> None:
        write_frame(self.proto_out, json.dumps(obj, ensure_ascii=True).encode())

    def _reap_pending(self, wait: bool = False, force: bool = False) -> None:
        """Finish the clean-up of runs whose child reported everything and is exiting
        (`wait`: all of them, waiting up to a second for each to exit)."""
        still = []
        for st in self.pending:
            if wait or self._wait_child(st, block=False):
                self._stop(st, clean=True)
            elif force or time.monotonic() - st.t0 - st.seconds > 1.0:
                self._stop(st, clean=False)  # it should have exited long ago: kill everything
            else:
                still.append(st)
        self.pending = still

    def serve(self) -> None:
        self.send(self.hello())
        try:
            self.spawn_zygote()
            self._serve()
        except _Broken as e:  # the client restarts a server that stops answering
            sys.stderr.write(f"sandbox server: {e}\n")
        finally:
            self._shut_down()

    def _serve(self) -> None:
        while not self.tainted:
            # a clean run's child is waited for (or forced) a second after its end
            try:
                watch: list[int | _socket.socket] = [self.proto_in, self.sock]
                ready, _, _ = select.select(watch, [], [], 1.0 if self.pending else None)
            except InterruptedError:
                continue
            if self.sock in ready:
                self._drain_forker()
            if self.pending:
                self._reap_pending()
            if self.proto_in not in ready:
                continue
            try:
                req = json.loads(read_frame(self.proto_in))
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
            st, clean = None, False
            try:
                resp, st, clean = self.run(req)
            except _Broken:
                raise
            except Exception:
                import traceback

                resp = {"ok": False, "error": traceback.format_exc()}
                self._discard_zygote()
                self._end_every_run()
            self.send(resp)
            if st is not None and clean:
                if self.iso.uid is not None:
                    # On a clean end the harness already killed every other process of the
                    # uid; its own exit is reaped when it comes (or forced within a second).
                    self.pending.append(st)
                else:
                    self._stop(st, clean=True)
            self.spawn_zygote()

    def _kill_descendants(self, timeout: float = 5.0) -> None:
        """Without a sandbox uid, last: SIGKILL and reap whatever still descends from here
        (orphans of a forker that died come back to this subreaper)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = _descendants(self.pid)
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

    def _end_every_run(self) -> None:
        if self.iso.uid is not None:
            self._kill_uid()
            self._settle()
        else:
            self._cleanup_by_tree(None)

    def _shut_down(self) -> None:
        for step in (lambda: self._reap_pending(force=True), self._discard_zygote, self._end_every_run):
            try:
                step()
            except (_Broken, OSError):
                pass  # the forker is gone: what it left is swept up below
        self.sock.close()  # the forker exits, and its zygote with it (PDEATHSIG)
        try:
            os.waitpid(self.forker_pid, 0)
        except ChildProcessError:
            pass
        if self.iso.uid is not None:
            self._kill_uid()
        else:
            self._kill_descendants()
        if self.iso.run_dir:
            remove_tree(self.iso.run_dir)


# ------------------------------------------------------------------------ run state


class _RunState:
    def __init__(self, req: dict, tests: list, token: str, z: Zygote, t0: float) -> None:
        self.req, self.tests, self.token, self.z, self.t0 = req, tests, token, z, t0
        self.buf = b""
        self.received = 0
        self.define: dict | None = None
        self.results: list[dict] = []
        self.end = False
        self.corrupt: str | None = None
        self.sandbox_error: str | None = None
        self.timed_out = False  # the wall-clock backstop
        self.cpu_timed_out = False  # the CPU limit, as the server measured it
        self.cpu_seen: float | None = None  # the child's CPU time, read before it was reaped
        self.exit_status: int | None = None
        self.rusage = None
        self.output = b""
        self.output_total = 0
        self.seconds = 0.0
        self.leftovers = False

    def set_exit(self, status: int, ru) -> None:
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
        except ValueError:
            self.corrupt = "unparsable message on the result channel"
            return
        if not isinstance(msg, dict) or msg.get("t") != self.token:
            self.corrupt = "a message without the run's token on the result channel"
            return
        kind = msg.get("k")
        n = len(self.tests)
        if kind == "sandbox_error" and self.define is None:
            self.sandbox_error = _clean(msg.get("msg"))
            self.corrupt = "sandbox error"
        elif kind == "define" and self.define is None:
            self.define = msg
        elif kind == "result" and self.define is not None and self.define.get("ok"):
            if msg.get("i") != len(self.results) or len(self.results) >= n:
                self.corrupt = "test reports out of order"
            else:
                self.results.append(msg)
        elif kind == "end" and self.define is not None:
            if self.define.get("ok") and len(self.results) != n and not any(
                r.get("et") == "MemoryError" for r in self.results
            ):
                self.corrupt = "the run ended without reporting every test"
            else:
                self.end = True
        else:
            self.corrupt = f"unexpected {str(kind)[:40]!r} message on the result channel"

    # --- the verdict ---

    def result(self, iso: Isolation) -> dict:
        """The verdict. A pass needs every test's report and the end message. Otherwise the
        class is the first failure in test order: the definition's, else the first failing
        test's, else what stopped the run (a timeout, a kill, an exit) in the test it was
        running; every test keeps its own class."""
        lim = self.req["limits"]
        names = [t[0] for t in self.tests]
        tests: list[dict] = []
        status = error_type = phase = None
        message = traceback = ""

        def test(i: int, passed: bool, et=None, msg="", line="") -> dict:
            return {
                "name": names[i], "passed": passed, "error_type": et,
                "message": _clean(msg), "line": _clean(line, 1500),
            }

        for i, r in enumerate(self.results):
            if r.get("ok") is True:
                tests.append(test(i, True))
            else:
                tests.append(test(i, False, _clean(r.get("et"), 200), r.get("msg"), r.get("line")))
        reported_failure = next((r for r in self.results if r.get("ok") is not True), None)
        define_failed = self.define is not None and self.define.get("ok") is not True
        in_define = self.define is None
        # the test in progress when it stopped: the first one not reported (results come in order)
        current = (
            len(self.results) if self.define is not None and not self.end and len(self.results) < len(names) else None
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
            status, error_type = ("memory", "MemoryError") if memory else ("failed", _clean(first.get("et"), 200))
            phase = "define" if define_failed else "test"
            message, traceback = _clean(first.get("msg")), _clean(first.get("tb"), MAX_TB + 100)
        elif stop is not None:
            status, error_type, message = stop
        else:
            status = "passed"

        if phase is None and status != "passed":
            phase = "define" if in_define or define_failed else "test"
        if define_failed:
            d = self.define or {}
            not_run = "not run: the program failed to define (%s)" % _clean(d.get("msg"), 300)
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
            "isolation": iso.mode,
        }
        if stop is not None and stop[0] == "timeout":
            detail["timeout"] = "cpu" if stop[1] == TIMEOUT_CPU else "wall"
        if self.leftovers:
            detail["leftover_processes"] = True
        return {
            "status": status,
            "error_type": error_type,
            "phase": phase,
            "tests": tests,
            "message": _clean(message),
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
            how = f" ({_signal_name(signo)})" if signo is not None and not self.cpu_timed_out else ""
            return "timeout", TIMEOUT_CPU, f"CPU limit of {lim['cpu_seconds']}s exceeded{how}"
        if self.timed_out:
            return "timeout", TIMEOUT_WALL, (
                f"wall-clock limit of {lim['wall_seconds']}s exceeded (CPU used {cpu:.2f}s of {lim['cpu_seconds']}s: "
                "waiting, sleeping or starved)"
            )
        if signo is not None:
            if mem_limit > 0 and maxrss_mb >= 0.9 * mem_limit:
                return "memory", "MemoryError", (
                    f"killed by {_signal_name(signo)} at {maxrss_mb:.0f} MB (limit {lim['memory_mb']} MB)"
                )
            return "crashed", _signal_name(signo), f"killed by {_signal_name(signo)}"
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
            return _signal_name(os.WTERMSIG(self.exit_status)), cpu, rss
        return f"code {os.WEXITSTATUS(self.exit_status)}", cpu, rss


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
    forker._site_without_pth(cfg.get("site_packages", []))  # pytest's rewriter; paths to expose
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

        write_frame(proto_out, json.dumps({"ok": False, "error": traceback.format_exc()}).encode())
        raise SystemExit(1) from None
    server.serve()


if __name__ == "__main__":
    main(*sys.argv[1:2])
