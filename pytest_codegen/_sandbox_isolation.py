"""The sandbox server's isolation set-up: namespaces, mounts and the sandbox uid.

Done once, by the server for itself, at start: the forker and every child inherit it. (How
the whole fits together: `_sandbox_server`.) Like every sandbox file, this one is imported by
name from its directory, not through the package (see `_sandbox_bootstrap`).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_forker as forker
else:
    import _sandbox_forker as forker

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
MNT_DETACH = 2

MQUEUE_DIR = "/run/.mqueue"
TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # the scratch space (with /run/lock): tmpfs, emptied per run
SANDBOX_UID_BASE = 200000
NOBODY = 65534

# ------------------------------------------------------------------ libc via ctypes

forker.libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
forker.libc.unshare.argtypes = [ctypes.c_int]
forker.libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def unshare(flags: int) -> None:
    forker.check(forker.libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    forker.check(forker.libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def umount(target: str) -> None:
    forker.check(forker.libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def mount_flags(path: str) -> int:
    """The per-mount flags of `path`, to keep when re-mounting it (locked in a user namespace)."""
    f = os.statvfs(path).f_flag
    flags = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    if f & 4096:  # ST_RELATIME
        flags |= MS_RELATIME
    return flags


def mount_points() -> list[str]:
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


def interpreter_paths() -> list[str]:
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


def expose(iso: Isolation, needed: list[str]) -> None:
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
            mount(p, spot, None, MS_BIND | MS_REC)
            staged.append((spot, p))
        mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        for spot, p in staged:
            os.makedirs(p, mode=0o755, exist_ok=True)
            mount(spot, p, None, MS_MOVE)
            os.rmdir(spot)
            mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(p))
        mount(None, ancestor, None, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_RDONLY, "size=1m,mode=755")
        iso.hidden.append(ancestor)
        iso.notes.append(f"{ancestor} hidden; exposed read-only: {', '.join(paths)}")
    os.rmdir(stage)


def _setup_mounts(iso: Isolation, file_size_mb: int, root: bool) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Every real file system read-only: the candidate can write only to the fresh tmpfs below.
    for point in sorted(set(mount_points()), key=len):
        if point == "/proc" or point.startswith(("/proc/", "/sys", "/dev")):
            continue
        try:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(point))
            if point == "/":
                iso.read_only_root = True
        except OSError as e:
            if point == "/":
                iso.notes.append(f"could not make / read-only: {e}")
    needed = interpreter_paths()
    size = f"size={max(file_size_mb, 1)}m,nr_inodes=8192"
    # Fresh tmpfs over the writable places (and /run, which also hides host sockets), except
    # where the interpreter itself lives (a venv under /tmp stays visible, read-only).
    overlay = []
    for d in ("/run", *TMP_DIRS):
        if not os.path.isdir(d) or os.path.islink(d) or any(_under(p, d) for p in needed):
            continue
        try:
            mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode={'755' if d == '/run' else '1777'}")
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
                mount("mqueue", MQUEUE_DIR, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                iso.mqueue = MQUEUE_DIR
            except OSError as e:
                iso.notes.append(f"POSIX message queues are not emptied between runs: {e}")
            if root:
                try:
                    expose(iso, needed)
                except OSError as e:
                    iso.notes.append(f"could not expose the interpreter: {e}")
    if "/run" in overlay:
        # /run itself read-only (the sandbox's uid owns it in a user namespace), its scratch
        # subdirectories still writable: bound onto themselves, they are mounts of their own
        try:
            for sub in ("/run/lock", "/run/sandbox"):
                mount(sub, sub, None, MS_BIND)
            mount(None, "/run", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
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
    """Isolate this process (see the server's docstring for what applies when); what was
    done, for the isolation line and the children's confinement."""
    iso = Isolation()
    degrade = cfg.get("degrade")
    file_size_mb = int(cfg.get("file_size_mb", 16))
    if degrade and os.geteuid() == 0:
        # Simulate an unprivileged caller (used by the tests): become nobody for good, in a
        # private mount namespace where the interpreter is readable to it (as a real user's
        # own interpreter would be; here it may live under /root).
        unshare(CLONE_NEWNS)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        expose(Isolation(), interpreter_paths())
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        forker.prctl(forker.PR_SET_DUMPABLE, 1)  # like any process that never was root
    if os.geteuid() == 0:
        try:
            unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
            iso.namespaces = ["net", "mount", "ipc"]
        except OSError as e:
            iso.notes.append(str(e))
            for flag, name in ((CLONE_NEWNS, "mount"), (CLONE_NEWNET, "net"), (CLONE_NEWIPC, "ipc")):
                try:
                    unshare(flag)
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
            unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC)
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
