"""The study's experiment as a named matrix of runs, each an ordinary pytest command.

A *cell* is one configuration (a row of the study's table) of one model on one benchmark. Its
command is the plain ``pytest benchmarks/BENCH ...`` a user could type, writing a results file
under the study's directory; re-running it resumes from that file and answers every finished
generation from the generation cache, so the whole matrix can be stopped and restarted at will.
`run_cells` runs the missing ones; `render_report` turns whatever results exist into the
markdown report (pass@1 with a bootstrap interval, Δ against `single` with exact McNemar, error
transitions and fix rates, cost per solved problem, and the single-pass failure breakdown).

Every cell is greedy (temperature 0; the sampled pair's later rounds sample at the study's
0.2, each with a seed of its problem and round, so they too are cached and re-run alike) and
decoded one sequence at a time: the first attempt of a refinement row is then the `single`
row's program wherever its generation prompt is the same, so the Δ columns are paired
comparisons of the same first programs. Where it is not (MBPP with
`--feedback=hidden` shows every scoring test in the prompt), a row is compared with its own
first programs.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .outcome import PASSED

if TYPE_CHECKING:
    from .record import Record

__all__ = [
    "CACHE_EXPORT", "Cell", "ROWS", "Row", "STUDY_PLAN", "cache_dir", "cells_for", "compress_results",
    "export_cache", "import_cache", "option_value", "render_report", "restore_results", "run_cells",
]


@dataclass(frozen=True)
class Row:
    """A configuration: the pytest options that make it, with `{model}` and `{big}` filled in."""

    name: str
    description: str
    options: tuple[str, ...]


ROWS: dict[str, Row] = {row.name: row for row in (
    Row("single", "one generation, no execution feedback", ("--pipeline=single", "--model={model}")),
    Row("refine", "generate → execute → refine, 3 rounds, early stop, visible tests only",
        ("--pipeline=refine", "--model={model}", "--rounds=3", "--feedback=visible")),
    Row("refine-hidden", "as refine, but the model sees the scoring tests (the study's oracle feedback; on MBPP its "
        "generation prompt shows them all too, where `single` shows the first)",
        ("--pipeline=refine", "--model={model}", "--rounds=3", "--feedback=hidden")),
    Row("refine-analyzer", "as refine, with an analyzer diagnosing each failure for the refiner",
        ("--pipeline=refine", "--model={model}", "--analyzer={model}", "--rounds=3", "--feedback=visible")),
    Row("text-critic", "a critic reviews the program without executing it; the refiner fixes",
        ("--pipeline=text", "--model={model}", "--rounds=3")),
    Row("refine-no-early-stop", "as refine, every round runs even after a pass (per-round net effect)",
        ("--pipeline=refine", "--model={model}", "--rounds=3", "--feedback=visible", "--no-early-stop")),
    Row("refine-hidden-sampled", "as refine-hidden, but the refiner samples at the study's T = 0.2 (the first "
        "program stays greedy: single's)",
        ("--pipeline=refine", "--model={model}", "--rounds=3", "--feedback=hidden", "--refiner-temperature=0.2")),
    Row("resample-hidden", "the control of refine-hidden-sampled: no program or feedback shown, each round samples "
        "the task again at T = 0.2, stopping at the first program that passes the scoring tests",
        ("--pipeline=resample", "--model={model}", "--rounds=3", "--feedback=hidden", "--refiner-temperature=0.2")),
    Row("refine-sampled", "as refine (visible tests), but the refiner samples at T = 0.2: what a user can run, "
        "since no scoring test decides when to stop",
        ("--pipeline=refine", "--model={model}", "--rounds=3", "--feedback=visible", "--refiner-temperature=0.2")),
    Row("resample", "the control of refine-sampled: each round samples the task again at T = 0.2, stopping at the "
        "first program that passes the visible tests",
        ("--pipeline=resample", "--model={model}", "--rounds=3", "--feedback=visible", "--refiner-temperature=0.2")),
    Row("split", "{model} generates, {big} refines (the role split), visible tests",
        ("--pipeline=refine", "--generator={model}", "--refiner={big}", "--rounds=3", "--feedback=visible")),
)}

# Rows compared with each other, beyond `single`: a sampled refiner (shown its program and the
# failure) against sampling the task again with the same budget and stopping rule.
REPAIR_VS_RESAMPLE = (("refine-hidden-sampled", "resample-hidden"), ("refine-sampled", "resample"))

# One sequence at a time: batched greedy output can differ from it, and every row's first
# attempt must be the `single` row's program for the comparisons to be paired.
COMMON_OPTIONS = ("--temperature=0", "--decode=sequential", "-p", "no:cacheprovider", "-q")
BENCHMARK_SIZES = {"humaneval": 164, "mbpp": 427}  # a cell with fewer problems is still running


@dataclass(frozen=True)
class Cell:
    model: str
    benchmark: str
    row: str
    big: str | None = None  # the larger model of a role split

    @property
    def label(self) -> str:
        return self.row if self.row != "split" else f"split→{self.big}"

    def results_path(self, out: Path) -> Path:
        name = self.row if self.row != "split" else f"split-{self.big}"
        return out / "runs" / self.model / f"{self.benchmark}-{name}.jsonl"

    def command(self, out: Path, extra: Sequence[str] = ()) -> list[str]:
        fill = {"model": self.model, "big": self.big or ""}
        options = [option.format(**fill) for option in ROWS[self.row].options]
        return ["pytest", f"benchmarks/{self.benchmark}", *options, *COMMON_OPTIONS,
                f"--codegen-results={self.results_path(out)}", *extra]


def cells_for(
    models: Iterable[str], benchmarks: Iterable[str], rows: Iterable[str], big: str | None = None
) -> list[Cell]:
    cells = []
    for model in models:
        for benchmark in benchmarks:
            for row in rows:
                if row not in ROWS:
                    raise ValueError(f"unknown study row {row!r}; rows: {', '.join(ROWS)}")
                if row == "split" and (big is None or big == model):
                    continue
                cells.append(Cell(model, benchmark, row, big if row == "split" else None))
    return cells


# The required coverage first, in an order where each cell reuses the cache of those before it;
# the feedback rows of both benchmarks come before the costlier variants, and of those the
# cheapest first, so that an interrupted study has finished as many rows as it could:
# no-early-stop and the analyzer (a greedy refiner mostly re-emits its program, so repeated
# rounds are cache hits: about one round per problem), the sampled-refiner pairs on HumanEval
# (only the failing programs, three sampled rounds each at most), then the text critic (which never
# stops early, two generations a round: about 6 per problem on HumanEval), the split (1.5B
# rounds), 1.5B's MBPP single, 1.5B's MBPP refine (the split's comparison there; about one 1.5B
# round per failing problem), the MBPP text critic (427 problems at 6 generations) and the MBPP
# sampled pair.
_ZERO_FIVE = "qwen-coder-0.5b"
_ONE_FIVE = "qwen-coder-1.5b"
STUDY_PLAN: tuple[Cell, ...] = (
    *cells_for([_ZERO_FIVE], ["humaneval"], ["single", "refine", "refine-hidden"]),
    *cells_for([_ONE_FIVE], ["humaneval"], ["single", "refine", "refine-hidden"]),
    *cells_for([_ZERO_FIVE], ["humaneval"], ["split"], big=_ONE_FIVE),
    *cells_for([_ZERO_FIVE], ["humaneval"], ["refine-analyzer"]),
    *cells_for([_ZERO_FIVE], ["mbpp"], ["single", "refine", "refine-hidden"]),
    *cells_for([_ZERO_FIVE], ["humaneval", "mbpp"], ["refine-no-early-stop"]),
    *cells_for([_ZERO_FIVE], ["mbpp"], ["refine-analyzer"]),
    # beyond the required rows: is a gain of the study's sampled refiner the feedback's, or
    # sampling's? (greedy refiners here mostly re-emit their program)
    *cells_for([_ZERO_FIVE], ["humaneval"], ["refine-hidden-sampled", "resample-hidden"]),
    # the same pair where the visible tests decide when to stop (no oracle: what a user can run)
    *cells_for([_ZERO_FIVE], ["humaneval"], ["refine-sampled", "resample"]),
    *cells_for([_ZERO_FIVE], ["humaneval"], ["text-critic"]),
    *cells_for([_ZERO_FIVE], ["mbpp"], ["split"], big=_ONE_FIVE),
    *cells_for([_ONE_FIVE], ["mbpp"], ["single"]),
    *cells_for([_ONE_FIVE], ["mbpp"], ["refine"]),
    *cells_for([_ZERO_FIVE], ["mbpp"], ["text-critic"]),
    *cells_for([_ZERO_FIVE], ["mbpp"], ["refine-sampled", "resample"]),
)


def run_cells(cells: Sequence[Cell], out: Path, *, extra: Sequence[str] = (), dry_run: bool = False,
              python: str = sys.executable, after_each: Any = None) -> list[tuple[Cell, int]]:
    """Run each cell's pytest command in turn (resuming from its results file); returns the
    exit status of each. pytest exits 1 when items fail, which is a finished run here."""
    statuses = []
    for index, cell in enumerate(cells, 1):
        command = cell.command(out, extra)
        print(f"[{index}/{len(cells)}] ({verdicts_so_far(cell, out)}) {shlex.join(command)}", flush=True)
        if dry_run:
            continue
        results = cell.results_path(out)
        restore_results(results)
        verdicts_before = _line_count(results)
        status = subprocess.run([python, "-m", *command], check=False).returncode
        statuses.append((cell, status))
        if _line_count(results) > verdicts_before:
            record_machine(results)
        if status == pytest.ExitCode.NO_TESTS_COLLECTED:
            print("    every item already has a verdict in the results file", flush=True)
        elif status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            print(f"    exit status {status}: this cell did not finish", flush=True)
        if after_each is not None:
            after_each()
    return statuses


def verdicts_so_far(cell: Cell, out: Path) -> str:
    """How far the cell is: its results file's lines (or its committed copy's), one per item."""
    results = cell.results_path(out)
    done = _line_count(results if results.is_file() else compressed(results))
    size = BENCHMARK_SIZES.get(cell.benchmark)
    if done == 0:
        return "not started"
    if size is None:
        return f"{done} verdicts"
    return "finished" if done >= size else f"{done} of {size} verdicts"


def machine_facts() -> dict[str, Any]:
    """What the numbers of a run depend on beyond its settings: CPU, cores, llama.cpp build, and
    the commit of the checkout that runs it."""
    import os
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        build = "llama-cpp-python " + version("llama-cpp-python")
    except PackageNotFoundError:
        build = "llama-cpp-python not installed"
    try:
        import llama_cpp

        features = llama_cpp.llama_print_system_info().decode().strip()
    except Exception:  # noqa: BLE001 - a report must not fail on a missing backend
        features = ""
    try:  # the harness's own version: verdicts and prompts change with it
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "build": build, "features": features,
            "commit": commit}


def _machines_path(results: Path) -> Path:
    return results.with_name(results.name.removesuffix(".jsonl") + ".machines.json")


def _line_count(path: Path) -> int:
    """Lines of a file, gzipped or not (0 when it does not exist)."""
    if not path.is_file():
        return 0
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as lines:
        return sum(1 for _ in lines)


def record_machine(results: Path) -> None:
    """Adds this machine to the list of machines a cell ran on (a resumed cell may have moved)."""
    path = _machines_path(results)
    machines = json.loads(path.read_text()) if path.is_file() else []
    facts = machine_facts()
    if facts not in machines:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(machines + [facts], indent=1) + "\n")


def compressed(path: Path) -> Path:
    return path.with_name(path.name + ".gz")


def restore_results(path: Path) -> None:
    """A results file is committed gzipped: a fresh checkout resumes from that copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and compressed(path).is_file():
        with gzip.open(compressed(path), "rb") as source, path.open("wb") as target:
            shutil.copyfileobj(source, target)


