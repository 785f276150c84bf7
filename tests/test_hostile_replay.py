"""The hostile corpus through `--pipeline=replay`, as a user would meet it: pytest, xdist, JSONL."""

import json
import os
from pathlib import Path

import pytest

from test_sandbox import HOSTILE

SUITE = '''
import pytest
from pytest_codegen import Problem, TestCase

PROBLEM = Problem(
    id="hostile/f", benchmark="hostile", entry_point="f", prompt="Write f(x) returning x + 1.",
    tests=(TestCase("one", "assert candidate(1) == 2"),
           TestCase("check", "def check(candidate):\\n    assert candidate(5) == 6\\n\\ncheck(f)\\n")),
    canonical_solution="def f(x):\\n    return x + 1\\n",
)


@pytest.mark.parametrize("problem", [PROBLEM], ids=str)
def test_hostile(problem, solution):
    solution.verify()
'''


def processes_of(uids: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in uids:
                    found.append(int(entry))
            except FileNotFoundError:
                pass
    return found


@pytest.mark.slow  # a pytest subprocess over the whole hostile corpus
def test_hostile_corpus_through_replay_never_passes(pytester, tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("untouched")
    names = list(HOSTILE)
    replay = pytester.path / "hostile.jsonl"
    replay.write_text("".join(
        json.dumps({"task_id": "hostile/f", "solution": HOSTILE[n][0]}) + "\n" for n in names))
    pytester.makepyfile(test_hostile=SUITE)
    result = pytester.runpytest_subprocess(
        "--pipeline=replay", f"--replay={replay}", "--exec-timeout=2", "--exec-memory=256",
        "--codegen-results=out.jsonl", "-n", "2")
    result.assert_outcomes(failed=len(names))
    records = {r["sample"]: r for r in map(json.loads, (pytester.path / "out.jsonl").read_text().splitlines())}
    for index, name in enumerate(names):
        record = records[index]
        assert not record["passed"]
        assert record["outcome"] in HOSTILE[name][1], (name, record["outcome"], record["error_type"])
        assert record["outcome_class"] != "unknown"
    uids = {r["sandbox"]["uid"] for r in records.values()} - {None}
    if os.geteuid() == 0:
        assert uids, "as root every execution runs under a sandbox uid of its server"
    assert processes_of(uids) == []
    assert sentinel.read_text() == "untouched"
    assert not Path("/tmp/pwned").exists()
