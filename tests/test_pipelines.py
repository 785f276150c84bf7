"""Pipelines with a scripted model and the real sandbox; report tables to the exact number."""

import pytest

from pytest_codegen.pipelines import build_pipeline
from pytest_codegen.pipelines.genome import GenomeError, genome_from_dict, load_genome
from pytest_codegen.pipelines.loop import derive_seed
from pytest_codegen.problems import Problem, TestCase
from pytest_codegen.record import Record
from pytest_codegen.report import (
    net_effect_table,
    render_tables,
    solved_after_round_table,
    transition_table,
)
from pytest_codegen.settings import RunSettings
from pytest_codegen.verdict import judge, judge_rounds

from fakes import FakeModels, ScriptedBackend, arithmetic_problem, fenced

ADD, SUB, MUL = (arithmetic_problem(n, op) for n, op in (("add", "+"), ("sub", "-"), ("mul", "*")))
CORRECT = {"add": "a + b", "sub": "a - b", "mul": "a * b"}
# The generator's first attempts: a NameError, a wrong answer, a correct program.
FIRST = {"add": "a + bb", "sub": "a + b", "mul": "a * b"}


def function(name: str, body: str) -> str:
    return f"def {name}(a, b):\n    return {body}\n"


def which(text: str) -> str:
    return next(n for n in ("add", "sub", "mul") if f"def {n}(" in text)


def generator_script(text: str) -> str:
    return fenced(function(which(text), FIRST[which(text)]))


def name_error_fixer(text: str) -> str:
    """Fixes NameErrors only; anything else comes back unchanged."""
    name = which(text)
    if "NameError" in text:
        return fenced(function(name, CORRECT[name]))
    return fenced(function(name, FIRST[name]))


def run(settings, models, sandbox, problems=(ADD, SUB, MUL)):
    pipeline = build_pipeline(settings, sandbox, models)
    records = []
    for problem in problems:
        solution = pipeline.solve(problem, 0)
        result = judge(sandbox, problem, solution.program)
        records.append(Record.build(solution, result, round_verdicts=judge_rounds(sandbox, solution, result)))
    return records


@pytest.fixture
def models():
    return FakeModels(gen=ScriptedBackend("gen", generator_script),
                      fixer=ScriptedBackend("fixer", name_error_fixer))


def test_single_pipeline_generates_once(models, sandbox):
    records = run(RunSettings(pipeline="single", model="gen"), models, sandbox)
    assert [r.outcome_class for r in records] == ["NameError", "AssertionError", "passed"]
    assert all(len(r.rounds) == 1 for r in records)
    assert records[0].rounds[0].model == "gen"


def test_refine_fixes_name_errors_only_and_tables_match(models, sandbox):
    settings = RunSettings(pipeline="refine", generator="gen", refiner="fixer", rounds=3)
    records = run(settings, models, sandbox)
    assert [list(r.round_outcomes) for r in records] == [
        ["NameError", "passed"],
        ["AssertionError"] * 4,
        ["passed"],
    ]
    table = transition_table(records)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:]}
    assert rows["NameError"][1:4] == ["1", "1", "1.00"]
    assert rows["AssertionError"][1:4] == ["1", "0", "0.00"]
    solved = [line.split() for line in solved_after_round_table(records).splitlines()[2:]]
    assert solved == [["0", "1", "0.333"], ["1", "2", "0.667"], ["2", "2", "0.667"], ["3", "2", "0.667"]]
    # the refiner was shown the visible example's failure, never a scoring test
    refine_prompts = [m.content for r in models.get("fixer").requests for m in r.messages[-1:]]
    assert all("candidate(5, 1)" not in p for p in refine_prompts)
    assert any("sub(3, 2)" in p for p in refine_prompts)