def compress_results(cells: Iterable[Cell], out: Path) -> None:
    """Refresh the gzipped copy (the one to commit) of every results file present; mtime 0
    keeps an unchanged file's bytes unchanged."""
    for cell in cells:
        path = cell.results_path(out)
        if path.is_file():
            with path.open("rb") as source, gzip.GzipFile(compressed(path), "wb", mtime=0) as target:
                shutil.copyfileobj(source, target)


# The generations the study's cells made travel with their results: a machine without the
# cache answers every printed command from this export, as the machine that ran it does.
CACHE_EXPORT = "generations.jsonl.gz"


def cache_dir(pytest_args: Sequence[str]) -> Path | None:
    """The generation cache that `pytest *pytest_args` uses, resolved by pytest itself: the
    command line (addopts included), else the ini file's `codegen_cache`, else .codegen-cache
    in the rootdir; None when it is off. Raises ValueError when pytest or the plugin's checks
    reject the options (so that no cell starts with a bad one)."""
    import pytest

    from .ini import pin_from_ini
    from .plugin import settings_from_options
    from .settings import check_options

    class Probe:
        """Reads and checks the settings once pytest has parsed its configuration, then stops
        the run (before any plugin is configured)."""

        cache: str | None = None
        error = ""

        @pytest.hookimpl(tryfirst=True)
        def pytest_cmdline_main(self, config: pytest.Config) -> int:
            try:
                from_ini = pin_from_ini(config)  # first: it fills in what the command line left out
                settings = settings_from_options(config)
                check_options(settings, samples=config.getoption("samples"),
                              min_pass=config.getoption("codegen_min_pass"), names=from_ini)
            except (ValueError, pytest.UsageError) as error:
                self.error = f": {error}"
                return pytest.ExitCode.USAGE_ERROR
            self.cache = settings.cache_dir
            return pytest.ExitCode.OK

    probe = Probe()
    status = pytest.main(list(pytest_args), plugins=[probe])
    if status != 0:
        raise ValueError(f"pytest refused the cells' options (exit status {status}){probe.error}: "
                         f"{shlex.join(pytest_args)}")
    return None if probe.cache is None else Path(probe.cache)


