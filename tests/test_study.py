"""`pytest-codegen study`: the matrix of cells, their commands, resuming from committed copies,
and the report computed from results files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from pytest_codegen.cli import main
from pytest_codegen.record import Record
from pytest_codegen.study import (
    CACHE_EXPORT,
    STUDY_PLAN,
    Cell,
    cache_dir,
    cells_for,
    compress_results,
    restore_results,
)
from pytest_codegen.study_report import failure_breakdown, render_report


def record(problem: str, rounds: list[str], *, tokens: int = 100, first_tokens: int = 80, message: str = "",
           feedback: str = "visible") -> dict:
    final = rounds[-1]
    return {
        "nodeid": f"x::test[{problem}]", "run_key": "k", "benchmark": "humaneval", "problem_id": problem,
        "sample": 0, "pipeline": "refine", "passed": final == "passed", "outcome_class": final,
        "round_outcomes": rounds, "message": message, "tokens": tokens, "feedback": feedback,
        "rounds": [{"index": 0, "completion_tokens": first_tokens}],
        "timing": {"exec_seconds": 0.5, "gen_seconds": 9.5},
    }


def write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_plan_covers_the_required_cells() -> None:
    plan = set(STUDY_PLAN)
    rows = ["single", "refine", "refine-hidden", "refine-analyzer", "text-critic", "refine-no-early-stop"]
    for benchmark in ("humaneval", "mbpp"):
        assert set(cells_for(["qwen-coder-0.5b"], [benchmark], rows)) <= plan
        assert Cell("qwen-coder-0.5b", benchmark, "split", "qwen-coder-1.5b") in plan
    assert set(cells_for(["qwen-coder-1.5b"], ["humaneval"], ["single", "refine", "refine-hidden"])) <= plan
    assert len(plan) == len(STUDY_PLAN)


@pytest.mark.parametrize(("refiner_row", "control_row", "feedback"), [
    ("refine-hidden-sampled", "resample-hidden", "hidden"),
    ("refine-sampled", "resample", "visible"),
])
def test_the_sampled_refiner_and_its_resampling_control_differ_only_in_what_a_round_shows(
    refiner_row: str, control_row: str, feedback: str
) -> None:
    sampled, control = (Cell("m", "humaneval", row).command(Path("out")) for row in (refiner_row, control_row))
    assert set(sampled) ^ set(control) == {"--pipeline=refine", "--pipeline=resample",
                                           f"--codegen-results={Path(f'out/runs/m/humaneval-{refiner_row}.jsonl')}",
                                           f"--codegen-results={Path(f'out/runs/m/humaneval-{control_row}.jsonl')}"}
    assert {"--temperature=0", "--refiner-temperature=0.2", f"--feedback={feedback}"} <= set(sampled)
    assert {Cell("qwen-coder-0.5b", "humaneval", refiner_row), Cell("qwen-coder-0.5b", "humaneval", control_row)} \
        <= set(STUDY_PLAN)


def test_commands_are_plain_greedy_pytest_commands(tmp_path: Path) -> None:
    cell = Cell("m", "mbpp", "refine-hidden")
    command = cell.command(tmp_path)
    assert command[:2] == ["pytest", "benchmarks/mbpp"]
    assert {"--pipeline=refine", "--model=m", "--feedback=hidden", "--temperature=0"} <= set(command)
    assert f"--codegen-results={tmp_path}/runs/m/mbpp-refine-hidden.jsonl" in command
    split = Cell("small", "humaneval", "split", "big").command(tmp_path)
    assert {"--generator=small", "--refiner=big"} <= set(split)
    with pytest.raises(ValueError, match="unknown study row"):
        cells_for(["m"], ["mbpp"], ["nope"])


def test_report_pairs_each_row_with_single(tmp_path: Path) -> None:
    single = [record(f"HumanEval/{i}", ["passed" if i < 4 else "AssertionError"]) for i in range(10)]
    single[9] = record("HumanEval/9", ["NameError"], message="name 'f' is not defined")
    refine = [record(f"HumanEval/{i}", ["passed"] if i < 4 else ["AssertionError", "passed"] if i < 6
                     else ["AssertionError", "AssertionError"]) for i in range(9)]
    refine.append(record("HumanEval/9", ["NameError", "passed"]))
    cells = [Cell("m", "humaneval", row) for row in ("single", "refine", "refine-hidden")]
    write(cells[0].results_path(tmp_path), single)
    write(cells[1].results_path(tmp_path), refine)
    write(cells[2].results_path(tmp_path), [{**r, "feedback": "hidden"} for r in refine[:4]])
    text = render_report(tmp_path, cells)
    lines = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| m ")}
    assert "0.400" in lines["single"] and "0.700" in lines["refine"]
    assert "10 of 164 (unfinished)" in lines["single"]  # HumanEval has 164 problems
    assert "+3 (+0.300)" in lines["refine"]
    assert "AssertionError 2/5, NameError 1/1" in lines["refine"]
    assert "0.25" in lines["refine"]  # exact McNemar p for 3 discordant pairs all one way
    # single showed the model no tests, so it pairs with a hidden-feedback row too
    assert "+0 (+0.000) on 4" in lines["refine-hidden"] and "4 of 164 (unfinished)" in lines["refine-hidden"]
    assert "not run yet" not in text
    assert "- `refine-hidden`: as refine, but the model sees the scoring tests" in text
    assert "- `split`" not in text  # only the rows of the cells reported
    assert "not run yet" in render_report(tmp_path, [*cells, Cell("m", "humaneval", "text-critic")])
    # 10 items x 10 s over 4 / 7 solved; 100 tokens each.
    assert "| 250 " in lines["single"] and "| 25.0 " in lines["single"]


def test_cost_counts_rounds_answered_from_the_cache(tmp_path: Path) -> None:
    """A refine row's first program comes from the single row's cache entry: it still cost its
    generation time (not the record's `gen_seconds`, which leaves cached rounds out)."""
    rounds = [{"index": 0, "role": "generate", "seconds": 6.0, "cached": True},
              {"index": 1, "role": "refine", "seconds": 3.5, "cached": False}]
    solved = {**record("HumanEval/0", ["AssertionError", "passed"]), "rounds": rounds,
              "timing": {"exec_seconds": 0.5, "gen_seconds": 3.5}}
    cell = Cell("m", "humaneval", "refine")
    write(cell.results_path(tmp_path), [solved])
    line = next(line for line in render_report(tmp_path, [cell]).splitlines() if line.startswith("| m "))
    assert "| 10.0 " in line


def test_breakdown_separates_harness_faults_from_wrong_answers() -> None:
    records = [
        record("a", ["passed"]),
        record("b", ["no code"]),
        record("c", ["SyntaxError"], first_tokens=512),
        record("d", ["NameError"], message="NameError: name 'solve' is not defined"),
        record("e", ["NameError"], message="NameError: name 'math' is not defined"),
        record("f", ["AssertionError"]),
    ]
    counts = failure_breakdown([Record.from_dict(r) for r in records], {"d": "solve", "e": "solve"})
    assert counts == {"passed": 1, "no code extracted": 1, "truncated at max tokens": 1,
                      "entry point missing or misnamed": 1, "NameError (undefined helper or import)": 1,
                      "wrong answer (AssertionError)": 1}


def test_report_counts_refined_programs_that_changed(tmp_path: Path) -> None:
    def refined(problem: str, programs: list[str], verdicts: list[str]) -> dict:
        roles = ["generate"] + ["refine"] * (len(programs) - 1)
        return {**record(problem, verdicts),
                "rounds": [{"index": i, "role": role, "program": text, "completion_tokens": 80}
                           for i, (role, text) in enumerate(zip(roles, programs))]}

    records = [
        refined("HumanEval/0", ["def f(): return 1"], ["passed"]),
        refined("HumanEval/1", ["def f(): return 2", "def f(): return 2\n"], ["AssertionError"] * 2),
        refined("HumanEval/2", ["def f(): return 3", "def f(): return 3", "def f(): return 4"],
                ["AssertionError", "AssertionError", "passed"]),
        refined("HumanEval/3", ["def f(): return 5"], ["AssertionError"]),  # nothing to feed back
    ]
    cell = Cell("m", "humaneval", "refine")
    write(cell.results_path(tmp_path), records)
    line = next(line for line in render_report(tmp_path, [cell]).splitlines() if line.startswith("| m "))
    assert "| 2 refined, 1 changed " in line  # trailing whitespace is the same program


def test_breakdown_puts_the_technical_reports_figure_next_to_the_measured_one(tmp_path: Path) -> None:
    cell = Cell("qwen-coder-0.5b", "humaneval", "single")
    write(cell.results_path(tmp_path), [record(f"HumanEval/{i}", ["passed" if i < 3 else "AssertionError"])
                                        for i in range(4)])
    lines = render_report(tmp_path, [cell]).splitlines()
    assert any(line.startswith("| pass@1 here (%)") and "75.0" in line for line in lines)
    assert any(line.startswith("| pass@1, technical report (%)") and "61.6" in line for line in lines)


def test_results_travel_compressed_and_resume(tmp_path: Path) -> None:
    cell = Cell("m", "humaneval", "single")
    path = cell.results_path(tmp_path)
    write(path, [record("HumanEval/0", ["passed"])])
    compress_results([cell], tmp_path)
    first = path.with_name(path.name + ".gz").read_bytes()
    compress_results([cell], tmp_path)
    assert path.with_name(path.name + ".gz").read_bytes() == first  # byte-stable: no churn in git
    original = path.read_bytes()
    path.unlink()
    restore_results(path)  # a fresh checkout has only the .gz
    assert path.read_bytes() == original == gzip.decompress(first)


def test_cli_dry_run_and_report_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "--out", str(tmp_path), "--models", "m", "--benchmarks", "mbpp",
                 "--rows", "single,refine", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("[1/2] (not started) pytest benchmarks/mbpp --pipeline=single --model=m")
    assert not (tmp_path / "README.md").exists()
    assert main(["study", "--out", str(tmp_path), "--rows", "nope"]) == 2
    assert "unknown row(s) nope" in capsys.readouterr().err
    assert main(["study", "--out", str(tmp_path), "--models", "m", "--rows", "single", "--report-only"]) == 0
    assert "# Study results" in (tmp_path / "README.md").read_text()


def test_each_cell_line_says_how_far_the_cell_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """From its results file, or from the committed gzipped copy a fresh checkout has."""
    from pytest_codegen.study import compress_results

    partial, finished = Cell("m", "mbpp", "single"), Cell("m", "humaneval", "single")
    write(partial.results_path(tmp_path), [record(f"Mbpp/{i}", ["passed"]) for i in range(3)])
    write(finished.results_path(tmp_path), [record(f"HumanEval/{i}", ["passed"]) for i in range(164)])
    compress_results([partial], tmp_path)
    partial.results_path(tmp_path).unlink()
    assert main(["study", "--out", str(tmp_path), "--models", "m", "--benchmarks", "humaneval,mbpp",
                 "--rows", "single,refine", "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = {line.split(" pytest ")[1].split()[0]: line.split(") ")[0].split("(")[1]
                for line in lines if "--pipeline=single" in line}
    assert progress == {"benchmarks/humaneval": "finished", "benchmarks/mbpp": "3 of 427 verdicts"}
    assert sum("(not started)" in line for line in lines) == 2  # the refine rows


def test_report_names_the_machine_and_links_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="figures need the [plot] extra")
    from pytest_codegen.study import machine_facts, record_machine

    cells = [Cell("m", "humaneval", "single"), Cell("m", "humaneval", "refine")]
    write(cells[0].results_path(tmp_path), [record("HumanEval/0", ["AssertionError"])])
    write(cells[1].results_path(tmp_path), [record("HumanEval/0", ["AssertionError", "passed"])])
    record_machine(cells[1].results_path(tmp_path))
    record_machine(cells[1].results_path(tmp_path))  # the same machine is listed once
    text = render_report(tmp_path, cells)
    facts = machine_facts()
    assert f"- {facts['cpu']}, {facts['cores']} cores, {facts['build']}" in text
    assert text.count(facts["build"]) == 1
    figures = sorted((tmp_path / "figures" / "m-humaneval-refine").glob("*.png"))
    assert len(figures) == 3 and all(f"({f.relative_to(tmp_path)})" in text for f in figures)


def test_run_cells_tells_a_finished_cell_from_an_unfinished_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cell whose items all have verdicts exits 5 (nothing collected): finished, and it does
    not list this machine among those the cell ran on; a cell that wrote verdicts does."""
    from pytest_codegen.study import run_cells

    fake_pytest = tmp_path / "fake-python"
    fake_pytest.write_text("#!/bin/sh\n"
                           'for arg; do case "$arg" in --codegen-results=*) out="${arg#*=}";; esac; done\n'
                           'if [ -s "$out" ]; then exit 5; fi\n'
                           'echo "{}" > "$out"; exit 2\n')
    fake_pytest.chmod(0o755)
    cell = Cell("m", "humaneval", "single")
    machines = cell.results_path(tmp_path).with_suffix(".machines.json")
    run_cells([cell], tmp_path, python=str(fake_pytest))
    assert "exit status 2: this cell did not finish" in capsys.readouterr().out
    assert machines.is_file()
    machines.unlink()
    statuses = run_cells([cell], tmp_path, python=str(fake_pytest))
    assert statuses == [(cell, 5)]
    assert "every item already has a verdict" in capsys.readouterr().out
    assert not machines.exists()


def test_the_study_loads_its_committed_generations_into_the_cache(tmp_path: Path) -> None:
    from pytest_codegen.models.backend import GenerationRequest, GenerationResponse
    from pytest_codegen.models.cache import GenerationCache

    out, theirs, ours = tmp_path / "results", tmp_path / "their-cache", tmp_path / "our-cache"
    out.mkdir()
    made = GenerationCache(theirs)
    request = GenerationRequest(prompt="def f():", temperature=0.0, max_tokens=8)
    made.put("model-a", request, GenerationResponse("    return 1", 3, 2, 0.5, "stop"))
    made.export_to(out / CACHE_EXPORT)
    made.close()
    args = ["study", "--out", str(out), "--models", "m", "--rows", "single", "--report-only",
            "--", f"--codegen-cache={ours}"]
    assert main(args) == 0
    assert GenerationCache(ours).get("model-a", request).text == "    return 1"


def test_refreshing_the_export_keeps_the_generations_the_cache_lacks(tmp_path: Path) -> None:
    from pytest_codegen.models.backend import GenerationRequest, GenerationResponse
    from pytest_codegen.models.cache import GenerationCache
    from pytest_codegen.study import export_cache

    out, old, new = tmp_path / "results", tmp_path / "old-cache", tmp_path / "new-cache"
    out.mkdir()
    first = GenerationRequest(prompt="def f():", temperature=0.0, max_tokens=8)
    second = GenerationRequest(prompt="def g():", temperature=0.0, max_tokens=8)
    made = GenerationCache(old)
    made.put("model-a", first, GenerationResponse("    return 1", 3, 2, 0.5, "stop"))
    made.export_to(out / CACHE_EXPORT)
    made.close()
    fresh = GenerationCache(new)  # a cache that never saw the first generation
    fresh.put("model-a", second, GenerationResponse("    return 2", 3, 2, 0.5, "stop"))
    fresh.close()
    export_cache(new, out)
    reader = GenerationCache(tmp_path / "reader")
    assert reader.import_from(out / CACHE_EXPORT) == 2
    assert reader.get("model-a", first).text == "    return 1"
    assert reader.get("model-a", second).text == "    return 2"


def test_generated_rounds_missing_from_the_export_are_named(tmp_path: Path) -> None:
    from pytest_codegen.models.backend import GenerationRequest, GenerationResponse
    from pytest_codegen.models.cache import GenerationCache
    from pytest_codegen.study import unexported_generations

    kept = GenerationRequest(prompt="def f():", temperature=0.0, max_tokens=8, seed=7)
    lost = GenerationRequest(prompt="def g():", temperature=0.0, max_tokens=8, seed=7)
    cache = GenerationCache(tmp_path / "cache")
    cache.put("model-a", kept, GenerationResponse("    return 1", 3, 2, 0.5, "stop"))
    cache.export_to(tmp_path / CACHE_EXPORT)
    cache.close()
    cell = Cell("m", "humaneval", "refine")

    def rounds(*steps: tuple[GenerationRequest, bool]) -> list[dict]:
        return [{"index": i, "request_hash": request.digest()[:16], "cached": cached}
                for i, (request, cached) in enumerate(steps)]

    write(cell.results_path(tmp_path), [
        {**record("HumanEval/0", ["passed"]), "rounds": rounds((kept, False))},
        {**record("HumanEval/1", ["passed"]), "rounds": rounds((kept, True), (lost, True))},  # answered by the cache
        {**record("HumanEval/2", ["AssertionError", "passed"]), "rounds": rounds((kept, True), (lost, False))},
    ])
    assert unexported_generations([cell], tmp_path) == {cell: ["HumanEval/2"]}


def test_the_study_finds_the_cache_its_cells_use_as_pytest_resolves_it(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "suite").mkdir(parents=True)
    assert cache_dir([str(project / "suite")]) == project / "suite" / ".codegen-cache"  # rootdir
    (project / "pytest.ini").write_text("[pytest]\ncodegen_cache = shared-cache\n")
    assert cache_dir([str(project / "suite")]) == project / "shared-cache"  # the ini file's key
    assert cache_dir([str(project / "suite"), "--codegen-cache=/x"]) == Path("/x")  # overrides it
    assert cache_dir([str(project / "suite"), "--no-codegen-cache"]) is None
    (project / "pytest.ini").write_text("[pytest]\ncodegen_cache = off\n")
    assert cache_dir([str(project / "suite")]) is None
    with pytest.raises(ValueError, match="pytest refused"):
        cache_dir([str(project / "suite"), "--no-such-option"])
    with pytest.raises(ValueError, match="pytest refused.*exec.timeout"):  # the plugin's checks too
        cache_dir([str(project / "suite"), "--exec-timeout=-5"])


def test_breakdown_says_when_it_cannot_tell_misnamed_functions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CODEGEN_MBPP_DATA", str(tmp_path / "nowhere.json"))
    cell = Cell("qwen-coder-0.5b", "mbpp", "single")
    misnamed = record("Mbpp/20", ["NameError"], message="NameError: name 'is_woodall' is not defined")
    write(cell.results_path(tmp_path), [{**misnamed, "benchmark": "mbpp"}])
    report = render_report(tmp_path, [cell])
    assert "mbpp's entry points could not be loaded" in report and "nowhere.json" in report
    assert any(line.startswith("| NameError (undefined helper or import)") and "| 1 " in line
               for line in report.splitlines())


def test_option_values_are_read_as_pytest_reads_them() -> None:
    from pytest_codegen.study import option_value

    assert option_value(["-q", "--mbpp-data", "a.json"], "--mbpp-data") == "a.json"
    assert option_value(["--mbpp-data=a.json", "--mbpp-data=b.json"], "--mbpp-data") == "b.json"
    assert option_value(["--mbpp-data-x=a"], "--mbpp-data") is None
    assert option_value(["--mbpp-data"], "--mbpp-data") is None


def test_a_row_with_other_first_programs_is_compared_with_its_own(tmp_path: Path) -> None:
    """MBPP with hidden feedback shows every scoring test in the generation prompt: its first
    programs are not single's, so its Δ is refinement over its own first programs."""
    def item(problem: str, programs: list[str], verdicts: list[str], feedback: str) -> dict:
        roles = ["generate"] + ["refine"] * (len(programs) - 1)
        return {**record(problem, verdicts, feedback=feedback),
                "rounds": [{"index": i, "role": role, "program": text} for i, (role, text) in
                           enumerate(zip(roles, programs))]}

    single = [item(f"HumanEval/{i}", [f"v{i}"], ["passed" if i < 5 else "AssertionError"], "visible")
              for i in range(10)]
    # first programs differ: 3 of them pass (single: 5); refinement fixes 2 more
    hidden = [item(f"HumanEval/{i}", [f"h{i}"], ["passed"], "hidden") for i in range(3)]
    hidden += [item(f"HumanEval/{i}", [f"h{i}", f"r{i}"], ["AssertionError", "passed"], "hidden") for i in (3, 4)]
    hidden += [item(f"HumanEval/{i}", [f"h{i}", f"r{i}"], ["AssertionError"] * 2, "hidden") for i in range(5, 10)]
    same = [item(f"HumanEval/{i}", [f"v{i}"], ["passed" if i < 5 else "AssertionError"], "visible")
            for i in range(10)]
    cells = [Cell("m", "humaneval", row) for row in ("single", "refine-hidden", "refine")]
    for cell, records in zip(cells, (single, hidden, same)):
        write(cell.results_path(tmp_path), records)
    lines = {line.split("|")[2].strip(): line for line in render_report(tmp_path, cells).splitlines()
             if line.startswith("| m ")}
    assert "+2 (+0.200) vs its own first programs (3 solved)" in lines["refine-hidden"]
    assert "+0 (+0.000) " in lines["refine"] and "own first" not in lines["refine"]


def test_the_report_pairs_each_sampled_refiner_with_its_resampling_control(tmp_path: Path) -> None:
    refiner, control = Cell("m", "humaneval", "refine-sampled"), Cell("m", "humaneval", "resample")
    write(refiner.results_path(tmp_path), [record("HumanEval/0", ["AssertionError", "passed"]),
                                           record("HumanEval/1", ["AssertionError"] * 4),
                                           record("HumanEval/2", ["passed"])])
    write(control.results_path(tmp_path), [record("HumanEval/0", ["AssertionError"] * 4),
                                           record("HumanEval/1", ["AssertionError", "TypeError", "passed"]),
                                           record("HumanEval/2", ["passed"])])
    assert "Repairing against sampling again" not in render_report(tmp_path, [refiner])  # no control yet
    text = render_report(tmp_path, [refiner, control])
    line = next(line for line in text.splitlines() if "refine-sampled / resample" in line)
    assert [cell.strip() for cell in line.strip("|").split("|")] == [
        "m", "humaneval", "refine-sampled / resample", "3", "2 / 2", "+0", "1 / 1", "1"]


def test_the_split_row_is_compared_with_single_and_with_the_larger_model_alone(tmp_path: Path) -> None:
    """Δ against the generator's `single` in the main table, as every row; the role split
    against the larger model's `refine` in a table of its own, once that row has results."""
    single = Cell("small", "humaneval", "single")
    split = Cell("small", "humaneval", "split", "big")
    alone = Cell("big", "humaneval", "refine")
    write(single.results_path(tmp_path), [record("HumanEval/0", ["AssertionError"]),
                                          record("HumanEval/1", ["AssertionError"]),
                                          record("HumanEval/2", ["passed"])])
    write(split.results_path(tmp_path), [record("HumanEval/0", ["AssertionError", "passed"]),
                                         record("HumanEval/1", ["AssertionError"] * 4),
                                         record("HumanEval/2", ["passed"])])
    text = render_report(tmp_path, [single, split])
    line = next(line for line in text.splitlines() if "| split→big" in line)
    assert "+1 (+0.333)" in line
    assert "The role split" not in text  # the larger model's own row has no results yet
    write(alone.results_path(tmp_path), [record("HumanEval/0", ["passed"]),
                                         record("HumanEval/1", ["TypeError", "passed"]),
                                         record("HumanEval/2", ["passed"])])
    text = render_report(tmp_path, [single, split, alone])
    row = next(line for line in text.splitlines() if "split / big refine" in line)
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "small", "humaneval", "split / big refine", "3", "2 / 3", "+1", "0 / 1", "1"]
