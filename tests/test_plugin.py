"""The pytest plugin end to end, in subprocesses as users run it (pytester), with and without xdist."""

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The README's example suite, verbatim in spirit: a benchmark is an ordinary test file.
TOY_SUITE = '''
import pytest
from pytest_codegen import Problem, TestCase

PROBLEMS = [
    Problem(
        id="toy/add", benchmark="toy", entry_point="add",
        prompt='def add(a, b):\\n    """Return the sum of a and b."""\\n', prompt_is_code=True,
        tests=(TestCase("t0", "assert candidate(1, 2) == 3", visible=True),
               TestCase("t1", "assert candidate(-1, 1) == 0")),
        canonical_solution='def add(a, b):\\n    return a + b\\n',
    ),
    Problem(
        id="toy/rev", benchmark="toy", entry_point="rev",
        prompt="Write a function rev(s) that reverses a string.",
        tests=(TestCase("t0", "assert rev('ab') == 'ba'", visible=True),),
        canonical_solution="def rev(s):\\n    return s[::-1]\\n",
    ),
    Problem(
        id="toy/sq", benchmark="toy", entry_point="sq",
        prompt="Write sq(x) returning x squared.",
        tests=(TestCase("t0", "assert sq(3) == 9", visible=True),),
        canonical_solution="def sq(x):\\n    return x * x\\n",
    ),
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=str)
def test_toy(problem, solution):
    solution.verify()
'''

# Starting xdist workers costs seconds per run: those runs are `slow` (CI runs them all).
XDIST_MODES = [pytest.param([], id="plain"), pytest.param(["-n", "2"], id="xdist", marks=pytest.mark.slow),
               pytest.param(["-p", "no:xdist"], id="no-xdist")]


@pytest.fixture
def suite(pytester):
    pytester.makepyfile(test_toy=TOY_SUITE)
    return pytester


def summary_table(output: str) -> str:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "codegen outcomes" in line)
    return "\n".join(lines[start + 1 : start + 4])


@pytest.mark.parametrize("mode", XDIST_MODES)
def test_reference_passes_and_table_is_the_same_with_and_without_xdist(suite, mode):
    result = suite.runpytest_subprocess("--pipeline=reference", *mode)
    result.assert_outcomes(passed=3)
    table = summary_table(result.stdout.str())
    assert table.splitlines()[2].split() == ["toy", "3", "3", "1.000"]


@pytest.mark.parametrize("mode", XDIST_MODES)
def test_null_fails_every_item_as_no_code(suite, mode):
    result = suite.runpytest_subprocess("--pipeline=null", "-rf", *mode)
    result.assert_outcomes(failed=3)
    assert summary_table(result.stdout.str()).splitlines()[2].split() == ["toy", "3", "0", "0.000", "3"]
    result.stdout.fnmatch_lines(["*no code*"])


