"""What a run leaves behind, removed before the next: the scratch space and IPC objects.

The scratch space is the candidates' writable tmpfs mounts (see `_sandbox_isolation`); every
run gets it empty, with a fresh work dir. IPC objects (SysV, POSIX message queues) live in
the server's own IPC namespace (no run can make kernel keys: see the seccomp filter in
`_sandbox_forker`). Every step here runs once every process of
the previous run is gone. Imported by name from its directory like every sandbox file (see
`_sandbox_bootstrap`).
"""

from __future__ import annotations

import os
import typing

if typing.TYPE_CHECKING:
    from pytest_codegen import _sandbox_forker as forker
    from pytest_codegen import _sandbox_isolation as isolation
    from pytest_codegen import _sandbox_procs as procs
else:
    import _sandbox_forker as forker
    import _sandbox_isolation as isolation
    import _sandbox_procs as procs

# Reads of /proc listings: under glibc's mmap threshold, so each read is not an mmap/munmap
# pair (which also raises the threshold and leaves the heap bigger for every fork)
READ_SIZE = 64 * 1024

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



class Scratch:
    """The scratch space of an isolation that has one (`iso.scratch`): a tmpfs per scratch
    directory, and in them the read-only mounts that hold interpreter paths (`iso.pinned`),
    which the clean-up keeps."""

    def __init__(self, iso: isolation.Isolation) -> None:
        self.iso = iso
        self.clean: list[tuple[int, ...]] | None = None  # its state when last emptied
        self.modes = {d: os.stat(d).st_mode & 0o7777 for d in iso.scratch_dirs}

    def _state(self) -> list[tuple[int, ...]] | None:
        """Per scratch directory (the work dir last): size (tmpfs counts entries in it), mode
        and owner."""
        try:
            dirs = [os.stat(d) for d in (*self.iso.scratch_dirs, self.iso.work)]
        except OSError:
            return None
        return [(st.st_size, st.st_mode, st.st_uid, st.st_gid) for st in dirs]

    def empty(self) -> None:
        """Empty the writable directories and make a fresh work dir, between two runs.

        Called only once every process of the previous run is gone (reaped), so nothing can
        write there any more. (Cheaper than a mount namespace with fresh tmpfs mounts per
        child: no namespace copy and teardown.)
        Mostly a run leaves nothing: tmpfs counts a directory's entries in its size, so when
        every size, mode and owner is as it was, only the work dir is made anew (its own
        timestamps and extended attributes go with it).
        Nothing of this fails a run: what cannot be emptied (a tree deeper than any recursion,
        entries that will not go) is replaced by a fresh tmpfs (`renew`).
        """
        iso = self.iso
        if self.clean is not None and self._state() == self.clean:
            try:
                os.rmdir(iso.work)
                self.make_work_dir()
                return
            except OSError:
                pass  # not what it seemed: the thorough way
        try:
            emptied = True
            for d in iso.scratch_dirs:
                with os.scandir(d) as found:
                    entries = [entry for entry in found if entry.path not in iso.pinned]
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        emptied = remove_tree(entry.path) and emptied  # never leaves the tmpfs
                    else:
                        try:
                            os.unlink(entry.path)
                        except OSError:
                            emptied = False
            for d, mode in self.modes.items():  # the scratch dirs' own: a user-namespace
                if os.stat(d).st_mode & 0o7777 != mode:  # sandbox owns them and may change them
                    os.chmod(d, mode)
            if not emptied:
                raise OSError("the scratch space could not be emptied")
            self.make_work_dir()
        except Exception:  # OSError, MemoryError...: start over on fresh mounts
            self.renew()
        self.clean = self._state()

    def renew(self) -> None:
        """Replace every scratch directory's tmpfs by a fresh, empty one (the old one goes
        once nothing uses it: every process of the run is gone), the pinned paths moved over
        to it, and make the work dir."""
        aside = [(p, f"{isolation.STAGE_DIR}/{i}") for i, p in enumerate(self.iso.pinned)]
        for p, spot in aside:
            isolation.mount(p, spot, None, isolation.MS_MOVE)
        size = f"size={max(self.iso.scratch_mb, 1)}m,nr_inodes=8192"
        for d in self.iso.scratch_dirs:
            try:
                isolation.umount(d)
            except OSError:
                pass  # mounted over below all the same
            isolation.mount("tmpfs", d, "tmpfs", isolation.MS_NOSUID | isolation.MS_NODEV, f"{size},mode=1777")
        for p, spot in aside:
            os.mkdir(p, 0o755)
            isolation.mount(spot, p, None, isolation.MS_MOVE)
        self.make_work_dir()

    def make_work_dir(self) -> None:
        os.mkdir(self.iso.work, 0o700)
        if self.iso.uid is not None:
            assert self.iso.gid is not None  # set with the uid
            os.chown(self.iso.work, self.iso.uid, self.iso.gid)

    def resize(self, size_mb: int) -> None:
        """Resize the scratch tmpfs mounts for a run that asks for another file size limit."""
        size_mb = max(size_mb, 1)
        if size_mb == self.iso.scratch_mb:
            return
        for d in self.iso.scratch_dirs:
            flags = isolation.MS_REMOUNT | isolation.MS_NOSUID | isolation.MS_NODEV
            isolation.mount(None, d, None, flags, f"size={size_mb}m,nr_inodes=8192,mode=1777")
        self.iso.scratch_mb = size_mb


def _read_listing(fd: int) -> bytes:
    """A fresh listing from a /proc file kept open, read to its end."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = [os.read(fd, READ_SIZE)]
    while chunks[-1]:
        chunks.append(os.read(fd, READ_SIZE))
    return b"".join(chunks)


class Ipc:
    """The IPC objects runs may leave: what there is, and emptying it."""

    def __init__(self, iso: isolation.Isolation) -> None:
        self.iso = iso
        self.sysvipc: dict[str, int] = {}  # listings of this server's own IPC namespace, kept open
        if "ipc" in iso.namespaces:
            for kind in ("shm", "msg", "sem"):
                try:
                    self.sysvipc[kind] = os.open(f"sysvipc/{kind}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=procs.PROC)
                except OSError:
                    pass
        self.mqueue_empty = -1  # the size of this (new) namespace's queue directory with none
        if iso.mqueue is not None:
            try:
                self.mqueue_empty = os.stat(iso.mqueue).st_size if not os.listdir(iso.mqueue) else -1
            except OSError:
                pass

    def empty(self) -> None:
        """Remove the SysV message queues, semaphores and shared memory and the POSIX message
        queues a run left: the IPC namespace is this server's alone (never the host's: only
        with "ipc" unshared). (Kernel keys: no run can make any, see the forker's seccomp filter.)"""
        if self.iso.mqueue is not None:
            try:  # (the mqueue file system counts its queues in the directory's size)
                size = os.stat(self.iso.mqueue).st_size
                for name in os.listdir(self.iso.mqueue) if size != self.mqueue_empty else ():
                    try:
                        os.unlink(os.path.join(self.iso.mqueue, name))
                    except OSError:
                        pass
            except OSError:
                pass
        for kind, fd in self.sysvipc.items():
            try:
                rows = _read_listing(fd).decode().splitlines()[1:]
            except OSError:
                continue
            remove = {"shm": forker.libc.shmctl, "msg": forker.libc.msgctl, "sem": forker.libc.semctl}[kind]
            for row in rows:
                fields = row.split()
                if len(fields) > 1 and fields[1].isdigit():
                    if kind == "sem":
                        remove(int(fields[1]), 0, 0)  # IPC_RMID
                    else:
                        remove(int(fields[1]), 0, None)