def option_value(extra: Sequence[str], name: str) -> str | None:
    """The value of the pytest option `name` among `extra` (`--name=V` or `--name V`; the last)."""
    found = None
    for index, arg in enumerate(extra):
        if arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
        elif arg == name and index + 1 < len(extra):
            found = extra[index + 1]
    return found


def import_cache(out: Path, cache: Path | None) -> int:
    """Load the committed export into the cache (what the cache has stays); how many were new."""
    from .models.cache import GenerationCache

    export = out / CACHE_EXPORT
    if cache is None or not export.is_file():
        return 0
    generations = GenerationCache(cache)
    try:
        return generations.import_from(export)
    finally:
        generations.close()


def export_cache(cache: Path | None, out: Path) -> None:
    """Refresh the committed export from the cache (every generation it holds)."""
    from .models.cache import GenerationCache
    from .settings import CACHE_FILE

    if cache is None or not (cache / CACHE_FILE).is_file():
        return
    generations = GenerationCache(cache)
    try:
        generations.export_to(out / CACHE_EXPORT)
    finally:
        generations.close()


# ---------------------------------------------------------------------- the report


def _records(path: Path) -> list[Record]:
    from .results import read_run

    restore_results(path)
    return read_run([path]) if path.is_file() else []


def _cost(records: Sequence[Record]) -> tuple[str, str]:
    """Generated tokens and generation+execution seconds per solved problem (cached rounds
    count with the time they took when generated)."""
    solved = sum(r.passed for r in records)
    if not solved:
        return "n/a", "n/a"
    tokens = sum(r.tokens for r in records)
    # Each round's own seconds: a round answered from the cache (a refine row's first program
    # is its single row's) keeps the time its generation took. `gen_seconds` leaves those out.
    seconds = sum((sum(round_.seconds for round_ in r.rounds) or float(r.timing.get("gen_seconds", 0)))
                  + float(r.timing.get("exec_seconds", 0)) for r in records)
    return f"{tokens / solved:,.0f}", f"{seconds / solved:,.1f}"


