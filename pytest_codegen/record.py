"""One item's result record: the line the plugin appends to a results file, and what every reader
(the tables, statistics, `compare`, the study, the evolve search) takes.

`Record.build` makes a record from a judged solution; `Record.from_dict` is the one reader of
the JSON form, for records of this version, of earlier ones, and hand-written or evolve records
that leave optional fields out; `to_dict` gives the JSON form, builtin types only, with the
keys in the order earlier versions wrote them; `to_json` that as a line of text (a results
file's line, and how a record crosses from an xdist worker to the controller).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .outcome import ERROR, PASSED
from .pipelines.base import Round

if TYPE_CHECKING:
    from .outcome import ExecutionResult
    from .pipelines.base import Solution

# Solution properties that are wall-clock facts: kept under `timing` with the execution's seconds.
TIMING_KEYS = ("gen_seconds",)
# Facts of the particular run (wall clock, the sandbox's uid) rather than of the work done.
RUN_FACT_KEYS = ("timing", "sandbox")


class RecordError(ValueError):
    """A JSON object that is no record (a required field missing or of the wrong type)."""


@dataclass(frozen=True)
class TestRecord:
    """One scoring test's verdict, as kept in a record (outcome.TestResult less its message)."""

    __test__ = False

    name: str
    passed: bool
    error_type: str | None = None
    line: str = ""


