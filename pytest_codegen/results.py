"""Per-item result records and the JSONL file they are appended to as items finish."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .outcome import ExecutionResult
from .pipelines.base import Solution


def build_record(
    solution: Solution,
    result: ExecutionResult,
    *,
    nodeid: str = "",
    round_verdicts: list[str] | None = None,
) -> dict[str, Any]:
    """One item's record: builtin types only, so it travels from xdist workers unchanged.

    `round_outcomes` is the scoring verdict of each program round (see verdict.judge_rounds).
    """
    problem = solution.problem
    return {
        "nodeid": nodeid,
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
        "exec_seconds": round(result.seconds, 4),
        "rounds": [r.to_dict() for r in solution.rounds],
        "round_outcomes": round_verdicts or [result.outcome_class],
        **solution.properties,
    }


class ResultsWriter:
    """Appends records one line at a time and flushes, so an interrupted run keeps its items."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a results file; a last line cut short by a killed run is skipped."""
    with Path(path).open(encoding="utf-8") as lines:
        for line in lines:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