def _fix_rates(records: Sequence[Record]) -> str:
    """`NameError 3/4, AssertionError 5/40`: fixed / failing first attempts, per first class."""
    firsts = Counter(r.verdicts[0] for r in records if r.verdicts[0] != PASSED)
    fixed = Counter(r.verdicts[0] for r in records if r.verdicts[0] != PASSED and r.passed)
    return ", ".join(f"{name} {fixed[name]}/{n}" for name, n in firsts.most_common())


def _refinement_activity(records: Sequence[Record]) -> str:
    """`15 refined, 2 changed`: failing first programs that went through a refinement round,
    and those of them whose refiner returned a program other than the first (a greedy refiner
    that re-emits its input cannot fix anything, whatever the feedback)."""
    refined = changed = 0
    for record in records:
        if record.verdicts[0] == PASSED or not record.rounds:
            continue
        first = record.rounds[0].program.strip()
        later = [r.program.strip() for r in record.rounds[1:] if r.role != "generate" and r.program]
        if later:
            refined += 1
            changed += any(program != first for program in later)
    return f"{refined} refined, {changed} changed"


# pass@1 (%) of the instruct models in the Qwen2.5-Coder technical report (arXiv 2409.12186),
# as the maker's figures are aggregated at whatmodel.sh (the paper's table could not be opened here).
REPORTED_PASS1 = {
    ("qwen-coder-0.5b", "humaneval"): 61.6, ("qwen-coder-0.5b", "mbpp"): 52.4,
    ("qwen-coder-1.5b", "humaneval"): 70.7, ("qwen-coder-1.5b", "mbpp"): 69.2,
}