@dataclass(frozen=True)
class Record:
    """One item: a (problem, sample) a pipeline solved and the sandbox judged."""

    benchmark: str
    problem_id: str
    passed: bool
    # The exception type or status the item failed with; "passed" for a pass, never for a
    # failure (see outcome.outcome_class).
    outcome_class: str
    sample: int = 0
    nodeid: str = ""
    run_key: str = ""  # settings.run_key: which run (the settings that shape results) made it
    pipeline: str = ""
    program: str = ""
    outcome: str = ""  # the execution's status (outcome.STATUSES), or ERROR for no verdict
    error_type: str | None = None
    phase: str | None = None
    tests: tuple[TestRecord, ...] = ()
    message: str = ""
    rounds: tuple[Round, ...] = ()
    round_outcomes: tuple[str, ...] = ()  # the scoring verdict of each program round
    # The pipeline's facts (feedback policy, early stop, genome, models, tokens; evolve's seed)
    # and anything else a record carries: written at the top level, as they came.
    properties: Mapping[str, Any] = field(default_factory=dict)
    timing: Mapping[str, float] = field(default_factory=dict)
    sandbox: Mapping[str, Any] | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def build(
        cls,
        solution: Solution,
        result: ExecutionResult,
        *,
        nodeid: str = "",
        round_verdicts: list[str] | None = None,
        run_key: str = "",
        sandbox: Mapping[str, Any] | None = None,
    ) -> Record:
        """The record of `solution` judged as `result`; `round_verdicts` is the scoring verdict
        of each program round (verdict.judge_rounds), the final one's by default."""
        problem = solution.problem
        props = solution.properties
        return cls(
            nodeid=nodeid,
            run_key=run_key,
            benchmark=problem.benchmark,
            problem_id=problem.id,
            sample=solution.sample,
            pipeline=solution.pipeline,
            program=solution.program,
            outcome=result.status,
            error_type=result.error_type,
            outcome_class=result.outcome_class,
            phase=result.phase,
            passed=result.passed,
            tests=tuple(TestRecord(t.name, t.passed, t.error_type, t.line) for t in result.tests),
            message=result.message,
            rounds=tuple(solution.rounds),
            round_outcomes=tuple(round_verdicts or [result.outcome_class]),
            properties={k: v for k, v in props.items() if k not in TIMING_KEYS},
            # Wall-clock facts vary between identical runs (rounds also carry their `seconds`).
            timing={"exec_seconds": round(result.seconds, 4), **{k: v for k, v in props.items() if k in TIMING_KEYS}},
            sandbox=sandbox,
        )

    @classmethod
    def no_verdict(cls, *, nodeid: str, benchmark: str, problem_id: str, sample: int, pipeline: str,
                   when: str) -> Record:
        """An item the pipeline or the harness broke before a verdict (a model that would not
        load, a prompt longer than the context): it counts in pass@1, as an error."""
        return cls(benchmark=benchmark, problem_id=problem_id, passed=False, outcome_class=ERROR,
                   sample=sample, nodeid=nodeid, pipeline=pipeline, outcome=ERROR,
                   round_outcomes=(ERROR,), properties={"when": when})

    # ------------------------------------------------------------------ the JSON form

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """The record a JSON object holds.

        `benchmark` and `problem_id` are required, and one of `passed` / `outcome_class`; a
        missing `sample` is 0, a missing `passed` is whether the class is "passed", and a
        failure without a class (or claiming "passed") is of class "unknown". Keys that are no
        field are kept, in order, as `properties`.
        """
        where = data.get("nodeid") or f"{str(dict(data))[:80]}..."
        missing = [key for key in ("benchmark", "problem_id") if key not in data]
        if "passed" not in data and "outcome_class" not in data:
            missing.append("passed (or outcome_class)")
        if missing:
            raise RecordError(f"record {where} lacks {', '.join(missing)}")
        passed = data["passed"] if "passed" in data else data["outcome_class"] == PASSED
        if not isinstance(passed, bool):
            raise RecordError(f"record {where}: 'passed' must be true or false, not {passed!r:.40}")
        sample = data.get("sample") or 0
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise RecordError(f"record {where}: 'sample' must be a whole number >= 0, not {sample!r:.40}")
        outcome_class = data.get("outcome_class")
        if passed:
            outcome_class = PASSED
        elif outcome_class == PASSED or not isinstance(outcome_class, str):
            outcome_class = "unknown"
        try:
            return cls(
                benchmark=str(data["benchmark"]),
                problem_id=str(data["problem_id"]),
                passed=passed,
                outcome_class=outcome_class,
                sample=sample,
                nodeid=str(data.get("nodeid") or ""),
                run_key=str(data.get("run_key") or ""),
                pipeline=str(data.get("pipeline") or ""),
                program=str(data.get("program") or ""),
                outcome=str(data.get("outcome") or ""),
                error_type=data.get("error_type"),
                phase=data.get("phase"),
                tests=tuple(_test(t) for t in data.get("tests") or ()),
                message=str(data.get("message") or ""),
                rounds=tuple(_round(i, r) for i, r in enumerate(data.get("rounds") or ())),
                round_outcomes=tuple(str(o) for o in data.get("round_outcomes") or ()),
                properties={k: v for k, v in data.items() if k not in _FIELDS},
                timing=dict(data.get("timing") or {}),
                sandbox=data.get("sandbox"),
            )
        except (TypeError, ValueError, AttributeError) as error:
            raise RecordError(f"record {where}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "run_key": self.run_key,
            "benchmark": self.benchmark,
            "problem_id": self.problem_id,
            "sample": self.sample,
            "pipeline": self.pipeline,
            "program": self.program,
            "outcome": self.outcome,
            "error_type": self.error_type,
            "outcome_class": self.outcome_class,
            "phase": self.phase,
            "passed": self.passed,
            "tests": [{"name": t.name, "passed": t.passed, "error_type": t.error_type, "line": t.line}
                      for t in self.tests],
            "message": self.message,
            # Round.to_dict, without asdict's deep copies: every field is a scalar.
            "rounds": [{name: getattr(r, name) for name in _ROUND_FIELDS} for r in self.rounds],
            "round_outcomes": list(self.round_outcomes),
            **self.properties,
            "timing": dict(self.timing),
            "sandbox": None if self.sandbox is None else dict(self.sandbox),
        }

    def to_json(self) -> str:
        """The JSON form as one line of text: a results file's line."""
        line = json.dumps(self.to_dict(), ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from a model's API, say): \u escapes keep it
            line = json.dumps(self.to_dict(), ensure_ascii=True)
        return line

    def without_run_facts(self) -> dict[str, Any]:
        """The JSON form without wall-clock and sandbox facts: what two runs of the same work
        agree on."""
        data = {k: v for k, v in self.to_dict().items() if k not in RUN_FACT_KEYS}
        data["rounds"] = [{k: v for k, v in r.items() if k != "seconds"} for r in data["rounds"]]
        return data

    # ------------------------------------------------------------------ what readers ask

    @property
    def item(self) -> tuple[str, str, int]:
        """(benchmark, problem, sample): what a run holds at most one record of."""
        return self.benchmark, self.problem_id, self.sample

    @property
    def verdicts(self) -> tuple[str, ...]:
        """The scoring verdict of each program round; the final one alone when not recorded."""
        return self.round_outcomes or (self.outcome_class,)

    @property
    def feedback(self) -> str | None:
        """The feedback policy, for pipelines that show the model test results (else None)."""
        value = self.properties.get("feedback")
        return None if value is None else str(value)

    @property
    def early_stop(self) -> bool | None:
        return self.properties.get("early_stop")

    @property
    def genome(self) -> Mapping[str, Any]:
        return self.properties.get("genome") or {}

    @property
    def tokens(self) -> int:
        """Prompt and completion tokens of every model call (0 without models)."""
        return int(self.properties.get("tokens") or 0)

    def without_properties(self, *names: str) -> Record:
        return dataclasses.replace(self, properties={k: v for k, v in self.properties.items() if k not in names})


_FIELDS = frozenset(f.name for f in dataclasses.fields(Record)) - {"properties"}
_ROUND_FIELDS = tuple(f.name for f in dataclasses.fields(Round))


def _test(data: Mapping[str, Any]) -> TestRecord:
    return TestRecord(name=str(data.get("name", "")), passed=data.get("passed") is True,
                      error_type=data.get("error_type"), line=str(data.get("line") or ""))


def _round(index: int, data: Mapping[str, Any]) -> Round:
    """A round as recorded (its position its index, its role unknown when not recorded); keys a
    later version may add are left out."""
    return Round(**{"index": index, "role": "", **{k: v for k, v in data.items() if k in _ROUND_FIELDS}})
