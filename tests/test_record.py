"""pytest_codegen.record: the one record type, read back from files of this and earlier versions."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from pytest_codegen.cli import main
from pytest_codegen.outcome import ExecutionResult, TestResult
from pytest_codegen.pipelines.base import Round, Solution
from pytest_codegen.problems import Problem, TestCase
from pytest_codegen.record import Record, RecordError
from pytest_codegen.results import ResultsWriter, read_records

REPO = Path(__file__).resolve().parent.parent
OLD = Path(__file__).parent / "data" / "results-89b9c35"  # written by the version before Record
STUDY_RUNS = sorted((REPO / "docs" / "results" / "runs").glob("*/*.jsonl.gz"))


def json_lines(path: Path) -> list[dict]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as lines:
        return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.parametrize("path", [*sorted(OLD.glob("*.jsonl")), *STUDY_RUNS], ids=lambda p: p.name)
def test_records_of_the_previous_version_read_back_unchanged(path: Path) -> None:
    originals = json_lines(path)
    records = list(read_records(path))
    assert len(records) == len(originals) > 0
    for original, record in zip(originals, records):
        written = record.to_dict()
        if "run_key" in original:  # the plugin's: every key, in the order it wrote them
            assert list(written.items()) == list(original.items())
        else:  # evolve's held-out records: optional fields are filled in
            assert {k: written[k] for k in original} == original
        assert Record.from_dict(written) == record


@pytest.mark.parametrize("name", ["reference", "null-2-samples", "holdout-champion"])
def test_report_prints_what_the_previous_version_printed(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(OLD / f"{name}.jsonl")]) == 0
    assert capsys.readouterr().out == (OLD / f"report-{name}.txt").read_text()


def test_compare_prints_what_the_previous_version_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(OLD / "holdout-baseline.jsonl"), str(OLD / "holdout-champion.jsonl")]) == 0
    expected = (OLD / "compare-holdout.txt").read_text().split("\n", 3)[3]  # after the A = / B = lines
    assert capsys.readouterr().out.split("\n", 3)[3] == expected


def test_from_dict_fills_optional_fields_and_names_missing_ones() -> None:
    done = Record.from_dict({"benchmark": "b", "problem_id": "p", "outcome_class": "passed"})
    assert (done.sample, done.passed, done.verdicts) == (0, True, ("passed",))
    failed = Record.from_dict({"benchmark": "b", "problem_id": 7, "passed": False, "outcome_class": "passed"})
    assert (failed.problem_id, failed.outcome_class) == ("7", "unknown")
    with pytest.raises(RecordError, match="x::y lacks problem_id"):
        Record.from_dict({"benchmark": "b", "passed": True, "nodeid": "x::y"})
    with pytest.raises(RecordError, match="passed"):
        Record.from_dict({"benchmark": "b", "problem_id": "p"})
    with pytest.raises(RecordError, match="'passed' must be true or false"):
        Record.from_dict({"benchmark": "b", "problem_id": "p", "passed": "yes"})
    with pytest.raises(RecordError, match="'sample' must be a whole number"):
        Record.from_dict({"benchmark": "b", "problem_id": "p", "passed": True, "sample": -1})
    with pytest.raises(RecordError, match="x::y"):
        Record.from_dict({"benchmark": "b", "problem_id": "p", "passed": True, "nodeid": "x::y", "tests": [3]})


def built_record() -> Record:
    problem = Problem(id="toy/add", benchmark="toy", entry_point="add", prompt="add(a, b)",
                      tests=(TestCase("t0", "assert add(1, 2) == 3"),), canonical_solution="")
    rounds = [Round(0, "generate", "def add(a, b): return a - b", "AssertionError", model="m", completion_tokens=9),
              Round(1, "refine", "def add(a, b): return a + b", "passed", model="m", seconds=1.5)]
    solution = Solution(problem, rounds[-1].program, "refine", 2, rounds,
                        {"feedback": "visible", "models": ["m"], "tokens": 30, "gen_seconds": 1.5})
    result = ExecutionResult("passed", tests=(TestResult("t0", True),), seconds=0.01234)
    return Record.build(solution, result, nodeid="t::x", round_verdicts=["AssertionError", "passed"],
                        run_key="k", sandbox={"isolation": "test", "uid": None})


def test_a_built_record_is_written_and_read_back_equal(tmp_path: Path) -> None:
    record = built_record()
    assert (record.item, record.verdicts, record.feedback, record.tokens) == (
        ("toy", "toy/add", 2), ("AssertionError", "passed"), "visible", 30)
    assert record.timing == {"exec_seconds": 0.0123, "gen_seconds": 1.5}
    assert "gen_seconds" not in record.properties
    writer = ResultsWriter(tmp_path / "r.jsonl")
    writer.write(record)
    writer.close()
    assert list(read_records(tmp_path / "r.jsonl")) == [record]
    facts = record.without_run_facts()
    assert "timing" not in facts and "sandbox" not in facts and "seconds" not in facts["rounds"][1]


def test_a_lone_surrogate_in_a_record_is_written_as_an_escape_and_read_back(tmp_path: Path) -> None:
    """Text no UTF-8 file can hold (a lone surrogate) must not stop the run that writes it."""
    record = dataclasses.replace(built_record(), program="x = 1  # \ud800\n")
    assert "\\ud800" in record.to_json() and "é" in dataclasses.replace(record, program="é").to_json()
    writer = ResultsWriter(tmp_path / "r.jsonl")
    writer.write(record)
    writer.close()
    assert list(read_records(tmp_path / "r.jsonl")) == [record]


def test_the_line_of_a_built_record_is_written_as_the_record_is(tmp_path: Path) -> None:
    """The controller writes the line an xdist worker sent (Record.to_json) as it came: it must
    be the one the record itself gives, and read back as the record."""
    record = built_record()
    line = record.to_json()
    assert Record.from_dict(json.loads(line)) == record
    for name, what in (("record.jsonl", record), ("line.jsonl", line)):
        writer = ResultsWriter(tmp_path / name)
        writer.write(what)
        writer.close()
    assert (tmp_path / "line.jsonl").read_bytes() == (tmp_path / "record.jsonl").read_bytes()
    assert list(read_records(tmp_path / "line.jsonl")) == [record]
