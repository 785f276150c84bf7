"""Repeated samples, resuming a killed run, and the CI gate, through pytest as users run it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_codegen.results import read_records

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = str(REPO / "benchmarks" / "humaneval")


def comparable(path: Path) -> list[str]:
    """A results file as a sorted list of records, wall-clock facts left out."""
    return sorted(json.dumps(r.without_run_facts(), sort_keys=True) for r in read_records(path))


def test_samples_make_items_with_sample_ids(pytester):
    result = pytester.runpytest_subprocess(
        HUMANEVAL, "--pipeline=reference", "--samples=3", "--problems=HumanEval/0,HumanEval/1",
        "--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "*test_humaneval[[]HumanEval/0-sample0[]]", "*test_humaneval[[]HumanEval/0-sample1[]]",
        "*test_humaneval[[]HumanEval/0-sample2[]]", "*test_humaneval[[]HumanEval/1-sample0[]]",
    ])


def test_killed_run_resumes_to_the_same_results(tmp_path):
    """SIGKILL halfway through 164 x 3 items, run the same command again: same records."""
    command = [sys.executable, "-m", "pytest", HUMANEVAL, "--pipeline=reference", "--samples=3",
               "-q", "-p", "no:cacheprovider"]
    uninterrupted = tmp_path / "full.jsonl"
    subprocess.run(command + [f"--codegen-results={uninterrupted}"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert len(comparable(uninterrupted)) == 492

    resumed = tmp_path / "resumed.jsonl"
    process = subprocess.Popen(command + [f"--codegen-results={resumed}"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if resumed.exists() and resumed.read_bytes().count(b"\n") >= 200:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    written = resumed.read_bytes().count(b"\n")
    assert 200 <= written < 492, "the kill must land halfway"

    again = subprocess.run(command + [f"--codegen-results={resumed}"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stdout[-2000:]
    assert "deselected" in again.stdout
    assert comparable(resumed) == comparable(uninterrupted)


def test_results_file_of_other_settings_is_not_resumed(pytester):
    args = [HUMANEVAL, "--problems=HumanEval/0", "--codegen-results=r.jsonl"]
    pytester.runpytest_subprocess(*args, "--pipeline=reference").assert_outcomes(passed=1)
    refused = pytester.runpytest_subprocess(*args, "--pipeline=null")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*holds results of a run with other settings*--codegen-fresh*"])
    fresh = pytester.runpytest_subprocess(*args, "--pipeline=null", "--codegen-fresh")
    fresh.assert_outcomes(failed=1)


def write_replay(path: Path, passing: int, failing: int) -> Path:
    ids = [f"HumanEval/{i}" for i in range(passing + failing)]
    from pytest_codegen.datasets import humaneval

    canonical = {p.id: p.canonical_solution for p in humaneval.load_problems()}
    rows = [{"task_id": i, "solution": canonical[i] if n < passing else ""} for n, i in enumerate(ids)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, ids


@pytest.mark.parametrize("bar, exit_code, verdict", [
    ("0.6", pytest.ExitCode.OK, "holds"),
    ("0.8", pytest.ExitCode.TESTS_FAILED, "FAILS"),
])
def test_min_pass_gate(pytester, bar, exit_code, verdict):
    replay, ids = write_replay(pytester.path / "s.jsonl", passing=7, failing=3)
    result = pytester.runpytest_subprocess(
        HUMANEVAL, "--pipeline=replay", f"--replay={replay}", f"--problems={','.join(ids)}",
        f"--codegen-min-pass={bar}")
    result.assert_outcomes(passed=7, failed=3)
    assert result.ret == exit_code
    result.stdout.fnmatch_lines([f"gate: humaneval pass@1 0.700 * {bar}: {verdict}"])


@pytest.mark.parametrize("mode", [pytest.param([], id="plain"), pytest.param(["-n", "2"], id="xdist")])
def test_resumed_tables_count_only_the_items_this_run_selected(pytester, mode):
    args = [HUMANEVAL, "--pipeline=reference", "--codegen-results=r.jsonl"]
    pytester.runpytest_subprocess(*args, "--problems=HumanEval/0,HumanEval/1").assert_outcomes(passed=2)
    again = pytester.runpytest_subprocess(*args, "--problems=HumanEval/1,HumanEval/2", *mode)
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["humaneval * 2 * 2 * 1.000", "(1 items resumed from the results file)"])
    assert len(list(read_records(pytester.path / "r.jsonl"))) == 3


KILLER = '''
import os, signal

def pytest_runtest_call(item):
    """Kill this xdist worker, once, in the middle of the run."""
    mark = os.path.join(os.environ["KILL_MARK_DIR"], "killed")
    if item.nodeid.endswith("[%s]" % os.environ["KILL_AT"]) and not os.path.exists(mark):
        open(mark, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
'''


def test_killing_an_xdist_worker_loses_no_item(pytester, monkeypatch):
    # The replacement worker must run exactly the items it is handed (not re-read the results
    # file the others are writing), and the item its predecessor died in runs again.
    pytester.makepyfile(codegen_killer=KILLER)
    monkeypatch.setenv("KILL_MARK_DIR", str(pytester.path))
    monkeypatch.setenv("KILL_AT", "HumanEval/20")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    problems = ",".join(f"HumanEval/{i}" for i in range(40))
    result = pytester.runpytest_subprocess(
        HUMANEVAL, "--pipeline=reference", f"--problems={problems}", "-n", "2",
        "-p", "codegen_killer", "--codegen-results=r.jsonl")
    output = result.stdout.str()
    assert (pytester.path / "killed").exists()
    assert "replacing crashed worker" in output
    records = list(read_records(pytester.path / "r.jsonl"))
    assert sorted(r.problem_id for r in records) == sorted(problems.split(","))
    result.stdout.fnmatch_lines(["humaneval * 40 * 40 * 1.000"])
    assert result.ret == pytest.ExitCode.OK, output[-3000:]
    assert " skipped" not in output


def test_resume_after_a_killed_worker_is_decided_once_on_the_controller(pytester, monkeypatch):
    # Half the items are in the results file already; a worker dies mid-run: every item is
    # still counted exactly once, in the tables and in the file.
    pytester.makepyfile(codegen_killer=KILLER)
    monkeypatch.setenv("KILL_MARK_DIR", str(pytester.path))
    monkeypatch.setenv("KILL_AT", "HumanEval/21")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = ",".join(f"HumanEval/{i}" for i in range(0, 40, 2))
    everything = ",".join(f"HumanEval/{i}" for i in range(40))
    args = [HUMANEVAL, "--pipeline=reference", "--codegen-results=r.jsonl"]
    pytester.runpytest_subprocess(*args, f"--problems={first}", "-p", "no:xdist").assert_outcomes(passed=20)
    result = pytester.runpytest_subprocess(*args, f"--problems={everything}", "-n", "2", "-p", "codegen_killer")
    assert (pytester.path / "killed").exists()
    records = list(read_records(pytester.path / "r.jsonl"))
    assert sorted(r.problem_id for r in records) == sorted(everything.split(","))
    result.stdout.fnmatch_lines(["humaneval * 40 * 40 * 1.000", "(20 items resumed from the results file)"])
    assert result.ret == pytest.ExitCode.OK
