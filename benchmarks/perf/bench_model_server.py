"""One HumanEval `single` workload three ways, in one run: where the model runs, and how fast.

    python benchmarks/perf/bench_model_server.py [--problems 16] [--max-tokens 128]
        [--model qwen-coder-0.5b] [--workers 2,2,8]

1. `--model-server=in-process -n 2`: every xdist worker loads its own copy of the model and
   decodes one sequence at a time with cores / 2 threads (as before the model server existed);
2. `-n 2` with the session's embedded model server (one copy, the two workers' requests
   decoded together);
3. `-n 8` with the embedded server: more workers than cores, so more sequences per batch.

Each is a fresh `pytest benchmarks/humaneval` over the first N problems with the generation
cache off. Printed per way: problems/hour and aggregate generated tokens/s over the whole
run's wall time (start-up and model loading included), problems/hour in the steady state (from
the first finished item to the last, as the results file grows), the peak total memory of all the run's
processes (sum of PSS, so pages shared between processes, like mmapped weights, count once;
RSS sum alongside), the model server's own share, and each way's ratio to the first.
The model defaults to qwen-coder-0.5b when its file is here, else gemma-270m. Not run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def default_model() -> str:
    from pytest_codegen.models.registry import Registry

    return Registry().first_present("qwen-coder-0.5b", "gemma-270m")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB; zeros if it is gone."""
    values = {"Pss:": 0, "Rss:": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(None, 1)[0]
                if key in values:
                    values[key] = int(line.split()[1])
    except OSError:
        pass
    return values["Pss:"], values["Rss:"]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class MemoryWatch(threading.Thread):
    """Samples the summed PSS/RSS of a process tree; keeps the peak of the sum."""

    def __init__(self, root: int, results: Path, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.results, self.interval = root, results, interval
        self.peak_pss = self.peak_rss = self.peak_server_pss = 0
        self.finished: dict[int, float] = {}  # items done -> when first seen
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                done = self.results.read_bytes().count(b"\n")
            except OSError:
                done = 0
            self.finished.setdefault(done, time.perf_counter())
            tree, todo, pss, rss, server = _children(), [self.root], 0, 0, 0
            while todo:
                pid = todo.pop()
                p, r = _memory_kb(pid)
                pss, rss = pss + p, rss + r
                if "pytest_codegen.models.server" in _cmdline(pid):
                    server += p
                todo.extend(tree.get(pid, ()))
            self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
            self.peak_server_pss = max(self.peak_server_pss, server)
            self.stop.wait(self.interval)


def run_way(label: str, model: str, problems: int, max_tokens: int, workers: int,
            server: str, workdir: Path) -> dict:
    results = workdir / f"{label}.jsonl"
    ids = ",".join(f"HumanEval/{i}" for i in range(problems))
    command = [sys.executable, "-m", "pytest", str(REPO / "benchmarks" / "humaneval"),
               "--pipeline=single", f"--model={model}", f"--max-tokens={max_tokens}",
               f"--problems={ids}", "--no-codegen-cache", f"--codegen-results={results}",
               "--codegen-fresh", f"--model-server={server}", "-n", str(workers), "-q",
               "-p", "no:cacheprovider"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watch = MemoryWatch(proc.pid, results)
    watch.start()
    output = proc.communicate()[0].decode(errors="replace")
    seconds = time.perf_counter() - start
    watch.stop.set()
    watch.join()
    records = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    tokens = sum(r["completion_tokens"] for rec in records for r in rec.get("rounds", ()))
    if len(records) != problems:
        print(output[-3000:])
    # Steady state: from the first item's end to the last's, start-up and loading left out.
    first = min((t for n, t in watch.finished.items() if n >= 1), default=start)
    last = max(watch.finished.values(), default=start)
    steady = (len(records) - 1) / (last - first) * 3600 if last > first and records else 0.0
    return {"label": label, "seconds": seconds, "items": len(records), "steady_per_hour": steady,
            "passed": sum(r["passed"] for r in records), "tokens": tokens,
            "problems_per_hour": len(records) / seconds * 3600, "tok_s": tokens / seconds,
            "pss_mb": watch.peak_pss / 1024, "rss_mb": watch.peak_rss / 1024,
            "server_pss_mb": watch.peak_server_pss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--workers", default="2,2,8",
                        help="xdist workers for in-process, server, server (default 2,2,8)")
    args = parser.parse_args()
    model = args.model or default_model()
    n_local, n_server, n_many = (int(x) for x in args.workers.split(","))
    ways = [(f"in-process -n {n_local}", n_local, "in-process"),
            (f"server -n {n_server}", n_server, "embedded"),
            (f"server -n {n_many}", n_many, "embedded")]
    print(f"model {model}, {args.problems} HumanEval problems, single pipeline, max_tokens "
          f"{args.max_tokens}, {len(os.sched_getaffinity(0))} CPUs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-server-") as tmp:
        for label, workers, server in ways:
            row = run_way(label.replace(" ", "_"), model, args.problems, args.max_tokens,
                          workers, server, Path(tmp))
            row["label"] = label
            rows.append(row)
            print(f"  {label}: {row['seconds']:.0f} s, {row['items']} items "
                  f"({row['passed']} passed)", flush=True)
    base = rows[0]
    print()
    print(f"{'way':<18}{'problems/h':>11}{'steady/h':>9}{'tok/s':>8}{'PSS MB':>9}{'RSS MB':>9}"
          f"{'server MB':>10}{'x problems/h':>14}{'x steady':>10}{'x memory':>10}")
    for row in rows:
        print(f"{row['label']:<18}{row['problems_per_hour']:>11.0f}{row['steady_per_hour']:>9.0f}"
              f"{row['tok_s']:>8.1f}{row['pss_mb']:>9.0f}{row['rss_mb']:>9.0f}"
              f"{row['server_pss_mb']:>10.0f}"
              f"{row['problems_per_hour'] / base['problems_per_hour']:>14.2f}"
              f"{row['steady_per_hour'] / max(base['steady_per_hour'], 1e-9):>10.2f}"
              f"{row['pss_mb'] / base['pss_mb']:>10.2f}")


if __name__ == "__main__":
    main()