BREAKDOWN = (
    "passed", "no code extracted", "truncated at max tokens", "entry point missing or misnamed",
    "syntax error", "NameError (undefined helper or import)", "wrong answer (AssertionError)",
)


def failure_breakdown(records: Sequence[Record], entry_points: Mapping[str, str],
                      max_tokens: int = 512) -> Counter[str]:
    """Why single attempts failed, separating what can be the harness's fault (no code found,
    output cut at max tokens, the function under another name) from wrong programs."""
    reasons: Counter[str] = Counter()
    for record in records:
        if record.passed:
            reasons["passed"] += 1
            continue
        completion_tokens = record.rounds[0].completion_tokens if record.rounds else 0
        outcome = record.outcome_class
        message = record.message
        entry = entry_points.get(record.problem_id, "")
        if outcome == "no code":
            reasons["no code extracted"] += 1
        elif completion_tokens >= max_tokens:
            reasons["truncated at max tokens"] += 1
        elif outcome == "NameError" and entry and f"'{entry}'" in message:
            reasons["entry point missing or misnamed"] += 1
        elif outcome in ("SyntaxError", "IndentationError"):
            reasons["syntax error"] += 1
        elif outcome == "NameError":
            reasons["NameError (undefined helper or import)"] += 1
        elif outcome == "AssertionError":
            reasons["wrong answer (AssertionError)"] += 1
        else:
            reasons[f"runtime error / limit ({outcome})"] += 1
    return reasons


def _entry_points(benchmark: str) -> tuple[dict[str, str], str]:
    """Each problem's entry point, and why there are none (the data could not be loaded)."""
    from .datasets import humaneval, mbpp

    try:
        problems = humaneval.load_problems() if benchmark == "humaneval" else mbpp.load_problems()
    except Exception as error:  # misnamed functions are then counted under NameError: said so
        return {}, f"{type(error).__name__}: {error}"
    return {p.id: p.entry_point for p in problems}, ""