def test_hidden_feedback_shows_scoring_tests_and_is_recorded(models, sandbox):
    settings = RunSettings(pipeline="refine", generator="gen", refiner="fixer", feedback="hidden")
    records = run(settings, models, sandbox, problems=(SUB,))
    assert records[0].feedback == "hidden"
    assert any("candidate(5, 1)" in r.messages[-1].content for r in models.get("fixer").requests)


def test_no_early_stop_measures_regressions(sandbox):
    # Correct at first, then the "refiner" breaks it, then fixes it again.
    replies = iter([function("mul", "a + b"), function("mul", "a * b")])
    models = FakeModels(gen=ScriptedBackend("gen", generator_script),
                        flaky=ScriptedBackend("flaky", lambda text: fenced(next(replies))))
    settings = RunSettings(pipeline="refine", generator="gen", refiner="flaky", rounds=2,
                           early_stop=False)
    records = run(settings, models, sandbox, problems=(MUL,))
    assert list(records[0].round_outcomes) == ["passed", "AssertionError", "passed"]
    rows = [line.split() for line in net_effect_table(records).splitlines()[2:]]
    assert rows == [["1", "0", "1", "-1"], ["2", "1", "0", "1"]]
    assert "first-round passes broken by a later round: 0" in render_tables(records)


def test_early_stop_skips_refinement_of_a_passing_program(models, sandbox):
    settings = RunSettings(pipeline="refine", generator="gen", refiner="fixer")
    run(settings, models, sandbox, problems=(MUL,))
    assert models.get("fixer").requests == []


def test_analyzer_diagnosis_reaches_the_refiner(sandbox):
    seen = []
    models = FakeModels(
        gen=ScriptedBackend("gen", generator_script),
        doctor=ScriptedBackend("doctor", lambda text: "The name bb is undefined; use b."),
        fixer=ScriptedBackend("fixer", lambda text: seen.append(text) or name_error_fixer(text)),
    )
    settings = RunSettings(pipeline="refine", generator="gen", refiner="fixer", analyzer="doctor")
    records = run(settings, models, sandbox, problems=(ADD,))
    assert [r.role for r in records[0].rounds] == ["generate", "analyze", "refine"]
    assert "The name bb is undefined" in seen[0]
    assert records[0].passed


def test_text_pipeline_reviews_without_execution_feedback(sandbox):
    seen = []
    models = FakeModels(
        gen=ScriptedBackend("gen", generator_script),
        critic=ScriptedBackend("critic", lambda text: "Looks wrong: it adds."),
        fixer=ScriptedBackend("fixer", lambda text: seen.append(text) or fenced(function("sub", "a - b"))),
    )
    settings = RunSettings(pipeline="text", generator="gen", refiner="fixer", critic="critic", rounds=2)
    records = run(settings, models, sandbox, problems=(SUB,))
    assert [r.role for r in records[0].rounds] == ["generate", "critic", "refine", "critic", "refine"]
    assert all("Outcome:" not in text and "AssertionError" not in text for text in seen)
    assert "Looks wrong" in seen[0]
    assert records[0].passed


def test_resample_pipeline_samples_the_task_again_without_program_or_feedback(sandbox):
    """The no-feedback control: each round is the generator's request (same messages) from
    the resampler at its own temperature and seed, executed and stopped early like a repair."""
    answers = iter([function("sub", "a * b"), function("sub", "a - b")])
    models = FakeModels(gen=ScriptedBackend("gen", generator_script),
                        again=ScriptedBackend("again", lambda text: fenced(next(answers))))
    settings = RunSettings(pipeline="resample", generator="gen", refiner="again", rounds=3,
                           temperature=0.0, refiner_temperature=0.2)
    records = run(settings, models, sandbox, problems=(SUB,))
    assert [r.role for r in records[0].rounds] == ["generate", "resample", "resample"]
    assert list(records[0].round_outcomes) == ["AssertionError", "AssertionError", "passed"]  # then stopped
    first, resamples = models.get("gen").requests[0], models.get("again").requests
    assert all(r.messages == first.messages for r in resamples)
    assert (first.temperature, [r.temperature for r in resamples]) == (0.0, [0.2, 0.2])
    assert len({first.seed, *(r.seed for r in resamples)}) == 3


