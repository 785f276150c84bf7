"""The run's CPU meter and its wall-clock backstop, with scripted cgroup files (`_sandbox_cgroups`,
`_sandbox_procs`): no real cgroup, no load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_codegen import outcome, sandbox

# Imported by name from its directory, as the sandbox server imports them (see _sandbox_bootstrap)
sys.path.insert(0, str(Path(outcome.__file__).parent))
try:
    import _sandbox_cgroups as cgroups
    import _sandbox_procs as procs
finally:
    sys.path.pop(0)

PSI = "some avg10=1.50 avg60=0.80 avg300=0.20 total={}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


class ScriptedCgroup:
    """A cgroup whose files read as scripted, in turn."""

    def __init__(self, version: str, **files: list[str]) -> None:
        self.version, self.files = version, files

    def read(self, name: str) -> str:
        script = self.files.get(name)
        if not script:
            raise FileNotFoundError(name)
        return script.pop(0) if len(script) > 1 else script[0]


def meter(version: str = "2", usage: tuple[int, ...] = (0,), waited_us: tuple[int, ...] | None = (0,)):
    files = {"cpu.stat": [f"usage_usec {u}\nuser_usec 0\n" for u in usage]}
    if waited_us is not None:
        files["cpu.pressure"] = [PSI.format(w) for w in waited_us]
    group = ScriptedCgroup(version, **files)
    return cgroups.CpuMeter([group, group])


def test_the_cpu_wait_is_read_from_the_pressure_stall_information():
    assert meter(waited_us=(2_500_000,)).waited(0) == 2.5
    assert meter(version="1").waited(0) is None  # cpuacct keeps none
    psi_off = meter(waited_us=None)  # no such file
    assert psi_off.waited(0) is None and not psi_off.pressure  # not tried again
    psi_off.groups[0].files["cpu.pressure"] = [PSI.format(1_000_000)]
    assert psi_off.waited(0) is None


@pytest.mark.parametrize(("waited_us", "pushed_back"), [
    ((1_000_000, 4_500_000), 3.5),  # kept waiting 3.5 s for a CPU: the backstop moves 3.5 s
    ((7_000_000, 7_000_000), 0.0),  # never waited (a sleeping program): not moved
    ((0, 500_000_000), 20.0),  # at most the credit
    ((9_000_000, 1_000_000), 0.0),  # a counter that went back is no wait
])
def test_the_wall_backstop_does_not_count_the_runs_wait_for_a_cpu(waited_us, pushed_back):
    cpu = procs.RunCpu(meter(waited_us=waited_us), slot=0, pid=None)
    assert cpu.wall_deadline(100.0, 35.0, credit=20.0) == pytest.approx(135.0 + pushed_back)


def test_without_the_wait_the_wall_backstop_is_the_limit():
    # no CPU cgroup, a v1 meter, or no pressure file: the plain wall-clock limit
    for cpu in (procs.RunCpu(None, 0, pid=None), procs.RunCpu(meter(version="1"), 0, pid=None),
                procs.RunCpu(meter(waited_us=None), 0, pid=None)):
        assert cpu.wall_deadline(100.0, 35.0, credit=20.0) == 135.0


def test_the_longest_wall_time_is_the_backstop_and_its_whole_credit():
    assert sandbox.Limits(wall_seconds=35.0, cpu_wait_credit_seconds=20.0).longest_wall_seconds == 55.0
    assert sandbox.Limits(wall_seconds=35.0, cpu_wait_credit_seconds=-5.0).longest_wall_seconds == 35.0


def test_no_credit_keeps_the_wall_limit_as_it_is():
    cpu = procs.RunCpu(meter(waited_us=(0, 9_000_000)), slot=0, pid=None)
    assert cpu.wall_deadline(100.0, 35.0, credit=0.0) == 135.0
