"""The sandbox server's cgroups, which each run's processes join: a memory cap on what they
hold together (RLIMIT_AS caps each process alone, and a run may start up to `max_processes`)
and a CPU meter of what they used together, exited ones included (RLIMIT_CPU and /proc see
each process alone, so a program that forks would get more than the limit).

Made under the server's own cgroup (so whatever caps the caller caps the sandbox too), with
cgroup v2 where it can be had, else in the cgroup v1 hierarchy of the controller: the memory
cap needs v2's memory controller delegated there (enabled, or ours to enable, for its
children); the CPU meter needs no v2 controller (every v2 cgroup counts its `cpu.stat`), and
shares the memory cap's cgroup when that is v2 (a process is in one v2 cgroup only). Where
neither can be had, `create` says why, for the isolation line. The server moves each run's
zygote in before its job (a write of a few microseconds), so the forker and everything else
of the server stay out; the cgroups' own files are reached through directory fds (the
sandbox's root does not show them). Imported by name from its directory like every sandbox
file (see `_sandbox_bootstrap`).

Each kind comes as two cgroups, *slots*, that runs take in turn: the next run's zygote joins
the slot the current run is not in, while that run goes on (joining waits for an RCU grace
period, about a millisecond, that would otherwise come between a job and its start), and each
run is alone in its slot (the run before it in that slot is gone before its zygote joins).
"""

from __future__ import annotations

import os
import re