def test_refiner_temperature_sets_every_role_after_the_generator():
    from pytest_codegen.pipelines.genome import builtin_genome

    def temperatures(**options):
        genome = builtin_genome(RunSettings(model="m", temperature=0.0, **options))
        stage = genome.stages[0]
        return genome.generator.temperature, stage.refiner.temperature, stage.analyzer and stage.analyzer.temperature

    assert temperatures(pipeline="refine", analyzer="m", refiner_temperature=0.2) == (0.0, 0.2, 0.2)
    assert temperatures(pipeline="text", refiner_temperature=0.5) == (0.0, 0.5, 0.5)
    assert temperatures(pipeline="resample", refiner_temperature=0.2) == (0.0, 0.2, None)
    assert temperatures(pipeline="refine") == (0.0, 0.0, None)  # --temperature alone: every role


def test_the_header_describes_each_stage_with_its_models_and_temperatures():
    from pytest_codegen.pipelines.genome import builtin_genome

    def described(**options):
        return builtin_genome(RunSettings(model="m", temperature=0.0, refiner_temperature=0.2, **options)).describe()

    assert described(pipeline="single") == "generator=m (T=0)"
    first = "generator=m (T=0); "
    assert described(pipeline="refine", analyzer="a") == first + "execution x3: refiner=m (T=0.2), analyzer=a"
    assert described(pipeline="text", critic="c", rounds=2) == first + "review x2: refiner=m (T=0.2), critic=c"
    assert described(pipeline="resample", refiner="r") == first + "resample x3: resampler=r (T=0.2)"


def test_results_files_from_before_refiner_temperature_keep_their_run_key():
    """The committed study runs were written before --refiner-temperature existed: unset, it
    leaves the key as it was (else every such file would refuse to resume)."""
    import gzip
    import json
    from pathlib import Path

    from pytest_codegen.pipelines.genome import builtin_genome
    from pytest_codegen.settings import run_key

    runs = Path(__file__).parent.parent / "docs" / "results" / "runs" / "qwen-coder-0.5b"
    for row, pipeline in (("single", "single"), ("refine", "refine")):
        with gzip.open(runs / f"humaneval-{row}.jsonl.gz", "rt") as lines:
            written = json.loads(next(lines))["run_key"]
        settings = RunSettings(pipeline=pipeline, model="qwen-coder-0.5b", temperature=0.0)
        assert run_key(settings, builtin_genome(settings).to_dict()) == written
    sampled = RunSettings(pipeline="refine", model="qwen-coder-0.5b", temperature=0.0, refiner_temperature=0.2)
    assert run_key(sampled, builtin_genome(sampled).to_dict()) != written


def test_missing_typing_import_is_never_a_name_error(sandbox):
    """HumanEval/0: a model that omits `from typing import List` is not penalised for it."""
    from pytest_codegen.datasets import humaneval

    problem = humaneval.load_problems()[0]
    body = problem.canonical_solution[len(problem.prompt):]
    bare = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n" + body
    models = FakeModels(gen=ScriptedBackend("gen", lambda text: fenced(bare)))
    records = run(RunSettings(pipeline="refine", model="gen"), models, sandbox, problems=(problem,))
    assert records[0].outcome_class == "passed"
    assert list(records[0].round_outcomes) == ["passed"]


def test_seeds_differ_per_problem_sample_round_and_role_and_follow_the_base_seed():
    seeds = {derive_seed(0, problem, s, r, role) for problem in ("HumanEval/0", "Mbpp/2")
             for s in range(3) for r in range(3) for role in ("generate", "refine")}
    assert len(seeds) == 36
    assert derive_seed(0, "HumanEval/0", 1, 2, "refine") != derive_seed(1, "HumanEval/0", 1, 2, "refine")
    assert derive_seed(0, "HumanEval/0", 1, 2, "refine") == 2082579513  # stable across processes and runs