def _breakdown_section(cells: Sequence[Cell], loaded: Mapping[Cell, list[Record]]) -> list[str]:
    from tabulate import tabulate

    singles = [c for c in cells if c.row == "single" and c in loaded]
    if not singles:
        return []
    entry_points = {b: _entry_points(b) for b in {c.benchmark for c in singles}}
    columns = {c: failure_breakdown(loaded[c], entry_points[c.benchmark][0]) for c in singles}
    unknown = [f"{benchmark}'s entry points could not be loaded, so its misnamed functions are counted "
               f"under NameError ({why[:300]}; for MBPP, pass --mbpp-data or set CODEGEN_MBPP_DATA)."
               for benchmark, (_, why) in sorted(entry_points.items()) if why]
    reasons = list(BREAKDOWN) + sorted({r for counts in columns.values() for r in counts} - set(BREAKDOWN))
    rows = [[reason, *(columns[c][reason] for c in singles)] for reason in reasons]
    rows += [["pass@1 here (%)", *(f"{100 * columns[c]['passed'] / len(loaded[c]):.1f}" for c in singles)],
             ["pass@1, technical report (%)", *(str(REPORTED_PASS1.get((c.model, c.benchmark), "–"))
                                                for c in singles)]]
    return ["## Single-pass outcomes, broken down", "",
            "What became of each `single` program. The first four lines are where a harness can be at "
            "fault (extraction, a token budget, naming); the rest are the model's programs failing. "
            "The last line is the Qwen2.5-Coder technical report's figure for the instruct model "
            "(bf16, its own prompts and harness; its MBPP is not the sanitized 427-problem set).", "",
            tabulate(rows, tablefmt="github", disable_numparse=True,
                     headers=["outcome", *(f"{c.model} {c.benchmark}" for c in singles)]), "",
            *(line for note in unknown for line in (note, ""))]


