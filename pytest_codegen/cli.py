"""The ``pytest-codegen`` command.

Each subcommand is one function, registered with `@subcommand`, that takes the parsed
arguments and returns the exit status::

    @subcommand("report", help="...", arguments=[argument("run_dir", type=Path)])
    def cmd_report(args: argparse.Namespace) -> int:
        ...

Every subcommand also gets ``--rootdir`` (the project whose pyproject.toml is read). Expected
failures (unknown model, model not available, bad configuration) are raised as `CLIError`,
`UnknownModel`, `ModelNotAvailable` or `ModelConfigError` and end with exit status 2 and the
message on stderr, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_codegen.models.registry import (
    ModelConfigError,
    ModelNotAvailable,
    Registry,
    UnknownModel,
)
from pytest_codegen.settings import CACHE_DIR

if TYPE_CHECKING:
    from pytest_codegen.record import Record
    from pytest_codegen.study import Cell

PROG = "pytest-codegen"
EXIT_OK = 0
EXIT_FAILED = 1  # a check found what it looks for (a row not reproduced)
EXIT_USAGE = 2


class CLIError(Exception):
    """An expected failure: its message is shown on stderr and the exit status is 2."""


_EXPECTED_ERRORS = (CLIError, UnknownModel, ModelNotAvailable, ModelConfigError)


@dataclass(frozen=True)
class _Argument:
    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


def argument(*flags: str, **kwargs: Any) -> _Argument:
    """An `add_argument` call, for `subcommand(arguments=[...])`."""
    return _Argument(flags, kwargs)


@dataclass(frozen=True)
class _Subcommand:
    name: str
    help: str
    description: str | None
    arguments: tuple[_Argument, ...]
    run: Callable[[argparse.Namespace], int]


_SUBCOMMANDS: dict[str, _Subcommand] = {}


def subcommand(
    name: str, *, help: str, description: str | None = None, arguments: Sequence[_Argument] = ()
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register `func(args) -> exit status` as ``pytest-codegen NAME``."""

    def register(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        if name in _SUBCOMMANDS:
            raise ValueError(f"subcommand {name!r} registered twice")
        _SUBCOMMANDS[name] = _Subcommand(name, help, description or func.__doc__, tuple(arguments), func)
        return func

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Evaluate code-generation pipelines of small local GGUF models."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--rootdir",
        type=Path,
        default=None,
        help="project directory whose pyproject.toml defines model aliases (default: current directory)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _SUBCOMMANDS.values():
        sub = commands.add_parser(
            command.name,
            parents=[common],
            help=command.help,
            description=command.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for arg in command.arguments:
            sub.add_argument(*arg.flags, **arg.kwargs)
        sub.set_defaults(run=command.run)
    return parser


def load_registry(args: argparse.Namespace) -> Registry:
    """The registry of the project at ``--rootdir`` (default: the current directory)."""
    return Registry.from_pyproject(args.rootdir if args.rootdir is not None else Path.cwd())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run(args)
    except _EXPECTED_ERRORS as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------- routes


@subcommand(
    "routes",
    help="which tests the sandbox server checks itself, and which run in the candidate's process",
    description=(
        "Count a benchmark's scoring tests by where the sandbox runs them: checked by the server\n"
        "(the candidate only answers calls with plain data) or in the candidate's process (tests\n"
        "that need more of the program than its entry point), and list the latter with the reason."
    ),
    arguments=[
        argument("--benchmark", choices=("humaneval", "mbpp"), default="humaneval"),
        argument("--mbpp-data", metavar="PATH", help="sanitized MBPP file (see the README)"),
    ],
)
def cmd_routes(args: argparse.Namespace) -> int:
    from pytest_codegen import _sandbox_routes
    from pytest_codegen.datasets import humaneval, mbpp

    try:
        problems = humaneval.load_problems() if args.benchmark == "humaneval" else mbpp.load_problems(args.mbpp_data)
    except mbpp.MBPPDataError as error:
        raise CLIError(str(error)) from error
    tally = _sandbox_routes.tally(problems)
    total = sum(tally.tests.values())
    print(f"{args.benchmark}: {total} scoring tests of {sum(tally.problems.values())} problems")
    for path, label in ((_sandbox_routes.CHECKED, "checked by the server"),
                        (_sandbox_routes.IN_PROCESS, "in the candidate's process")):
        print(f"  {label:28s} {tally.tests[path]:5d} tests")
    for kind in ("every test checked", "some in process", "every test in process"):
        print(f"  problems, {kind:23s} {tally.problems[kind]:5d}")
    for task, test, reason in tally.in_process:
        print(f"  in process: {task} {test}: {reason}")
    return EXIT_OK


# ---------------------------------------------------------------------- models


@subcommand(
    "models",
    help="list the known models, or download some",
    description=(
        "List model aliases with their mode, source, Ollama-style names and whether the file is\n"
        "on this machine (checked without network), or fetch models with --download.\n"
        "Project aliases come from [tool.pytest_codegen.models] in ROOTDIR/pyproject.toml."
    ),
    arguments=[
        argument(
            "--download",
            nargs="+",
            metavar="MODEL",
            help="fetch these models (aliases, Ollama-style names) into the local cache",
        ),
    ],
)
def cmd_models(args: argparse.Namespace) -> int:
    registry = load_registry(args)
    if args.download:
        return _download(registry, args.download)
    _print_models(registry)
    return EXIT_OK


def _print_models(registry: Registry) -> None:
    from tabulate import tabulate

    rows = []
    for spec in registry.specs():
        alias = spec.alias + (" *" if registry.is_user_alias(spec.alias) else "")
        present = registry.present_source(spec)
        rows.append(
            [
                alias,
                spec.mode,
                "\n".join(f"{n}. {source}" for n, source in enumerate(spec.sources, 1)),
                "sha256" + (" + size" if spec.pin.size else "") if spec.pin else "",
                ", ".join(registry.ollama_names(spec.alias)),
                _presence(spec.sources, present),
            ]
        )
    print(tabulate(rows, headers=["alias", "mode", "sources (tried in order)", "pinned", "ollama names", "present"]))
    print()
    if any(registry.is_user_alias(spec.alias) for spec in registry.specs()):
        print(f"* defined in {registry.config_file}")
    print(f"Hugging Face cache: {registry.hf_cache_dir}" + ("  (HF_HUB_OFFLINE is set)" if registry.offline() else ""))
    print(f"Files from other sources: {registry.models_dir}")
    print("present: 'yes (N)' names the source the file on this machine came from")
    print(f"Fetch a model with: {PROG} models --download ALIAS")


def _presence(sources: tuple[str, ...], present: str | None) -> str:
    if present is None:
        return "no"
    return f"yes ({sources.index(present) + 1})" if present in sources else f"yes ({present})"


def _download(registry: Registry, names: list[str]) -> int:
    failed = 0
    for name in names:
        try:
            spec = registry.resolve(name)
            path = registry.locate(spec, download=True)
        except _EXPECTED_ERRORS as exc:
            _error(f"{name}: {exc}")
            failed += 1
            continue
        print(f"{spec.alias}: {path}")
    return EXIT_USAGE if failed else EXIT_OK


# ---------------------------------------------------------------------- report, compare


def _load_run(paths: Sequence[Path]) -> list[Record]:
    """The records of one run: its results file, or the files of its shards (a run split across
    machines), given one by one or as the directory they were gathered in."""
    from pytest_codegen.results import SUFFIXES, ResultsFileError, read_run, run_files

    files = []
    for path in paths:
        if not path.exists():
            raise CLIError(f"{path}: no such results file")
        found = run_files(path)
        if not found:
            raise CLIError(f"{path}: no results files ({', '.join('*' + s for s in SUFFIXES)}) in this directory")
        files += found
    try:
        records = read_run(files)
    except ResultsFileError as exc:
        raise CLIError(f"{exc.path}: {exc}") from exc
    if not records:
        raise CLIError(f"{', '.join(map(str, paths))}: no records")
    return records


@subcommand(
    "report",
    help="tables, pass@k and pass@1 statistics of a results file",
    description=(
        "Print the outcome tables of a results file (as the pytest run does), the pass@k table,\n"
        "pass@1 mean ± SD over sample indices and its 95% bootstrap interval over problems.\n"
        "A run split across machines is given as its shards' files, or the directory they are\n"
        "in: shards of other runs (other settings) or with an item in common are refused.\n"
        "--plot DIR also writes error_taxonomy.png, early_stopping.png and net_effect.png."
    ),
    arguments=[
        # not "run": that is where build_parser keeps the subcommand function
        argument("results", type=Path, nargs="+", metavar="RUN.jsonl",
                 help="results file of a run (.jsonl or .jsonl.gz), its shards' files, or a directory of them"),
        argument("--plot", type=Path, metavar="DIR", help="write the figures into DIR (needs matplotlib)"),
    ],
)
def cmd_report(args: argparse.Namespace) -> int:
    from pytest_codegen.report import render_tables
    from pytest_codegen.stats import StatsError, render_pass_stats

    records = _load_run(args.results)
    try:
        text = render_tables(records) + "\n\n" + render_pass_stats(records)
    except StatsError as exc:
        raise CLIError(f"{', '.join(map(str, args.results))}: {exc}") from exc
    print(text)
    if args.plot is not None:
        from pytest_codegen.figures import PlotUnavailable, write_figures

        try:
            paths = write_figures(records, args.plot)
        except PlotUnavailable as exc:
            raise CLIError(str(exc)) from exc
        print()
        for path in paths:
            print(f"wrote {path}")
    return EXIT_OK


@subcommand(
    "compare",
    help="compare two runs problem by problem (McNemar, paired bootstrap, σ effect)",
    description=(
        "Per benchmark: problems, problems solved by A and B (mean over samples), Δ = B − A,\n"
        "exact McNemar test on discordant pairs, paired bootstrap 95% interval of Δ pass@1 and\n"
        "the effect in σ = Δ / √(SD_A² + SD_B²), SDs over sample indices. Runs of different\n"
        "benchmarks, feedback policies or problem sets are refused (exit status 2); --common\n"
        "compares the problems both runs share instead. A run split across machines is given as\n"
        "the directory of its shards' files."
    ),
    arguments=[
        argument("run_a", type=Path, metavar="A.jsonl",
                 help="results file of the baseline run, or a directory of its shards' files"),
        argument("run_b", type=Path, metavar="B.jsonl",
                 help="results file of the run compared with it, or a directory of its shards' files"),
        argument("--common", action="store_true", help="restrict both runs to the problems they share"),
    ],
)
def cmd_compare(args: argparse.Namespace) -> int:
    from pytest_codegen.stats import ComparisonError, StatsError, compare, render_comparison

    a_records, b_records = _load_run([args.run_a]), _load_run([args.run_b])
    try:
        comparison = compare(a_records, b_records, restrict_to_common=args.common)
    except ComparisonError as exc:
        hint = "; --common compares the problems both share" if exc.restrictable else ""
        raise CLIError(f"cannot compare {args.run_a} with {args.run_b}: {exc}{hint}") from exc
    except StatsError as exc:
        raise CLIError(str(exc)) from exc
    print(f"A = {args.run_a}\nB = {args.run_b}\n")
    print(render_comparison(comparison))
    return EXIT_OK


# ---------------------------------------------------------------------- study


def _csv(text: str) -> tuple[str, ...]:
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


@subcommand(
    "study",
    help="run the study's matrix of configurations (resumable) and write its report",
    description=(
        "Runs each cell (model x benchmark x row) as the plain pytest command it prints, with a\n"
        "results file under OUT/runs/; a cell already finished is answered from its results file\n"
        "and the generation cache. After each cell, OUT/README.md is rewritten from every results\n"
        "file present. Without --models/--benchmarks/--rows, the built-in plan runs (the required\n"
        "coverage first)."
    ),
    arguments=[
        argument("--out", type=Path, default=Path("docs/results"), help="report directory (docs/results)"),
        argument("--models", type=_csv, metavar="A,B", help="models (default: the built-in plan)"),
        argument("--benchmarks", type=_csv, default=("humaneval", "mbpp"), metavar="humaneval,mbpp"),
        argument("--rows", type=_csv, metavar="single,refine,...", help="rows (default: all)"),
        argument("--big", default="qwen-coder-1.5b", help="the refiner of the `split` row (qwen-coder-1.5b)"),
        argument("--dry-run", action="store_true", help="print the commands only"),
        argument("--report-only", action="store_true", help="write the report from the results present"),
        argument("--verify", action="store_true",
                 help="re-run each finished row's command into a scratch directory and compare it with its "
                      "results, round by round (exit 1 if a row is not reproduced)"),
        argument("pytest_args", nargs="*", metavar="-- PYTEST_ARGS", help="extra pytest options for every cell"),
    ],
)
def cmd_study(args: argparse.Namespace) -> int:
    from pytest_codegen.study import (
        CACHE_EXPORT,
        ROWS,
        STUDY_PLAN,
        cache_dir,
        cells_for,
        compress_results,
        export_cache,
        import_cache,
        option_value,
        run_cells,
        unexported_generations,
    )
    from pytest_codegen.study_report import render_report

    if args.verify and (args.report_only or args.dry_run):
        raise CLIError("--verify re-runs the finished rows: it does not go with --report-only or --dry-run")
    if args.models or args.rows:
        rows = args.rows or tuple(ROWS)
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise CLIError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(ROWS)}")
        cells = cells_for(args.models or ("qwen-coder-0.5b",), args.benchmarks, rows, big=args.big)
    else:
        cells = [c for c in STUDY_PLAN if c.benchmark in args.benchmarks]
    out: Path = args.out
    try:
        cache = cache_dir(cells[0].command(out, args.pytest_args)[1:]) if cells else None
    except ValueError as error:
        raise CLIError(str(error)) from None
    mbpp_data = option_value(args.pytest_args, "--mbpp-data")
    if mbpp_data is not None:  # the report reads MBPP's entry points as the cells' pytest does
        os.environ["CODEGEN_MBPP_DATA"] = mbpp_data

    def write_report() -> None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "README.md").write_text(render_report(out, cells))
        compress_results(cells, out)
        export_cache(cache, out)
        for cell, problems in unexported_generations(cells, out).items():
            print(f"warning: {cell.model} {cell.benchmark} {cell.label}: {len(problems)} problems have generations "
                  f"that {out / CACHE_EXPORT} lacks ({', '.join(problems[:5])}{' …' if len(problems) > 5 else ''}); "
                  "a re-run of the row will generate them again")

    if not args.dry_run:
        try:
            added = import_cache(out, cache)
        except ValueError as error:
            raise CLIError(str(error)) from None
        if added:
            print(f"{added} generations from {out / CACHE_EXPORT} added to the cache in {cache}")
    if args.verify:
        return _verify_study(cells, out, cache, args.pytest_args)
    if not args.report_only:
        run_cells(cells, out, extra=args.pytest_args, dry_run=args.dry_run, after_each=write_report)
    if not args.dry_run:
        write_report()
        print(f"wrote {out / 'README.md'}")
    return EXIT_OK