PREFIX = "pytest-codegen-"
SLOTS = 2


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_cgroups(v1_controller: str) -> list[tuple[str, str]]:
    """(directory, version) of this process's cgroups where a cgroup for `v1_controller`'s
    resource may be made: the cgroup v2 one first, then that v1 controller's hierarchy's."""
    paths: dict[str, str] = {}  # "2" or "1" -> this process's cgroup path
    with open("/proc/self/cgroup") as f:
        for line in f:
            number, controllers, path = line.rstrip("\n").split(":", 2)
            if number == "0" and not controllers:
                paths["2"] = path
            elif v1_controller in controllers.split(","):
                paths["1"] = path
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            tail = fields[fields.index("-") + 1 :]
            v1 = tail[0] == "cgroup" and v1_controller in tail[2].split(",")
            version = "2" if tail[0] == "cgroup2" else "1" if v1 else None
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
        pid = name[len(PREFIX) :].split("-")[0]
        if name.startswith(PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                pass


class Cgroup:
    """One cgroup of this server: `version` "2" or "1", reached through the fd `fd`."""

    def __init__(self, parent: int, name: str, version: str) -> None:
        self.parent, self.name, self.version = parent, name, version
        self.fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
        # Its files stay open once used: opening a cgroup file costs several times reading
        # or writing it, and a run reads and writes a few
        self.files: dict[tuple[str, int], int] = {}  # (name, open flags) -> fd

    @classmethod
    def create(
        cls, resource: str, v1_controller: str, v2_controller: str | None, v2_file: str
    ) -> tuple[Cgroup | None, str]:
        """This server's cgroup for `resource` (v2: with `v2_controller` delegated, showing
        `v2_file`; else v1: in `v1_controller`'s hierarchy), or why there is none."""
        why = f"no {resource} cgroup (no cgroup v2 or v1 {v1_controller} hierarchy here)"
        try:
            cgroups = _own_cgroups(v1_controller)
        except (OSError, ValueError, IndexError) as e:
            return None, f"no {resource} cgroup ({e})"
        for directory, version in cgroups:
            try:
                parent = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                why = f"no {resource} cgroup (cgroup v{version}: {e.strerror})"
                continue
            made = None
            try:
                if version == "2" and v2_controller is not None:
                    if v2_controller not in _read(parent, "cgroup.controllers").split():
                        raise OSError(0, f"the {v2_controller} controller is not available in {directory}")
                    if v2_controller not in _read(parent, "cgroup.subtree_control").split():
                        try:
                            _write(parent, "cgroup.subtree_control", f"+{v2_controller}")
                        except OSError as e:
                            why = f"the {v2_controller} controller is not delegated to {directory}"
                            raise OSError(e.errno, why) from e
                _sweep(parent)
                name = f"{PREFIX}{os.getpid()}"
                os.mkdir(name, 0o755, dir_fd=parent)
                made = cls(parent, name, version)
                if version == "2":
                    _read(made.fd, v2_file)  # (an old kernel's v2 may not count it)
                return made, ""
            except OSError as e:
                if made is not None:
                    made.remove()
                else:
                    os.close(parent)
                why = f"no {resource} cgroup (cgroup v{version}: {e.strerror})"
        return None, why

    def _file(self, name: str, flags: int) -> int:
        fd = self.files.get((name, flags))
        if fd is None:
            fd = self.files[name, flags] = os.open(name, flags | os.O_CLOEXEC, dir_fd=self.fd)
        return fd

    def sibling(self) -> Cgroup:
        """A second cgroup of this server next to this one (see `SLOTS`)."""
        name = f"{self.name}-1"
        os.mkdir(name, 0o755, dir_fd=self.parent)
        return Cgroup(os.dup(self.parent), name, self.version)

    def read(self, name: str) -> str:
        """The file's contents now (read from its start: the kernel makes them afresh)."""
        return os.pread(self._file(name, os.O_RDONLY), 4096, 0).decode()

    def write(self, name: str, text: str) -> None:
        os.write(self._file(name, os.O_WRONLY), text.encode())

    def join(self, pid: int) -> None:
        """Move process `pid` (its threads too) in: what it does from now on counts."""
        self.write("cgroup.procs", str(pid))

    def remove(self) -> None:
        """Once every member is gone (again: nothing)."""
        if self.fd < 0:
            return
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()
        os.close(self.fd)
        self.fd = -1
        try:
            os.rmdir(self.name, dir_fd=self.parent)
        except OSError:
            pass
        os.close(self.parent)


def _slots(resource: str, v1_controller: str, v2_controller: str | None, v2_file: str
           ) -> tuple[list[Cgroup] | None, str]:
    """This server's `SLOTS` cgroups for `resource` (see `Cgroup.create`), or why there are none."""
    group, why = Cgroup.create(resource, v1_controller, v2_controller, v2_file)
    if group is None:
        return None, why
    try:
        return [group, group.sibling()], ""
    except OSError as e:
        group.remove()
        return None, f"no {resource} cgroup ({e.strerror})"


class MemoryCap:
    """This server's memory cgroups, one per slot (see the module's docstring)."""

    def __init__(self, groups: list[Cgroup]) -> None:
        self.groups, self.version = groups, groups[0].version
        self.limit_mb: int | None = None
        self.kills = [self.oom_kills(slot) for slot in range(SLOTS)]

    @classmethod
    def create(cls) -> tuple[MemoryCap | None, str]:
        """This server's memory cgroups, or why there are none."""
        groups, why = _slots("memory", "memory", "memory", "memory.max")
        if groups is None:
            return None, why
        try:
            return cls(groups), ""
        except OSError as e:  # its kill counts cannot be read
            for g in groups:
                g.remove()
            return None, f"no memory cgroup ({e.strerror})"

    def join(self, pid: int, slot: int) -> None:
        self.groups[slot].join(pid)

    def limit(self, mb: int) -> None:
        """Cap the members' total at `mb` MB, swap included (none: `mb` <= 0), in every slot."""
        if mb == self.limit_mb:
            return
        for g in self.groups:
            self._limit(g, mb)
        self.limit_mb = mb

    def _limit(self, g: Cgroup, mb: int) -> None:
        if self.version == "2":
            g.write("memory.max", str(mb << 20) if mb > 0 else "max")
            try:
                g.write("memory.swap.max", "0")
            except OSError:
                pass  # no swap accounting: no swap to cap
        else:
            value = str(mb << 20) if mb > 0 else "-1"
            try:  # memory+swap is never below memory: lowered last, raised first
                order = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
                if self.limit_mb is not None and (mb <= 0 or 0 < self.limit_mb < mb):
                    order = order[::-1]
                for name in order:
                    g.write(name, value)
            except FileNotFoundError:  # no swap accounting
                g.write("memory.limit_in_bytes", value)

    def oom_kills(self, slot: int) -> int:
        """How many of the slot's processes the kernel killed for its limit, so far."""
        text = self.groups[slot].read("memory.events" if self.version == "2" else "memory.oom_control")
        found = re.search(r"^oom_kill (\d+)", text, re.M)
        return int(found.group(1)) if found else 0

    def capped(self, slot: int) -> bool:
        """Did the cap kill a process of the slot since the last call?"""
        kills = self.oom_kills(slot)
        capped, self.kills[slot] = kills > self.kills[slot], kills
        return capped

    def remove(self) -> None:
        for g in self.groups:
            g.remove()


class CpuMeter:
    """This server's CPU cgroups, one per slot (see the module's docstring): the CPU time of
    every process that was ever in one, so a run's is the difference over the run (a slot has
    one run at a time, and its next zygote joins once that run's processes are gone)."""

    def __init__(self, groups: list[Cgroup], shared: bool = False) -> None:
        self.groups, self.version, self.shared = groups, groups[0].version, shared
        self.pressure = self.version == "2"  # whether `cpu.pressure` may be read (see `waited`)

    @classmethod
    def create(cls, memory: MemoryCap | None) -> tuple[CpuMeter | None, str]:
        """This server's CPU cgroups (the memory cap's where those are v2), or why there are none."""
        if memory is not None and memory.version == "2":
            return cls(memory.groups, shared=True), ""
        groups, why = _slots("CPU", "cpuacct", None, "cpu.stat")
        return (cls(groups), "") if groups is not None else (None, why)

    def join(self, pid: int, slot: int) -> None:
        if not self.shared:  # else joined with the memory cap's
            self.groups[slot].join(pid)

    def seconds(self, slot: int) -> float:
        """The slot's members' CPU time (user + system) so far, exited members' included."""
        if self.version == "2":
            found = re.search(r"^usage_usec (\d+)", self.groups[slot].read("cpu.stat"), re.M)
            return int(found.group(1)) / 1e6 if found else 0.0
        return int(self.groups[slot].read("cpuacct.usage")) / 1e9

    def waited(self, slot: int) -> float | None:
        """How long the slot's members were ready to run but had no CPU, so far (v2's pressure
        stall information, "some"); None where the kernel keeps none (v1, or PSI off: once
        the file cannot be read, it is not tried again, as every run would)."""
        if not self.pressure:
            return None
        try:
            text = self.groups[slot].read("cpu.pressure")
        except (OSError, ValueError):  # (ValueError: not text)
            self.pressure = False
            return None
        found = re.search(r"^some .*\btotal=(\d+)", text, re.M)
        return int(found.group(1)) / 1e6 if found else None

    def remove(self) -> None:
        if not self.shared:
            for g in self.groups:
                g.remove()