def render_report(out: Path, cells: Sequence[Cell], commands_prefix: str = "") -> str:
    """The markdown report of every cell whose results file exists."""
    from tabulate import tabulate

    from .stats import ComparisonError, compare, pass1_summary

    loaded = {cell: _records(cell.results_path(out)) for cell in cells}
    loaded = {cell: records for cell, records in loaded.items() if records}
    parts = ["# Study results", "",
             "Greedy decoding (temperature 0) unless a row says otherwise (the sampled rows' later rounds "
             "sample at T = 0.2), one sample per problem, feedback as stated per row. "
             "Δ and McNemar compare each row with the `single` row of the same model (for `split`, of its "
             "generator), paired: the same first program; the role split against the larger model doing "
             "both roles has a table of its own below. A row whose first programs are not `single`'s "
             "(MBPP with `--feedback=hidden`: "
             "its generation prompt shows every scoring test, not only the first) is compared with its own "
             "first programs instead. z = (c − b)/√(b + c) is the paired normal statistic; the study's "
             "σ = Δ/√(SD₁² + SD₂²) needs several samples per run (use `--samples`).", ""]
    for benchmark in sorted({c.benchmark for c in loaded}):
        rows = []
        for cell in (c for c in cells if c in loaded and c.benchmark == benchmark):
            records = loaded[cell]
            summary = pass1_summary(records)[benchmark]
            base_cell = _baseline(cell, loaded)
            delta = p = z = "–"
            if base_cell is not None:
                try:
                    baseline, against = _paired_baseline(loaded[base_cell], records)
                    comparison = compare(baseline, records, restrict_to_common=True).benchmarks[0]
                    delta = f"{comparison.delta:+.0f} ({comparison.delta_pass1:+.3f}){against}"
                    p = f"{comparison.p_value:.2g}"
                    discordant = comparison.b + comparison.c
                    z = f"{(comparison.c - comparison.b) / discordant ** 0.5:+.1f}" if discordant else "0"
                    if comparison.problems != summary.problems or comparison.problems != len(loaded[base_cell]):
                        delta += f" on {comparison.problems}"
                except ComparisonError as error:
                    delta = f"not comparable: {error}"
            tokens, seconds = _cost(records)
            size = BENCHMARK_SIZES.get(benchmark, summary.problems)
            rows.append([
                cell.model, cell.label,
                f"{summary.problems}" if summary.problems >= size else f"{summary.problems} of {size} (unfinished)",
                f"{summary.mean:.3f} [{summary.ci[0]:.3f}, {summary.ci[1]:.3f}]",
                delta, p, z, _fix_rates(records) if cell.row != "single" else "",
                _refinement_activity(records) if cell.row != "single" else "", tokens, seconds,
            ])
        parts += [f"## {benchmark}", "", tabulate(rows, tablefmt="github", disable_numparse=True, headers=[
            "model", "row", "problems", "pass@1 [95% CI]", "Δ solved vs baseline", "McNemar p", "z",
            "fixed/failing first attempts, by class", "failing first programs", "tokens/solved",
            "s/solved"]), ""]
    parts += _repair_vs_resample_section(cells, loaded)
    parts += _role_split_section(cells, loaded)
    parts += _breakdown_section(cells, loaded)
    parts += _machines_section(cells, loaded, out)
    parts += _figures_section(cells, loaded, out)
    parts += ["## Rows", ""] + [
        f"- `{row.name}`: {row.description.format(model='the model', big='the larger model')}"
        for row in ROWS.values() if any(c.row == row.name for c in cells)
    ] + [""]
    parts += ["## Commands", "", "Each row is one command (run from the repository root); running it again "
              "resumes from its results file and answers finished generations from the cache.", ""]
    for cell in cells:
        mark = "" if cell in loaded else "  # not run yet"
        parts.append(f"    {commands_prefix}{shlex.join(cell.command(out))}{mark}")
    return "\n".join(parts) + "\n"


def _paired_section(title: str, text: str, pairs_header: str,
                    pairs: Iterable[tuple[Cell, Cell, str]], loaded: Mapping[Cell, list[Record]]) -> list[str]:
    """A table of row A against row B, paired by problem, for each (A, B, label) both of whose
    cells have results; Δ = B − A."""
    from tabulate import tabulate

    from .stats import ComparisonError, compare

    rows = []
    for first, second, label in pairs:
        if first not in loaded or second not in loaded:
            continue
        try:
            comparison = compare(loaded[first], loaded[second], restrict_to_common=True).benchmarks[0]
        except ComparisonError as error:
            rows.append([first.model, first.benchmark, label, f"not comparable: {error}", "", "", "", ""])
            continue
        rows.append([first.model, first.benchmark, label, str(comparison.problems),
                     f"{comparison.run_a.solved:.0f} / {comparison.run_b.solved:.0f}", f"{comparison.delta:+.0f}",
                     f"{comparison.b} / {comparison.c}", f"{comparison.p_value:.2g}"])
    if not rows:
        return []
    return [f"## {title}", "", text, "", tabulate(rows, tablefmt="github", disable_numparse=True, headers=[
        "model", "benchmark", pairs_header, "problems", "solved", "Δ", "b / c", "McNemar p"]), ""]


def _repair_vs_resample_section(cells: Sequence[Cell], loaded: Mapping[Cell, list[Record]]) -> list[str]:
    """Each sampled refiner row against its resampling control."""
    pairs = [(cell, dataclasses.replace(cell, row=resample), f"{repair} / {resample}")
             for cell in cells for repair, resample in REPAIR_VS_RESAMPLE if cell.row == repair]
    return _paired_section(
        "Repairing against sampling again",
        "A sampled refiner (shown its failing program and the feedback) against its control, which "
        "samples the task again at the same temperature with the same rounds and stopping rule: "
        "what the feedback adds over drawing another program. Δ = control − refiner; b: only the "
        "refiner solved the problem, c: only the control did.",
        "refiner / control", pairs, loaded)


