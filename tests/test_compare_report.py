"""`pytest-codegen report` and `pytest-codegen compare`, run through `main([...])`."""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_codegen.cli import main
from pytest_codegen.record import Record
from pytest_codegen.report import render_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T, F = True, False


def records_of(table: dict[str, list[list[str]]], benchmark: str = "humaneval", **extra: Any) -> list[dict[str, Any]]:
    """{problem: [round outcomes of sample 0, of sample 1, ...]} as the plugin writes them."""
    return [
        {
            "nodeid": f"{benchmark}::{problem}[{sample}]",
            "benchmark": benchmark,
            "problem_id": problem,
            "sample": sample,
            "pipeline": "self-debug",
            "passed": rounds[-1] == "passed",
            "outcome_class": rounds[-1],
            "round_outcomes": rounds,
            **extra,
        }
        for problem, samples in table.items()
        for sample, rounds in enumerate(samples)
    ]


def simple(table: dict[str, list[bool]], **extra: Any) -> list[dict[str, Any]]:
    """One round per item: {problem: [passed of sample 0, sample 1, ...]}."""
    return records_of({p: [["passed" if ok else "AssertionError"] for ok in s] for p, s in table.items()}, **extra)


def write(path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


def row(output: str, first: str) -> list[str]:
    """The cells of the table row that starts with `first` (tabulate separates by 2+ spaces)."""
    line = next(line for line in output.splitlines() if line.startswith(first + " "))
    return re.split(r"\s{2,}", line.strip())


# A refinement run with every round kept (early_stop False), two samples per problem.
REFINED = records_of(
    {
        "HumanEval/0": [["passed", "passed"], ["NameError", "passed"]],
        "HumanEval/1": [["AssertionError", "AssertionError"], ["passed", "AssertionError"]],
        "HumanEval/2": [["timeout", "passed"], ["no code", "no code"]],
    },
    feedback="visible",
    early_stop=False,
)

# The hand-computed pair of tests/test_stats.py: Δ = +1.5, b = 0, c = 3, p = 0.25, σ ≈ 0.9487.
A = {"p1": [T, T], "p2": [T, F], "p3": [F, F], "p4": [F, F]}
B = {"p1": [T, T], "p2": [T, T], "p3": [T, F], "p4": [T, F]}


# ----------------------------------------------------------------------------- report


def test_report_prints_the_tables_and_the_statistics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.jsonl", REFINED, tail='{"benchmark": "humaneval", "probl')  # killed mid-line
    assert main(["report", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(render_tables(map(Record.from_dict, REFINED)))  # the pytest run's tables, unchanged
    assert "net effect per round (no early stopping)" in out
    # Final outcomes: sample 0 solves HumanEval/0 and /2, sample 1 only /0.
    # pass@1 = 1.5 of 3 problems = 0.5; SD over samples = stdev(2, 1) = √0.5 ≈ 0.71 problems.
    # pass@2: /0 has 2 of 2 correct -> 1; /1 0 of 2 -> 0; /2 1 of 2 -> 1 - C(1,2)/C(2,2) = 1.
    assert "pass@k (unbiased estimator" in out
    assert row(out.split("pass@k (unbiased")[1], "humaneval") == ["humaneval", "3", "2", "0.500", "0.667"]
    cells = row(out.split("pass@1 over sample indices")[1], "humaneval")
    assert cells[:5] == ["humaneval", "3", "2", "0.500 ± 0.236", "1.50 ± 0.71"]
    assert re.fullmatch(r"\[0\.\d{3}, [01]\.\d{3}\]", cells[5])
    assert "95% bootstrap CI" in out


def test_report_of_a_one_sample_run_says_the_sd_is_not_available(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = simple({"p1": [T], "p2": [F]})
    for r in records:  # optional fields may be missing
        del r["sample"], r["round_outcomes"]
    assert main(["report", str(write(tmp_path / "run.jsonl", records))]) == 0
    out = capsys.readouterr().out
    assert row(out.split("pass@1 over sample indices")[1], "humaneval")[3:5] == ["0.500 ± n/a", "1.00 ± n/a"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such results file"),
        ("", "no records"),
        ('{"benchmark": "humaneval", "passed": true}\n', "lacks problem_id"),
    ],
)
def test_report_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    path = tmp_path / "run.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["report", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("pytest-codegen: error: ") and message in err


def test_report_plot_writes_three_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="install the plot extra: pip install 'pytest-codegen[plot]'")
    plots = tmp_path / "plots"
    assert main(["report", str(write(tmp_path / "run.jsonl", REFINED)), "--plot", str(plots)]) == 0
    out = capsys.readouterr().out
    for name in ("error_taxonomy.png", "early_stopping.png", "net_effect.png"):
        png = plots / name
        assert f"wrote {png}" in out
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_report_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # import of a None entry raises ImportError
    path = write(tmp_path / "run.jsonl", REFINED)
    assert main(["report", str(path), "--plot", str(tmp_path / "plots")]) == 2
    assert "pip install 'pytest-codegen[plot]'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- compare


def test_compare_prints_the_hand_computed_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a.jsonl", simple(A, feedback="visible"))
    b = write(tmp_path / "b.jsonl", simple(B, feedback="visible"))
    assert main(["compare", str(a), str(b)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    cells = row(out, "humaneval")
    # problems, samples, solved A, solved B, Δ, Δ pass@1, CI, b, c, p, σ
    assert cells[:7] == ["humaneval", "4", "2/2", "1.50", "3.00", "+1.50", "+0.375"]
    assert re.fullmatch(r"\[\+0\.\d{3}, \+0\.\d{3}\]", cells[7])
    assert cells[8:] == ["0", "3", "0.25", "+0.95"]
    assert "McNemar sample-wise: 8 (problem, sample) pairs" in out
    assert "SD_A = 0.71, SD_B = 1.41" in out


def test_compare_explains_a_missing_sigma(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path / "a.jsonl", simple(A))
    b = write(tmp_path / "b.jsonl", simple({"p1": [T], "p2": [F], "p3": [T], "p4": [F]}))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    cells = row(out, "humaneval")
    assert cells[2] == "2/1" and cells[8:] == ["1", "1", "1", "n/a"]
    assert "σ undefined: run B has 1 complete sample(s)" in out
    assert "McNemar per-problem: 4 problems, solved when pass rate >= 0.5" in out


@pytest.mark.parametrize(
    ("b_records", "message", "hint"),
    [
        (simple(A, benchmark="mbpp"), "different benchmarks", False),
        (simple(B, feedback="hidden"), "different feedback policies (A: visible, B: hidden)", False),
        (simple({**B, "p5": [T, T]}, feedback="visible"), "1 (p5) only in B", True),
    ],
    ids=["benchmark", "feedback", "problems"],
)
def test_compare_refuses_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], b_records: list[dict[str, Any]], message: str, hint: bool
) -> None:
    a = write(tmp_path / "a.jsonl", simple(A, feedback="visible"))
    b = write(tmp_path / "b.jsonl", b_records)
    assert main(["compare", str(a), str(b)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"pytest-codegen: error: cannot compare {a} with {b}: ")
    assert message in err
    assert ("--common" in err) is hint


def test_compare_common_restricts_and_says_how_many_were_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "a.jsonl", simple({**A, "p0": [F, F]}))
    b = write(tmp_path / "b.jsonl", simple({**B, "p5": [T, T], "p6": [T, F]}))
    assert main(["compare", str(a), str(b), "--common"]) == 0
    out = capsys.readouterr().out
    assert "restricted to the 4 problems both runs have: dropped 1 only in A and 2 only in B" in out
    assert row(out, "humaneval")[:7] == ["humaneval", "4", "2/2", "1.50", "3.00", "+1.50", "+0.375"]


def test_compare_common_does_not_override_a_feedback_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "a.jsonl", simple(A, feedback="visible"))
    b = write(tmp_path / "b.jsonl", simple(B, feedback="hidden"))
    assert main(["compare", str(a), str(b), "--common"]) == 2
    assert "different feedback policies" in capsys.readouterr().err


# ----------------------------------------------------------------------------- shards


def shards(tmp_path: Path, records: list[dict[str, Any]], *groups: set[str]) -> list[Path]:
    """`records` split by problem into one file per group, as machines running `--problems`
    shards of one run write them."""
    return [write(tmp_path / f"shard{i}.jsonl", [r for r in records if r["problem_id"] in group])
            for i, group in enumerate(groups)]


def test_report_of_a_runs_shards_is_the_report_of_the_whole_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = [{**r, "run_key": "k"} for r in REFINED]
    assert main(["report", str(write(tmp_path / "whole.jsonl", records))]) == 0
    whole = capsys.readouterr().out
    (tmp_path / "shards").mkdir()
    files = shards(tmp_path / "shards", records, {"HumanEval/0", "HumanEval/2"}, {"HumanEval/1"})
    assert main(["report", *map(str, files)]) == 0
    assert capsys.readouterr().out == whole
    gzipped = tmp_path / "shards" / "shard0.jsonl.gz"
    gzipped.write_bytes(gzip.compress(files[0].read_bytes()))  # a gzipped copy of a file present is left out
    assert main(["report", str(tmp_path / "shards")]) == 0
    assert capsys.readouterr().out == whole
    files[0].unlink()  # now the gzipped file is the shard
    assert main(["report", str(tmp_path / "shards")]) == 0
    assert capsys.readouterr().out == whole


def test_compare_reads_each_run_from_the_directory_of_its_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = write(tmp_path / "a.jsonl", simple(A, feedback="visible", run_key="a"))
    b = write(tmp_path / "b.jsonl", simple(B, feedback="visible", run_key="b"))
    assert main(["compare", str(a), str(b)]) == 0
    whole = capsys.readouterr().out.split("\n", 2)[2]
    for name, path in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        shards(tmp_path / name, [json.loads(line) for line in path.read_text().splitlines()],
               {"p1"}, {"p2", "p3"}, {"p4"})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out.split("\n", 2)[2] == whole


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"HumanEval/1", "HumanEval/2"},
         "humaneval HumanEval/2 sample 0 is also in {first}: shards of a run must not overlap"),
        ({"HumanEval/1"}, "holds records of another run than {first} (run key other against k: other settings)"),
        (None, "given twice"),
    ],
    ids=["overlap", "mixed-runs", "twice"],
)
def test_shards_that_are_not_one_run_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], second: set[str] | None, message: str
) -> None:
    records = [{**r, "run_key": "k"} for r in REFINED]
    first = write(tmp_path / "first.jsonl", [r for r in records if r["problem_id"] != "HumanEval/1"])
    if second is None:
        other = first
    else:
        run_key = "other" if "another run" in message else "k"
        other = write(tmp_path / "second.jsonl",
                      [{**r, "run_key": run_key} for r in records if r["problem_id"] in second])
    for command in (["report", str(first), str(other)], ["compare", str(tmp_path), str(first)]):
        if second is None and command[0] == "compare":
            continue
        assert main(command) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err.startswith(f"pytest-codegen: error: {other}: ") and message.format(first=first) in err


