"""What one execution of a candidate program produced, and the outcome class it falls into.

Everything here is plain data of builtin types so it can cross process boundaries (the sandbox
server, xdist workers) and be written to JSON unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Outcome statuses. "failed" is further split by the exception type that failed it.
PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
MEMORY = "memory"
CRASHED = "crashed"
NO_CODE = "no code"
# Not an execution outcome: the pipeline or harness raised before a verdict (the report counts
# such items so that pass@1 never silently drops them).
ERROR = "error"

DEFINE = "define"  # raised while defining the candidate (running its top level)
TEST = "test"  # raised while a test called into it


@dataclass(frozen=True)
class TestResult:
    """One scoring test's result."""

    __test__ = False

    name: str
    passed: bool
    error_type: str | None = None
    message: str = ""
    # The failing line of the test's source (for asserts: with the values involved).
    line: str = ""


@dataclass(frozen=True)
class ExecutionResult:
    """The verdict of running a program against a set of tests in the sandbox.

    `passed` holds only if every test ran and held; a program that exits, crashes or goes
    silent before reporting every test never passes.
    """

    status: str
    error_type: str | None = None  # exception type for "failed"; signal name for "crashed"
    phase: str | None = None  # DEFINE or TEST, for "failed"
    tests: tuple[TestResult, ...] = ()
    message: str = ""
    traceback: str = ""  # trimmed to the candidate's own frames
    output: str = ""  # an excerpt of the program's stdout and stderr
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    @property
    def outcome_class(self) -> str:
        return outcome_class(self.status, self.error_type)

    @property
    def first_failure(self) -> TestResult | None:
        return next((t for t in self.tests if not t.passed), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExecutionResult:
        data = dict(data)
        data["tests"] = tuple(TestResult(**t) for t in data.get("tests", ()))
        return cls(**data)


def outcome_class(status: str, error_type: str | None) -> str:
    """The class a report counts an outcome under: the exception type for failures."""
    if status == FAILED:
        return error_type or "unknown"
    return status


NO_CODE_RESULT = ExecutionResult(status=NO_CODE, message="the pipeline produced no code")