def _role_split_section(cells: Sequence[Cell], loaded: Mapping[Cell, list[Record]]) -> list[str]:
    """Each `split` row (small generator, big refiner) against the big model doing both."""
    pairs = [(cell, Cell(cell.big or "", cell.benchmark, "refine"), f"split / {cell.big} refine")
             for cell in cells if cell.row == "split"]
    return _paired_section(
        "The role split",
        "The small model generating and the larger one refining, against the larger model doing both "
        "(its `refine` row: its own first program, the same rounds and feedback). Δ = both roles − split; "
        "b: only the split solved the problem, c: only the larger model alone did.",
        "split / larger model alone", pairs, loaded)


def _machines_section(cells: Sequence[Cell], loaded: Mapping[Cell, Any], out: Path) -> list[str]:
    seen: dict[str, list[str]] = {}
    for cell in cells:
        path = _machines_path(cell.results_path(out))
        if cell in loaded and path.is_file():
            for machine in json.loads(path.read_text()):
                key = (f"{machine['cpu']}, {machine['cores']} cores, {machine['build']} ({machine['features']}), "
                       f"pytest-codegen at {machine.get('commit', 'unknown')}")
                seen.setdefault(key, []).append(f"{cell.model} {cell.benchmark} {cell.label}")
    if not seen:
        return []
    lines = ["## Machines and build", ""]
    for machine, which in seen.items():
        lines.append(f"- {machine}: {', '.join(which)}")
    return lines + [""]


def _figures_section(cells: Sequence[Cell], loaded: Mapping[Cell, list[Record]], out: Path) -> list[str]:
    """`pytest-codegen report --plot` figures of every refinement cell."""
    try:
        from .figures import PlotUnavailable, write_figures
    except ImportError:
        return []
    lines = []
    for cell in cells:
        if cell not in loaded or cell.row == "single":
            continue
        directory = out / "figures" / f"{cell.model}-{cell.benchmark}-{cell.results_path(out).stem.split('-', 1)[1]}"
        try:
            paths = write_figures(loaded[cell], directory)
        except (PlotUnavailable, ValueError):
            return []
        links = ", ".join(f"[{p.stem}]({p.relative_to(out)})" for p in paths)
        lines.append(f"- {cell.model} {cell.benchmark} {cell.label}: {links}")
    return ["## Figures", "", *lines, ""] if lines else []


def _paired_baseline(baseline: list[Record], records: Sequence[Record]) -> tuple[list[Record], str]:
    """What a row is compared with (`single`'s records, or its own first programs when they are
    not single's), and how the Δ cell says so when that is not `single`."""
    if not _same_first_programs(baseline, records):
        firsts = [_as_first_attempt(r) for r in records]
        return firsts, f" vs its own first programs ({sum(r.passed for r in firsts)} solved)"
    return [r.without_properties("feedback") for r in baseline], ""  # single shows no test results


def _same_first_programs(single: Sequence[Record], records: Sequence[Record]) -> bool:
    """Whether each problem's first program in `records` is the one `single` ran (records
    without rounds, as hand-written ones, are taken to be)."""
    firsts = {r.item: r.rounds[0].program for r in single if r.rounds}
    return all(firsts.get(r.item, r.rounds[0].program) == r.rounds[0].program for r in records if r.rounds)


def _as_first_attempt(record: Record) -> Record:
    """The record as if its pipeline had stopped after the first program: its first verdict."""
    first = record.verdicts[0]
    return dataclasses.replace(record, passed=first == PASSED, outcome_class=first, round_outcomes=(first,),
                               rounds=record.rounds[:1])


def _baseline(cell: Cell, loaded: Mapping[Cell, Any]) -> Cell | None:
    """The `single` cell a row is compared with (its generator's), once it has results."""
    candidate = Cell(cell.model, cell.benchmark, "single")
    return candidate if cell.row != "single" and candidate in loaded else None
