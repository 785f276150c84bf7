"""`pytest-codegen study --verify`: finished rows re-run by their printed commands and compared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_codegen.cli import main
from pytest_codegen.record import Record
from pytest_codegen.study import Cell
from pytest_codegen.study_verify import compare_rerun, verify_cells


def record(problem: str, rounds: list[str], *, program: str = "def f(): pass", gen_seconds: float = 0.0) -> dict:
    return {"nodeid": f"x::test[{problem}]", "run_key": "k", "benchmark": "toy", "problem_id": problem,
            "sample": 0, "pipeline": "refine", "passed": rounds[-1] == "passed", "outcome_class": rounds[-1],
            "round_outcomes": rounds, "program": program, "timing": {"gen_seconds": gen_seconds}}


def records(*dicts: dict) -> list[Record]:
    return [Record.from_dict(d) for d in dicts]


def test_a_rerun_with_the_same_outcomes_in_every_round_reproduces_the_row() -> None:
    recorded = records(record("T/1", ["AssertionError", "passed"], gen_seconds=4.0), record("T/2", ["passed"]))
    check = compare_rerun(recorded, records(record("T/1", ["AssertionError", "passed"]), record("T/2", ["passed"])))
    assert check.reproduced and check.items == 2 and not check.generated
    assert check.describe() == "2 items: reproduced"


def test_a_rerun_names_what_differs() -> None:
    recorded = records(record("T/1", ["AssertionError", "passed"]), record("T/2", ["passed"]),
                       record("T/3", ["NameError"]))
    rerun = records(record("T/1", ["AssertionError", "AssertionError"], gen_seconds=2.5),
                    record("T/2", ["passed"], program="def f(): return 1"))
    check = compare_rerun(recorded, rerun)
    assert not check.reproduced
    assert (check.missing, check.passes_differ, check.outcomes_differ, check.programs_differ, check.generated) == (
        ("T/3",), ("T/1",), ("T/1",), ("T/2",), ("T/1",))
    assert check.describe() == ("3 items: NOT reproduced; no verdict 1 (T/3); passed in one run only 1 (T/1); "
                                "other round outcomes 1 (T/1); another final program 1 (T/2); generated anew 1 (T/1)")


def test_a_final_program_alone_may_differ() -> None:
    check = compare_rerun(records(record("T/1", ["passed"])), records(record("T/1", ["passed"], program="x = 1")))
    assert check.reproduced and check.programs_differ == ("T/1",)


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """Stands in for `python -m pytest ...`: writes $RERUN (a prepared results file) to the
    command's --codegen-results, and logs the command."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n"
                      f'echo "$@" >> {tmp_path / "commands.log"}\n'
                      'for arg; do case "$arg" in --codegen-results=*) out="${arg#*=}";; esac; done\n'
                      'cp "$RERUN" "$out"; exit 1\n')
    script.chmod(0o755)
    return script


def write(path: Path, dicts: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in dicts))


def test_verify_reruns_each_finished_row_by_its_printed_command(
        tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out, scratch = tmp_path / "results", tmp_path / "scratch"
    row = [record("T/1", ["AssertionError", "passed"]), record("T/2", ["passed"])]
    finished, unfinished = Cell("m", "toy", "refine"), Cell("m", "humaneval", "single")  # humaneval: 2 of 164
    write(finished.results_path(out), row)
    write(unfinished.results_path(out), row)
    rerun = tmp_path / "rerun.jsonl"
    monkeypatch.setenv("RERUN", str(rerun))

    write(rerun, row)
    [(cell, check)] = verify_cells([finished, unfinished], out, scratch, extra=["-x"], python=str(fake_python))
    assert cell == finished and check.reproduced
    logged = (tmp_path / "commands.log").read_text().split()
    assert logged == ["-m", *finished.command(scratch, ["-x"])]  # the printed command, its own results file
    assert "m humaneval single: not finished, not checked" in capsys.readouterr().out

    write(rerun, [row[0], record("T/2", ["AssertionError"])])
    [(_, check)] = verify_cells([finished], out, scratch, python=str(fake_python))
    assert check.outcomes_differ == check.passes_differ == ("T/2",) and not check.reproduced
    assert "NOT reproduced; passed in one run only 1 (T/2); other round outcomes 1 (T/2)" in capsys.readouterr().out


@pytest.mark.parametrize("other", ["--report-only", "--dry-run"])
def test_verify_is_a_run_not_a_report(other: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "--verify", other]) == 2
    error = capsys.readouterr().err
    assert "--verify re-runs the finished rows: it does not go with --report-only or --dry-run" in error


def test_a_failure_of_another_class_is_not_a_reproduction() -> None:
    # HumanEval/123 of the 0.5B single row: `timeout` when recorded, `AssertionError` (its first
    # failing test's class) since the sandbox classes a failure by its first failing test.
    check = compare_rerun(records(record("T/1", ["timeout"])), records(record("T/1", ["AssertionError"])))
    assert not check.reproduced and check.outcomes_differ == ("T/1",) and not check.passes_differ


def test_verify_reruns_on_a_copy_of_the_cache(
        tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_codegen.models.backend import GenerationRequest, GenerationResponse
    from pytest_codegen.models.cache import GenerationCache

    out, scratch, cache = tmp_path / "results", tmp_path / "scratch", tmp_path / "cache"
    cell = Cell("m", "toy", "refine")
    write(cell.results_path(out), [record("T/1", ["passed"])])
    monkeypatch.setenv("RERUN", str(cell.results_path(out)))
    request = GenerationRequest(prompt="def f():", temperature=0.0, max_tokens=8)
    made = GenerationCache(cache)
    made.put("model-a", request, GenerationResponse("    return 1", 3, 2, 0.5, "stop"))
    made.close()
    [(_, check)] = verify_cells([cell], out, scratch, cache=cache, python=str(fake_python))
    assert check.reproduced
    assert f"--codegen-cache={scratch / 'cache'}" in (tmp_path / "commands.log").read_text().split()
    copy = GenerationCache(scratch / "cache")
    assert copy.get("model-a", request).text == "    return 1"
    copy.close()
