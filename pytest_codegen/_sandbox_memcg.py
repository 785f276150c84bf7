"""A memory cgroup per sandbox server, which each run's processes join: it caps what they hold
together (RLIMIT_AS caps each process alone, and a run may start up to `max_processes`).

Made under the server's own cgroup (so whatever caps the caller caps the sandbox too): with
cgroup v2 where the memory controller is delegated there (enabled, or ours to enable, for
its children), else in a cgroup v1 memory hierarchy. Where neither can be had, `create` says
why, for the isolation line. The server moves each run's zygote in before its job (a write
of a few microseconds), so the forker and everything else of the server stay out of it; the
cgroup's own files are reached through a directory fd (the sandbox's root does not show them).
Imported by name from its directory like every sandbox file (see `_sandbox_bootstrap`).
"""

from __future__ import annotations

import os
import re

PREFIX = "pytest-codegen-"


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_cgroups() -> list[tuple[str, str]]:
    """(directory, version) of this process's cgroups that may hold a memory cgroup: the
    cgroup v2 one first, then the v1 memory hierarchy's."""
    paths: dict[str, str] = {}  # "2" or "1" -> this process's cgroup path
    with open("/proc/self/cgroup") as f:
        for line in f:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if number == "0" and not controllers:
                paths["2"] = path
            elif "memory" in controllers.split(","):
                paths["1"] = path
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            v1_memory = tail[0] == "cgroup" and "memory" in tail[2].split(",")
            version = "2" if tail[0] == "cgroup2" else "1" if v1_memory else None
            if version is None or version not in paths:
                continue
            root, point = _unescape(fields[3]), _unescape(fields[4])
            path = paths[version]
            if path == root or path.startswith(root.rstrip("/") + "/"):
                found.append((os.path.join(point, path[len(root) :].lstrip("/")), version))
    return sorted(found, key=lambda c: c[1], reverse=True)


def _read(dir_fd: int, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def _write(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _sweep(parent: int) -> None:
    """Remove the cgroups of servers that are gone (killed before they could): empty ones go."""
    for name in os.listdir(parent):
        pid = name[len(PREFIX) :]
        if name.startswith(PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                pass


class MemoryCap:
    """This server's memory cgroup (see the module's docstring)."""

    def __init__(self, parent: int, name: str, version: str) -> None:
        self.parent, self.name, self.version = parent, name, version
        self.fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
        self.limit_mb: int | None = None
        self.kills = self.oom_kills()

    @classmethod
    def create(cls) -> tuple[MemoryCap | None, str]:
        """This server's memory cgroup, or why there is none."""
        why = "no memory cgroup (no cgroup v2 memory controller or v1 memory hierarchy here)"
        try:
            cgroups = _own_cgroups()
        except (OSError, ValueError, IndexError) as e:
            return None, f"no memory cgroup ({e})"
        for directory, version in cgroups:
            try:
                parent = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                why = f"no memory cgroup (cgroup v{version}: {e.strerror})"
                continue
            try:
                if version == "2":
                    if "memory" not in _read(parent, "cgroup.controllers").split():
                        raise OSError(0, f"the memory controller is not available in {directory}")
                    if "memory" not in _read(parent, "cgroup.subtree_control").split():
                        try:
                            _write(parent, "cgroup.subtree_control", "+memory")
                        except OSError as e:
                            raise OSError(e.errno, f"the memory controller is not delegated to {directory}") from e
                _sweep(parent)
                name = f"{PREFIX}{os.getpid()}"
                os.mkdir(name, 0o755, dir_fd=parent)
                return cls(parent, name, version), ""
            except OSError as e:
                os.close(parent)
                why = f"no memory cgroup (cgroup v{version}: {e.strerror})"
        return None, why

    def join(self, pid: int) -> None:
        """Move process `pid` (its threads too) in: what it allocates from now on counts."""
        _write(self.fd, "cgroup.procs", str(pid))

    def limit(self, mb: int) -> None:
        """Cap the members' total at `mb` MB, swap included (none: `mb` <= 0)."""
        if mb == self.limit_mb:
            return
        if self.version == "2":
            _write(self.fd, "memory.max", str(mb << 20) if mb > 0 else "max")
            try:
                _write(self.fd, "memory.swap.max", "0")
            except OSError:
                pass  # no swap accounting: no swap to cap
        else:
            value = str(mb << 20) if mb > 0 else "-1"
            try:  # memory+swap is never below memory: lowered last, raised first
                order = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
                if self.limit_mb is not None and (mb <= 0 or 0 < self.limit_mb < mb):
                    order = order[::-1]
                for name in order:
                    _write(self.fd, name, value)
            except FileNotFoundError:  # no swap accounting
                _write(self.fd, "memory.limit_in_bytes", value)
        self.limit_mb = mb

    def oom_kills(self) -> int:
        """How many of its processes the kernel killed for its limit, so far."""
        text = _read(self.fd, "memory.events" if self.version == "2" else "memory.oom_control")
        found = re.search(r"^oom_kill (\d+)", text, re.M)
        return int(found.group(1)) if found else 0

    def capped(self) -> bool:
        """Did the cap kill a process since the last call?"""
        kills = self.oom_kills()
        capped, self.kills = kills > self.kills, kills
        return capped

    def remove(self) -> None:
        """Once every member is gone."""
        os.close(self.fd)
        try:
            os.rmdir(self.name, dir_fd=self.parent)
        except OSError:
            pass
        os.close(self.parent)