def write_replay(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replay_classifies_each_failure_and_writes_results_and_junit(suite):
    replay = write_replay(suite.path / "samples.jsonl", [
        {"task_id": "toy/add", "completion": "    return a + b\n"},
        {"task_id": "toy/add", "completion": "    return a - b\n"},
        {"task_id": "toy/rev", "solution": "def rev(s):\n    return s[::-1]\n"},
        {"task_id": "toy/rev", "solution": "def rev(s):\n    return undefined\n"},
        {"task_id": "toy/sq", "solution": "def sq(x)\n    return x * x\n"},
    ])
    result = suite.runpytest_subprocess(
        "--pipeline=replay", f"--replay={replay}", "--codegen-results=out/results.jsonl",
        "--junitxml=junit.xml", "-v",
    )
    # 3 problems x 2 samples; toy/sq has no second sample
    result.assert_outcomes(passed=2, failed=3, skipped=1)
    result.stdout.fnmatch_lines([
        "*test_toy[[]toy/add-sample1[]] FAILED (AssertionError)*",
        "*test_toy[[]toy/rev-sample1[]] FAILED (NameError)*",
        "*test_toy[[]toy/sq-sample0[]] FAILED (SyntaxError)*",
    ])
    records = [json.loads(line) for line in (suite.path / "out/results.jsonl").read_text().splitlines()]
    by_item = {(r["problem_id"], r["sample"]): r for r in records}
    assert len(records) == 5
    failed_add = by_item[("toy/add", 1)]
    assert failed_add["error_type"] == "AssertionError" and failed_add["phase"] == "test"
    assert [t["passed"] for t in failed_add["tests"]] == [False, False]
    assert "assert -1 == 3" in failed_add["tests"][0]["line"]
    assert by_item[("toy/sq", 0)]["phase"] == "define"

    tree = ET.parse(suite.path / "junit.xml")
    suite_props = {p.get("name"): p.get("value") for p in tree.getroot().iter("property")
                   if p.get("name").startswith("pass@1")}
    assert suite_props == {"pass@1[toy]": "0.3333"}  # per problem: (1/2 + 1/2 + 0/1) / 3
    case = next(c for c in tree.getroot().iter("testcase") if "toy/rev-sample1" in c.get("name"))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["outcome"] == "failed" and props["error_type"] == "NameError"
    assert props["pipeline"] == "replay" and props["benchmark"] == "toy"


def test_failure_shows_the_failing_test_and_values(suite):
    replay = write_replay(suite.path / "s.jsonl", [{"task_id": "toy/add", "completion": "    return a * b\n"}])
    result = suite.runpytest_subprocess("--pipeline=replay", f"--replay={replay}", "--problems=toy/add")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError*", "*failing test t0*", "*assert 2 == 3*"])


# Records, per failed call, whether the report's failure representation is the one pytest's
# own `repr_failure` gives (serialized as xdist and reportlog send it).
SAME_LONGREPR = '''
import copy, json
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed:
        theirs = copy.copy(report)
        theirs.longrepr = type(item).repr_failure(item, call.excinfo)
        serial = lambda r: item.config.hook.pytest_report_to_serializable(config=item.config, report=r)["longrepr"]
        same = (serial(report) == serial(theirs), str(report.longrepr) == str(theirs.longrepr))
        with open("same-longrepr.txt", "a") as f:
            f.write(f"{item.nodeid} {same[0]} {same[1]}\\n")
    return report
'''


@pytest.mark.parametrize("options", [[], ["--full-trace"], ["--tb=native"]])
def test_a_failed_verdict_is_reported_as_pytest_would(suite, options):
    """verify()'s failures skip pytest's traceback filtering (never shown for them): the report
    must not change, nor what --full-trace shows (the whole traceback)."""
    suite.makeconftest(SAME_LONGREPR)
    suite.makepyfile(test_other="def test_plain():\n    assert 1 == 2\n")
    result = suite.runpytest_subprocess("--pipeline=null", *options)
    result.assert_outcomes(failed=4)
    lines = (suite.path / "same-longrepr.txt").read_text().splitlines()
    assert len(lines) == 4 and all(line.endswith(" True True") for line in lines), lines
    if options == ["--full-trace"]:
        result.stdout.fnmatch_lines(["*def verify(self)*"])
    else:
        assert "def verify(self)" not in result.stdout.str()


# Writes, from each xdist worker's terminal summary, whether pytest's own sections are off.
WORKER_SUMMARY = '''
def pytest_terminal_summary(terminalreporter, config):
    worker = getattr(config, "workerinput", {}).get("workerid")
    if worker:
        with open(f"summary-{worker}.txt", "w") as f:
            f.write(str(terminalreporter.no_summary))
'''


@pytest.mark.slow
def test_xdist_workers_skip_the_summary_sections_nobody_sees(suite):
    """A worker's terminal goes to /dev/null: its failure sections are not formatted in a
    codegen run, and stay as they were in runs without codegen items."""
    suite.makeconftest(WORKER_SUMMARY)
    suite.makepyfile(test_plain="def test_plain():\n    assert False\n")
    result = suite.runpytest_subprocess("--pipeline=null", "-n", "2")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["*= FAILURES =*", "*no code*"])  # the controller's, as before
    assert {p.read_text() for p in suite.path.glob("summary-gw*.txt")} == {"True"}
    for p in suite.path.glob("summary-gw*.txt"):
        p.unlink()
    plain = suite.runpytest_subprocess("test_plain.py", "-n", "2")
    plain.assert_outcomes(failed=1)
    assert {p.read_text() for p in suite.path.glob("summary-gw*.txt")} == {"False"}


def test_status_letters_name_the_class(suite):
    replay = write_replay(suite.path / "s.jsonl", [
        {"task_id": "toy/add", "completion": "    return nope\n"},
        {"task_id": "toy/rev", "solution": "def rev(s) return s\n"},
        {"task_id": "toy/sq", "solution": "def sq(x):\n    while True: pass\n"},
    ])
    result = suite.runpytest_subprocess("--pipeline=replay", f"--replay={replay}", "--exec-timeout=1")
    result.stdout.fnmatch_lines(["test_toy.py NST*"])


def test_problems_option_selects_exact_ids(suite):
    result = suite.runpytest_subprocess("--pipeline=reference", "--problems=toy/add,toy/sq")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*1 deselected*"])


def test_unknown_pipeline_is_a_usage_error(suite):
    result = suite.runpytest_subprocess("--pipeline=nonsense")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown pipeline 'nonsense'*"])