STUDY_CHAMPION = {
    "fitness": 0.62,
    "genome": {
        "generator": {"model": "qwen2.5:1.5b", "system_prompt": "Output ONLY the function code.", "temperature": 0.3},
        "stages": [
            {"innovation": 1, "max_iterations": 2, "analyzer": None,
             "refiner": {"model": "llama3.2:3b", "system_prompt": "Fix the code.", "temperature": 0.2}},
            {"innovation": 4, "max_iterations": 1,
             "analyzer": {"model": "gemma3:1b", "system_prompt": "Diagnose.", "temperature": 0.2},
             "refiner": {"model": "llama3.2:3b", "system_prompt": "Fix the code.", "temperature": 0.2}},
        ],
    },
}


def test_study_genome_runs_unchanged(tmp_path, sandbox):
    import json

    path = tmp_path / "champion.json"
    path.write_text(json.dumps(STUDY_CHAMPION))
    genome = load_genome(path)
    assert genome.models() == {"qwen2.5:1.5b", "llama3.2:3b", "gemma3:1b"}
    assert [s.innovation for s in genome.stages] == [1, 4]
    models = FakeModels(**{
        "qwen2.5:1.5b": ScriptedBackend("q", generator_script),
        "llama3.2:3b": ScriptedBackend("l", name_error_fixer),
        "gemma3:1b": ScriptedBackend("g", lambda text: "diagnosis"),
    })
    records = run(RunSettings(pipeline=str(path)), models, sandbox)
    assert [r.passed for r in records] == [True, False, True]
    # sub: 2 iterations of stage 1, then analyzer + refiner of stage 2
    assert [r.role for r in records[1].rounds] == ["generate", "refine", "refine", "analyze", "refine"]
    assert records[1].rounds[0].template_hash
    assert models.get("qwen2.5:1.5b").requests[0].messages[0].content == "Output ONLY the function code."


@pytest.mark.parametrize("bad, message", [
    ({}, "needs a 'generator'"),
    ({"generator": {"model": 3}}, "needs a 'model'"),
    ({"generator": {"model": "m", "temperature": 5}}, "temperature"),
    ({"generator": {"model": "m"}, "stages": [{"max_iterations": 0, "refiner": {"model": "m"}}]}, "max_iterations"),
    ({"generator": {"model": "m"}, "stages": [{"kind": "repeat", "refiner": {"model": "m"}}]}, "kind must be one of"),
    ({"generator": {"model": "m"}, "stages": [{"kind": "resample", "refiner": {"model": "m"},
                                               "analyzer": {"model": "m"}}]}, "no analyzer"),
])
def test_bad_genomes_are_refused(bad, message):
    with pytest.raises(GenomeError, match=message):
        genome_from_dict(bad)


def test_base_model_refinement_continues_a_started_function(sandbox):
    """Completion-mode refiners get `def entry(` to continue; their output joins it."""
    task = Problem("toy/neg", "toy", "Write neg(x) returning -x.", "neg",
                   (TestCase("t0", "assert neg(2) == -2", visible=True),), "def neg(x):\n    return -x\n")
    models = FakeModels(
        base=ScriptedBackend("base", lambda text: "x):\n    return -x\n" if text.endswith("def neg(")
                             else "def neg(x):\n    return x\n", mode="completion"))
    records = run(RunSettings(pipeline="refine", model="base"), models, sandbox, problems=(task,))
    prompt = models.get("base").requests[1].prompt
    assert prompt.startswith("# Task:") and "# It failed:" in prompt
    assert list(records[0].round_outcomes) == ["AssertionError", "passed"]
    assert records[0].program == "def neg(x):\n    return -x\n"