TOY_SUITE = """
import pytest
from pytest_codegen import Problem, TestCase

PROBLEMS = [Problem(id=f"toy/{i}", benchmark="toy", entry_point="f", prompt="f()", canonical_solution="",
                    tests=(TestCase("t0", "assert f() == 1"),)) for i in range(6)]


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_toy(problem, solution):
    solution.verify()
"""


def test_shards_of_a_pytest_run_split_with_problems_merge_into_the_whole_run(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_toy=TOY_SUITE)
    problems = [f"toy/{i}" for i in range(6)]
    args = ["--pipeline=null", "--samples=2", "-p", "no:cacheprovider", "-p", "no:terminal"]
    pytester.runpytest(*args, "--codegen-results=whole.jsonl")
    for i, part in enumerate((problems[:2], problems[2:])):
        pytester.runpytest(*args, f"--problems={','.join(part)}", f"--codegen-results=shards/{i}.jsonl")
    capsys.readouterr()  # the runs' output
    assert main(["report", str(pytester.path / "whole.jsonl")]) == 0
    whole = capsys.readouterr().out
    assert "toy          12       0         0.000     12" in whole
    assert main(["report", str(pytester.path / "shards")]) == 0
    assert capsys.readouterr().out == whole
    # A shard of another run (other settings) is refused.
    pytester.runpytest(*args, "--exec-memory=512", "--codegen-results=shards/2.jsonl")
    capsys.readouterr()
    assert main(["report", str(pytester.path / "shards")]) == 2
    assert "holds records of another run" in capsys.readouterr().err
