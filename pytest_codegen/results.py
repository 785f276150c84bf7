"""Per-item result records and the JSONL file they are appended to as items finish."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .outcome import ExecutionResult
from .pipelines.base import Solution
from .stats import StatsError


def build_record(
    solution: Solution,
    result: ExecutionResult,
    *,
    nodeid: str = "",
    round_verdicts: list[str] | None = None,
    run_key: str = "",
) -> dict[str, Any]:
    """One item's record: builtin types only, so it travels from xdist workers unchanged.

    `round_outcomes` is the scoring verdict of each program round (see verdict.judge_rounds).
    """
    problem = solution.problem
    return {
        "nodeid": nodeid,
        "run_key": run_key,
        "benchmark": problem.benchmark,
        "problem_id": problem.id,
        "sample": solution.sample,
        "pipeline": solution.pipeline,
        "program": solution.program,
        "outcome": result.status,
        "error_type": result.error_type,
        "outcome_class": result.outcome_class,
        "phase": result.phase,
        "passed": result.passed,
        "tests": [
            {"name": t.name, "passed": t.passed, "error_type": t.error_type, "line": t.line}
            for t in result.tests
        ],
        "message": result.message,
        "rounds": [r.to_dict() for r in solution.rounds],
        "round_outcomes": round_verdicts or [result.outcome_class],
        **{k: v for k, v in solution.properties.items() if k not in TIMING_KEYS},
        # Wall-clock facts vary between identical runs (rounds also carry their `seconds`).
        "timing": {
            "exec_seconds": round(result.seconds, 4),
            **{k: v for k, v in solution.properties.items() if k in TIMING_KEYS},
        },
    }


TIMING_KEYS = ("gen_seconds",)


# Facts of the particular run (wall clock, the sandbox's uid) rather than of the work done.
RUN_FACT_KEYS = ("timing", "sandbox")


def without_run_facts(record: dict[str, Any]) -> dict[str, Any]:
    """A record without wall-clock and sandbox facts: what two runs of the same work agree on."""
    rounds = [{k: v for k, v in r.items() if k != "seconds"} for r in record.get("rounds", ())]
    return {**{k: v for k, v in record.items() if k not in RUN_FACT_KEYS}, "rounds": rounds}


class ResultsWriter:
    """Appends records one line at a time and flushes, so an interrupted run keeps its items.

    With `append`, a file whose last line a killed run cut short gets a newline first, so the
    next record starts on a line of its own (readers skip the broken line).
    """

    def __init__(self, path: str | Path, *, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a" if append else "w", encoding="utf-8")
        if append and self.path.stat().st_size:
            with self.path.open("rb") as existing:
                existing.seek(-1, 2)
                if existing.read(1) != b"\n":
                    self._file.write("\n")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class ResultsFileError(StatsError):
    """A results file with a line that is no record (binary data, JSON that is not an object).

    A `StatsError`, so that `pytest-codegen report` and `compare` say which file; the message
    names the line, `path` the file."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a results file; a line cut short by a killed run (the beginning of a JSON
    object that does not parse) is skipped. Anything else that is not a JSON object (binary
    data, a list, a number) raises `ResultsFileError`."""
    path = Path(path)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            line = raw.decode("utf-8", "replace")
            try:
                record = json.loads(line)
            except ValueError:
                if line.lstrip().startswith("{"):
                    continue  # a record cut short
                raise ResultsFileError(
                    path, f"line {number} is not a JSON record (binary data or another format?)"
                ) from None
            if not isinstance(record, dict):
                raise ResultsFileError(path, f"line {number} is not a JSON object but {type(record).__name__}")
            yield record
