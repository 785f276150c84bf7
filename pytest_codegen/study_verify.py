"""Checking that the study's finished rows are reproducible from their printed commands.

`verify_cells` re-runs each finished cell's command exactly as printed, but writing to a results
file of its own, and compares it item by item with the recorded one: the outcome of every round,
the final program, and whether any generation had to be made anew (a round not answered from
the generation cache records the seconds its generation took in `timing.gen_seconds`). A row is
reproduced when every item has the same outcomes in every round (another final program alone is
reported, not counted against it); a regenerated prompt is reported by name, since it means the
harness now asks the model something it did not ask then.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .study import BENCHMARK_SIZES, Cell, read_results

if TYPE_CHECKING:
    from .record import Record

__all__ = ["RerunCheck", "compare_rerun", "verify_cells"]


@dataclass(frozen=True)
class RerunCheck:
    """A re-run against the recorded run, by item (`problem` or `problem#sample`)."""

    items: int
    missing: tuple[str, ...] = ()  # items the re-run gave no verdict
    passes_differ: tuple[str, ...] = ()  # passed in one run and not in the other
    outcomes_differ: tuple[str, ...] = ()  # some round's outcome is not the recorded one
    programs_differ: tuple[str, ...] = ()  # the final program is not the recorded one
    generated: tuple[str, ...] = ()  # items with a generation the cache did not answer

    @property
    def reproduced(self) -> bool:
        return not (self.missing or self.passes_differ or self.outcomes_differ)

    def describe(self) -> str:
        def names(items: tuple[str, ...]) -> str:
            return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")

        parts = [f"{self.items} items: " + ("reproduced" if self.reproduced else "NOT reproduced")]
        for label, items in (("no verdict", self.missing), ("passed in one run only", self.passes_differ),
                             ("other round outcomes", self.outcomes_differ),
                             ("another final program", self.programs_differ),
                             ("generated anew", self.generated)):
            if items:
                parts.append(f"{label} {len(items)} ({names(items)})")
        return "; ".join(parts)


def _name(record: Record) -> str:
    return record.problem_id if record.sample == 0 else f"{record.problem_id}#{record.sample}"


def compare_rerun(recorded: Sequence[Record], rerun: Sequence[Record]) -> RerunCheck:
    again = {record.item: record for record in rerun}
    missing, passes, outcomes, programs, generated = [], [], [], [], []
    for record in recorded:
        other = again.get(record.item)
        if other is None:
            missing.append(_name(record))
            continue
        if other.passed != record.passed:
            passes.append(_name(record))
        if other.verdicts != record.verdicts:
            outcomes.append(_name(record))
        if other.program != record.program:
            programs.append(_name(record))
        if float(other.timing.get("gen_seconds", 0) or 0) > 0:
            generated.append(_name(record))
    return RerunCheck(len(recorded), tuple(missing), tuple(passes), tuple(outcomes), tuple(programs),
                      tuple(generated))


def verify_cells(cells: Sequence[Cell], out: Path, scratch: Path, *, cache: Path | None = None,
                 extra: Sequence[str] = (), python: str = sys.executable) -> list[tuple[Cell, RerunCheck]]:
    """Re-run every finished cell of `cells` (results under `out`) into `scratch` and compare.
    With `cache`, the re-runs use a copy of it in `scratch`: what they generate stays out of it."""
    from .results import read_run

    if cache is not None:
        extra = [*extra, f"--codegen-cache={_copy_cache(cache, scratch)}"]
    checks = []
    for cell in cells:
        recorded = read_results(cell.results_path(out))
        if not recorded or len(recorded) < BENCHMARK_SIZES.get(cell.benchmark, 0):
            print(f"{cell.model} {cell.benchmark} {cell.label}: not finished, not checked", flush=True)
            continue
        command = cell.command(scratch, extra)  # the printed command, writing its own results file
        rerun_path = cell.results_path(scratch)
        rerun_path.parent.mkdir(parents=True, exist_ok=True)
        rerun_path.unlink(missing_ok=True)
        print(f"{cell.model} {cell.benchmark} {cell.label}: {shlex.join(command)}", flush=True)
        status = subprocess.run([python, "-m", *command], check=False).returncode
        if status not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):  # failed items: every row has some
            print(f"    the re-run exited with status {status}", flush=True)
        check = compare_rerun(recorded, read_run([rerun_path]) if rerun_path.is_file() else [])
        print(f"    {check.describe()}", flush=True)
        checks.append((cell, check))
    return checks


def _copy_cache(cache: Path, scratch: Path) -> Path:
    from .models.cache import GenerationCache

    copy_dir, export = scratch / "cache", scratch / "cache.jsonl.gz"
    source, copy = GenerationCache(cache), GenerationCache(copy_dir)
    try:
        source.export_to(export)
        copy.import_from(export)
    finally:
        source.close()
        copy.close()
    return copy_dir
