"""Bad input is a clear usage error naming the option or the file, before any item runs
(issue 12, item 5): through pytest as users run it, and through `pytest-codegen report`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pytest_codegen.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
HUMANEVAL = str(REPO / "benchmarks" / "humaneval")
MBPP = str(REPO / "benchmarks" / "mbpp")


def usage_error(result, *patterns: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:] + result.stderr.str()[-2000:]
    result.stderr.fnmatch_lines(list(patterns))
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "PASSED" not in result.stdout.str() and "passed" not in result.stdout.str()


@pytest.mark.parametrize("option, named", [
    ("--exec-memory=0", "--exec-memory must be*greater than 0*"),
    ("--exec-memory=-5", "--exec-memory must be*greater than 0*"),
    ("--exec-timeout=0", "--exec-timeout must be*greater than 0*"),
    ("--exec-timeout=nan", "--exec-timeout must be*greater than 0*"),
    ("--exec-timeout=-1", "--exec-timeout must be*greater than 0*"),
    ("--max-tokens=0", "--max-tokens must be*greater than 0*"),
    ("--max-tokens=-3", "--max-tokens must be*greater than 0*"),
    ("--temperature=-0.5", "--temperature must be 0 or more*"),
    ("--refiner-temperature=inf", "--refiner-temperature must be 0 or more*"),
    ("--rounds=0", "--rounds must be at least 1*"),
    ("--samples=0", "--samples must be at least 1*"),
    ("--codegen-min-pass=nan", "--codegen-min-pass must be between 0 and 1*"),
])
def test_bad_option_values_are_usage_errors(pytester, option, named):
    result = pytester.runpytest_subprocess(HUMANEVAL, "--pipeline=reference", "--problems=HumanEval/0", option)
    usage_error(result, f"*pytest-codegen: {named}")


@pytest.mark.parametrize("mode", [pytest.param([], id="plain"), pytest.param(["-n", "2"], id="xdist")])
def test_a_replay_file_that_matches_no_problem_is_a_usage_error(pytester, mode):
    replay = pytester.path / "other.jsonl"
    replay.write_text(json.dumps({"task_id": "Nothing/1", "completion": "    return 1\n"}) + "\n")
    result = pytester.runpytest_subprocess(HUMANEVAL, "--pipeline=replay", f"--replay={replay}", *mode)
    assert result.ret != pytest.ExitCode.OK
    output = result.stdout.str() + result.stderr.str()
    assert f"--replay {replay} has no sample for any problem" in output
    assert " passed" not in output and " skipped" not in output


def test_a_suite_given_another_benchmarks_replay_file_is_a_usage_error(pytester):
    replay = pytester.path / "humaneval.jsonl"
    replay.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return 1\n"}) + "\n")
    result = pytester.runpytest_subprocess(MBPP, "--pipeline=replay", f"--replay={replay}")
    assert result.ret != pytest.ExitCode.OK
    output = result.stdout.str() + result.stderr.str()
    assert "has no sample for any problem of" in output and "HumanEval/0" in output
    assert " skipped" not in output


def test_a_binary_replay_file_is_a_usage_error(pytester):
    replay = pytester.path / "binary.jsonl"
    replay.write_bytes(b"\xff\xfe\x00garbage\n")
    result = pytester.runpytest_subprocess(HUMANEVAL, "--pipeline=replay", f"--replay={replay}")
    assert result.ret != pytest.ExitCode.OK
    output = result.stdout.str() + result.stderr.str()
    assert f"{replay}:1: not UTF-8 text" in output and "Traceback" not in output


def test_a_replay_sample_with_a_lone_surrogate_is_a_usage_error(pytester):
    replay = pytester.path / "surrogate.jsonl"
    replay.write_text('{"task_id": "HumanEval/0", "solution": "def f():\\n    return 1  # \\ud800\\n"}\n')
    result = pytester.runpytest_subprocess(HUMANEVAL, "--pipeline=replay", f"--replay={replay}")
    assert result.ret != pytest.ExitCode.OK
    output = result.stdout.str() + result.stderr.str()
    assert f"{replay}:1: the sample's text holds a lone surrogate ('\\ud800')" in output
    assert "Traceback" not in output and "INTERNALERROR" not in output


@pytest.mark.parametrize("line", [b"\xff\xfe\x00\x01binary\n", b"[1, 2, 3]\n", b"42\n", b'"text"\n'])
def test_a_results_file_with_a_line_that_is_no_record_is_a_usage_error(pytester, line):
    results = pytester.path / "r.jsonl"
    args = [HUMANEVAL, "--pipeline=reference", "--problems=HumanEval/0", f"--codegen-results={results}"]
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    results.write_bytes(results.read_bytes() + line)
    result = pytester.runpytest_subprocess(*args, "--problems=HumanEval/0,HumanEval/1")
    usage_error(result, f"*pytest-codegen: {results}: line 2 is not a JSON*")


def test_a_record_cut_short_by_a_kill_is_still_skipped(tmp_path):
    from pytest_codegen.results import read_records

    path = tmp_path / "r.jsonl"
    record = b'{"benchmark": "b", "problem_id": "p", "nodeid": '
    path.write_bytes(record + b'"a", "passed": true}\n' + record + b'"b", "pas\n' + record + b'"c", "passed": \xc3\n'
                     + record + b'"d", "passed": false}\n')
    assert [r.nodeid for r in read_records(path)] == ["a", "d"]


def test_a_corrupt_generation_cache_is_a_usage_error_naming_the_file(pytester):
    cache = pytester.path / "cache"
    cache.mkdir()
    (cache / "generations.sqlite3").write_bytes(b"this is not a database" * 200)
    result = pytester.runpytest_subprocess(
        HUMANEVAL, "--pipeline=single", "--model=gemma-270m", "--problems=HumanEval/0",
        f"--codegen-cache={cache}")
    usage_error(result, f"*the generation cache {cache / 'generations.sqlite3'} is corrupt*--no-codegen-cache*")


def test_a_sound_generation_cache_passes_the_check(tmp_path):
    from pytest_codegen.settings import check_generation_cache

    check_generation_cache(str(tmp_path))  # none yet
    db = sqlite3.connect(tmp_path / "generations.sqlite3")
    db.execute("CREATE TABLE t (x)")
    db.close()
    check_generation_cache(str(tmp_path))


@pytest.mark.parametrize("passed", ['"yes"', "1", "null"])
def test_report_refuses_a_passed_flag_that_is_not_a_boolean(tmp_path, capsys, passed):
    path = tmp_path / "run.jsonl"
    path.write_text(f'{{"benchmark": "b", "problem_id": "p", "passed": {passed}}}\n')
    assert cli_main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'passed' must be true or false" in err


def test_report_names_a_binary_results_file(tmp_path, capsys):
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"\x00\x01\x02\xff binary\n")
    assert cli_main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "line 1 is not a JSON record" in err
