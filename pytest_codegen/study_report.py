"""The study's report: the markdown tables of every cell whose results file exists (see `study`).

pass@1 with a bootstrap interval, Δ against `single` with exact McNemar, error transitions and
fix rates, cost per solved problem, the refiner-against-resampling and role-split pairs, the
single-pass failure breakdown, the machines, figures and each row's command.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .outcome import PASSED
from .study import BENCHMARK_SIZES, REPAIR_VS_RESAMPLE, ROWS, Cell, machines_path, read_results

if TYPE_CHECKING:
    from .record import Record

__all__ = ["BREAKDOWN", "REPORTED_PASS1", "failure_breakdown", "render_report"]


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

    loaded = {cell: read_results(cell.results_path(out)) for cell in cells}
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
        path = machines_path(cell.results_path(out))
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