def _verify_study(cells: list[Cell], out: Path, cache: Path | None, pytest_args: list[str]) -> int:
    import tempfile

    from pytest_codegen.study_verify import verify_cells

    with tempfile.TemporaryDirectory(prefix="pytest-codegen-verify-") as scratch:
        checks = verify_cells(cells, out, Path(scratch), cache=cache, extra=pytest_args)
    if not checks:
        print("no finished row to verify")
    failed = [cell for cell, check in checks if not check.reproduced]
    regenerated = sum(bool(check.generated) for _, check in checks)
    print(f"{len(checks) - len(failed)} of {len(checks)} finished rows reproduced; "
          f"{regenerated} made a generation the cache did not answer")
    return EXIT_OK if not failed else EXIT_FAILED


# ---------------------------------------------------------------------- evolve


@subcommand(
    "evolve",
    help="search pipeline genomes (NEAT-style), then check the champion on held-out problems",
    description=(
        "Evolve pipeline genomes (generator + 1-3 refinement stages) on a search subset of a\n"
        "benchmark: fitness = mean pass rate over K evaluations − 0.02 × nodes. Then re-run the\n"
        "champion and the baseline (first model of --models, plain refine loop of 3 rounds) on\n"
        "held-out problems with K' fresh seeds: selection inflation and a paired McNemar test.\n"
        "Writes OUT/champion.json (runs with pytest --pipeline=OUT/champion.json), genomes.jsonl,\n"
        "report.txt and checkpoint.json; an existing OUT resumes with the same command."
    ),
    arguments=[
        argument("--benchmark", choices=("humaneval", "mbpp"), default="humaneval"),
        argument("--mbpp-data", metavar="PATH", help="sanitized MBPP file (see the README)"),
        argument("--problems", type=int, default=25, metavar="N", help="search problems (25)"),
        argument("--holdout", type=int, default=25, metavar="N", help="held-out problems, disjoint (25)"),
        argument("--population", type=int, default=20, metavar="N", help="genomes per generation (20)"),
        argument("--generations", type=int, default=10, metavar="N", help="generations (10)"),
        argument("--evaluations", type=int, default=3, metavar="K", help="evaluations (seeds) per genome (3)"),
        argument("--holdout-evaluations", type=int, default=3, metavar="K",
                 help="fresh evaluations of champion and baseline on the held-out problems (3)"),
        argument("--models", type=_csv, default=("gemma-270m",), metavar="A,B,...",
                 help="the model pool; the first is the baseline's (default gemma-270m)"),
        argument("--seed", type=int, default=0),
        argument("--out", type=Path, required=True, metavar="DIR",
                 help="output directory; an existing one with a checkpoint resumes"),
        argument("--workers", type=int, default=1, metavar="N",
                 help="evaluation processes (spawned; llama.cpp threads = cores // N)"),
        argument("--codegen-cache", metavar="DIR", default=CACHE_DIR,
                 help=f"SQLite generation cache shared by the workers (default {CACHE_DIR})"),
        argument("--no-codegen-cache", action="store_true", help="no generation cache"),
        argument("--max-tokens", type=int, default=512, metavar="N"),
        argument("--difficulty-from", metavar="RUN.jsonl",
                 help="results file: stratify both subsets by its per-problem pass rate"),
        argument("--feedback", choices=("visible", "hidden"), default="visible"),
        argument("--species", type=int, default=4, metavar="N", help="target number of species (4)"),
        argument("--switch-kind", type=float, default=0.0, metavar="RATE",
                 help="beyond the study: per-genome rate of turning a stage into a resample stage "
                      "(a fresh program from the task, no feedback) or back (0: the study's search)"),
        argument("--no-progress", action="store_true", help="no progress bar"),
    ],
)
def cmd_evolve(args: argparse.Namespace) -> int:
    from pytest_codegen.evolve import EvolveError, SearchConfig, search
    from pytest_codegen.evolve.operators import MutationRates

    config = SearchConfig(
        out=str(args.out), benchmark=args.benchmark, mbpp_data=args.mbpp_data,
        problems=args.problems, holdout=args.holdout, population=args.population,
        generations=args.generations, evaluations=args.evaluations,
        holdout_evaluations=args.holdout_evaluations, models=args.models, seed=args.seed,
        workers=args.workers, codegen_cache=None if args.no_codegen_cache else args.codegen_cache,
        max_tokens=args.max_tokens, difficulty_from=args.difficulty_from, feedback=args.feedback,
        target_species=args.species, rates=MutationRates(switch_kind=args.switch_kind),
        rootdir=str(args.rootdir if args.rootdir is not None else Path.cwd()),
        progress=not args.no_progress,
    )
    try:
        result = search(config)
    except EvolveError as exc:
        raise CLIError(str(exc)) from exc
    print(result.report)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
