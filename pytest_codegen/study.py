"""The study's experiment as a named matrix of runs, each an ordinary pytest command.

A *cell* is one configuration (a row of the study's table) of one model on one benchmark. Its
command is the plain ``pytest benchmarks/BENCH ...`` a user could type, writing a results file
under the study's directory; re-running it resumes from that file and answers every finished
generation from the generation cache, so the whole matrix can be stopped and restarted at will.
`run_cells` runs the missing ones; `study_report.render_report` turns whatever results exist
into the markdown report.

Every cell is greedy (temperature 0; the sampled pair's later rounds sample at the study's
0.2, each with a seed of its problem and round, so they too are cached and re-run alike) and
decoded one sequence at a time: the first attempt of a refinement row is then the `single`
row's program wherever its generation prompt is the same, so the Δ columns are paired
comparisons of the same first programs. Where it is not (MBPP with
`--feedback=hidden` shows every scoring test in the prompt), a row is compared with its own
first programs.
"""

from __future__ import annotations

import gzip
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .record import Record

__all__ = [
    "CACHE_EXPORT", "Cell", "ROWS", "Row", "STUDY_PLAN", "cache_dir", "cells_for", "compress_results",
    "export_cache", "import_cache", "machines_path", "option_value", "read_results", "restore_results",
    "run_cells", "unexported_generations",
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


def machines_path(results: Path) -> Path:
    return results.with_name(results.name.removesuffix(".jsonl") + ".machines.json")


def _line_count(path: Path) -> int:
    """Lines of a file, gzipped or not (0 when it does not exist)."""
    if not path.is_file():
        return 0
    with (gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")) as lines:
        return sum(1 for _ in lines)


def record_machine(results: Path) -> None:
    """Adds this machine to the list of machines a cell ran on (a resumed cell may have moved)."""
    path = machines_path(results)
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


def read_results(path: Path) -> list[Record]:
    """A cell's records, from its results file or its committed gzipped copy (none if neither)."""
    from .results import read_run

    restore_results(path)
    return read_run([path]) if path.is_file() else []


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


def unexported_generations(cells: Iterable[Cell], out: Path) -> dict[Cell, list[str]]:
    """Per cell, the problems with a generated round (not answered from the cache when it ran)
    whose request the committed export lacks: what `--verify` would have to generate again."""
    from .models.backend import GenerationRequest
    from .models.cache import read_export

    exported = {GenerationRequest(**json.loads(row["request"])).digest()[:16]  # a round's request_hash
                for row in (read_export(out / CACHE_EXPORT) if (out / CACHE_EXPORT).is_file() else ())}
    missing = {}
    for cell in cells:
        problems = sorted({record.problem_id for record in read_results(cell.results_path(out))
                           for step in record.rounds if not step.cached and step.request_hash not in exported})
        if problems:
            missing[cell] = problems
    return missing


def export_cache(cache: Path | None, out: Path) -> None:
    """Refresh the committed export from the cache: every generation it holds, and every one the
    export held before (a cache that lacks some, such as a new machine's that never imported the
    export, must not drop generations that finished rows were answered from)."""
    from .models.cache import GenerationCache
    from .settings import CACHE_FILE

    if cache is None or not (cache / CACHE_FILE).is_file():
        return
    export = out / CACHE_EXPORT
    generations = GenerationCache(cache)
    try:
        if export.is_file():
            generations.import_from(export)
        generations.export_to(export)
    finally:
        generations.close()