def test_replay_without_file_is_reported(suite):
    result = suite.runpytest_subprocess("--pipeline=replay", "--replay=missing.jsonl")
    assert result.ret != 0
    assert "missing.jsonl does not exist" in result.stdout.str() + result.stderr.str()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [pytest.param([], id="plain"), pytest.param(["-n", "2"], id="xdist")])
def test_benchmarks_reference_all_pass(pytester, mode):
    """The two real benchmarks with their canonical solutions: 164 + 427 items pass."""
    result = pytester.runpytest_subprocess(str(REPO / "benchmarks"), "--pipeline=reference", "-q", *mode)
    result.assert_outcomes(passed=591)
    out = result.stdout.str()
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()
            if line.startswith(("humaneval ", "mbpp "))}
    assert rows == {"humaneval": ["164", "164", "1.000"], "mbpp": ["427", "427", "1.000"]}


@pytest.mark.slow
def test_benchmarks_null_all_fail_classified(pytester):
    result = pytester.runpytest_subprocess(str(REPO / "benchmarks"), "--pipeline=null", "-q", "-n", "2")
    result.assert_outcomes(failed=591)
    out = result.stdout.str()
    assert "unknown" not in out.split("codegen outcomes")[1]
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith(("humaneval ", "mbpp "))}
    assert rows == {"humaneval": ["164", "0", "0.000", "164"], "mbpp": ["427", "0", "0.000", "427"]}


@pytest.mark.usefixtures("gemma_package")  # the generator, present: only the refiner is missing
def test_missing_named_model_fails_fast_with_what_to_do(pytester, monkeypatch):
    """`--refiner=qwen3b` without the file: one clear usage error before any item runs."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never download 2 GB from a test
    monkeypatch.setenv("HF_HUB_CACHE", str(pytester.path / "empty-hf-cache"))
    result = pytester.runpytest_subprocess(str(REPO / "benchmarks"), "--pipeline=refine",
                                           "--model=gemma-270m", "--refiner=qwen3b")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        "*'qwen3b'*qwen2.5-3b-instruct-q4_k_m.gguf*",
        "*pytest-codegen models --download qwen3b*",
    ])


@pytest.mark.parametrize("mode", XDIST_MODES)
def test_junit_properties_with_and_without_xdist(suite, mode):
    suite.runpytest_subprocess("--pipeline=null", "--junitxml=junit.xml", *mode)
    root = ET.parse(suite.path / "junit.xml").getroot()
    suite_props = {p.get("name"): p.get("value") for p in root.find(".//testsuite/properties")}
    assert suite_props == {"pipeline": "null", "pass@1[toy]": "0.0000"}
    cases = list(root.iter("testcase"))
    assert len(cases) == 3
    for case in cases:
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props == {"outcome": "no code", "error_type": "", "pipeline": "null",
                         "benchmark": "toy", "rounds": "1"}


SCRIPTED_MODELS = '''
from pathlib import Path

import pytest_codegen.models as models
from pytest_codegen.models.backend import GenerationResponse

FIRST = {"def add(": "def add(a, b):\\n    return a + bb\\n",
         "rev(s)": "def rev(s):\\n    return s[::-1]\\n",
         "sq(x)": "def sq(x):\\n    return x + x\\n"}
FIXED = {"def add(": "def add(a, b):\\n    return a + b\\n"}


class Scripted:
    """gen writes FIRST; fixer repairs NameErrors only; broken cannot be loaded."""

    mode = "chat"

    def __init__(self, alias):
        self.alias = alias

    def generate(self, request):
        if self.alias == "broken":
            raise RuntimeError("llama.cpp could not load broken.gguf")
        text = request.messages[-1].content
        key = next(k for k in FIRST if k in text)
        table = FIXED if self.alias == "fixer" and "NameError" in text else {}
        code = table.get(key, FIRST[key])
        return GenerationResponse("```python\\n" + code + "```", len(text), len(code), 0.01)


models.ModelPool.get = lambda self, name: Scripted(name)
models.ModelPool.locate = lambda self, name: Path(name)
'''


@pytest.mark.parametrize("mode", [pytest.param([], id="plain"),
                                  pytest.param(["-n", "2"], id="xdist", marks=pytest.mark.slow)])
def test_refine_through_the_plugin_with_a_scripted_model(suite, mode):
    suite.makeconftest(SCRIPTED_MODELS)
    result = suite.runpytest_subprocess(
        "--pipeline=refine", "--generator=gen", "--refiner=fixer", "-v", "--junitxml=junit.xml",
        "--no-codegen-cache", *mode)
    result.assert_outcomes(passed=2, failed=1)
    lines = result.stdout.lines
    # -v puts the word after the node id, and before it under xdist
    assert any("toy/add" in line and "PASSED [NameError → passed]" in line for line in lines)
    result.stdout.fnmatch_lines([
        "NameError * 1 * 1 * 1.00 * passed: 1",
        "FAILED (AssertionError) [[]AssertionError → AssertionError → AssertionError → "
        "AssertionError[]] test_toy.py::test_toy[[]toy/sq[]]*",  # CI=true appends the reason
    ])
    root = ET.parse(suite.path / "junit.xml").getroot()
    case = next(c for c in root.iter("testcase") if "toy/add" in c.get("name"))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["model"] == "fixer,gen" and props["rounds"] == "2" and props["feedback"] == "visible"
    assert int(props["tokens"]) > 0


def test_pipeline_errors_count_against_pass_at_1_and_the_gate(suite):
    suite.makeconftest(SCRIPTED_MODELS)
    result = suite.runpytest_subprocess("--pipeline=single", "--model=broken", "--no-codegen-cache",
                                        "--codegen-min-pass=0.1", "--codegen-results=r.jsonl")
    result.assert_outcomes(errors=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["toy * 3 * 0 * 0.000 * 3", "gate: toy pass@1 0.000 < 0.1: FAILS"])
    assert (suite.path / "r.jsonl").read_text() == ""  # errors are retried by a resumed run


def test_gate_does_not_hide_other_failing_tests(suite):
    suite.makepyfile(test_other="def test_unrelated():\n    assert False\n")
    result = suite.runpytest_subprocess("--pipeline=reference", "--codegen-min-pass=0.5")
    result.assert_outcomes(passed=3, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_header_states_isolation_only_when_the_plugin_is_asked_for(suite):
    asked = suite.runpytest_subprocess("--pipeline=reference", "--feedback=hidden")
    asked.stdout.fnmatch_lines([
        "codegen: pipeline=reference, feedback=hidden (ORACLE: the model sees the scoring tests)*",
        "codegen: sandbox isolation: *rlimits*",
    ])
    suite.makepyfile(test_plain="def test_plain():\n    pass\n")
    unasked = suite.runpytest_subprocess("test_plain.py")
    assert "codegen:" not in unasked.stdout.str()


def test_header_appears_for_options_given_through_addopts(suite, monkeypatch):
    monkeypatch.setenv("PYTEST_ADDOPTS", "--pipeline=reference")
    through_env = suite.runpytest_subprocess()
    through_env.stdout.fnmatch_lines(["codegen: pipeline=reference, feedback=visible*"])
    monkeypatch.delenv("PYTEST_ADDOPTS")
    suite.makeini("[pytest]\naddopts = --pipeline=null\n")
    through_ini = suite.runpytest_subprocess()
    through_ini.stdout.fnmatch_lines(["codegen: pipeline=null, feedback=visible*"])


def test_xdist_workers_keep_their_sandbox_to_a_cpu_when_they_fill_the_machine():
    from types import SimpleNamespace

    from pytest_codegen.plugin import _sandbox_cpu

    cpus = len(os.sched_getaffinity(0))
    worker = lambda n, count: SimpleNamespace(workerinput={"workerid": f"gw{n}", "workercount": count})  # noqa: E731
    assert _sandbox_cpu(worker(1, cpus)) == 1
    assert _sandbox_cpu(worker(3, cpus + 2)) == 3
    if cpus > 1:
        assert _sandbox_cpu(worker(0, cpus - 1)) is None  # spare CPUs: let the sandbox float
    assert _sandbox_cpu(SimpleNamespace()) is None  # not a worker


def test_isolation_lines_that_differ_only_in_the_uid_are_one_line():
    from pytest_codegen.plugin_controller import isolation_lines

    worker_lines = ["namespaces + uid 221644 + rlimits", "namespaces + uid 221643 + rlimits",
                    "namespaces + uid 221644 + rlimits", "rlimits only (degraded)"]
    assert isolation_lines(worker_lines) == ["namespaces + uid 221643/221644 + rlimits", "rlimits only (degraded)"]


INDEX_PROBE = '''
import pytest

@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    indexed = "_get_teardown_reports" in vars(terminalreporter)
    terminalreporter.write_line(f"teardown lookup indexed: {indexed}")
'''


def test_a_benchmark_run_indexes_the_failure_summary_and_a_plain_run_does_not(suite):
    suite.makeconftest(INDEX_PROBE)
    suite.runpytest_subprocess("--pipeline=null").stdout.fnmatch_lines(["*teardown lookup indexed: True*"])
    suite.makepyfile(test_plain="def test_fails():\n    assert 0\n")
    plain = suite.runpytest_subprocess("test_plain.py")
    plain.stdout.fnmatch_lines(["*teardown lookup indexed: False*"])
