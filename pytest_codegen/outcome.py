"""What one execution of a candidate program produced, and the outcome class it falls into.

Everything here is plain data of builtin types so it can cross process boundaries (the sandbox
server, xdist workers) and be written to JSON unchanged.
"""

from __future__ import annotations

import re
import unicodedata
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

# Every class that is not an exception type's name. A failure's class is the exception type
# the candidate raised, whose name the candidate chooses: one that reads like a reserved
# class is marked as an exception (`passed (exception)`), never counted as one.
STATUSES = (PASSED, FAILED, TIMEOUT, MEMORY, CRASHED, NO_CODE)
RESERVED_CLASSES = frozenset((*STATUSES, ERROR, "unknown"))

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
        tests = []
        for t in data.get("tests", ()):
            t = dict(t)
            if t.get("error_type") is not None:  # named by the candidate: made printable
                t["error_type"] = printable_name(t["error_type"])
            tests.append(TestResult(**t))
        data["tests"] = tuple(tests)
        if data.get("error_type") is not None:
            data["error_type"] = printable_name(data["error_type"])
        return cls(**data)


def outcome_class(status: str, error_type: str | None) -> str:
    """The class a report counts an outcome under: the exception type for failures.

    From a closed set: a status, or a failure's exception type name made printable
    (`printable_name`) and kept apart from the statuses (an exception class named `passed`
    is `passed (exception)`)."""
    if status == FAILED:
        name = printable_name(error_type, default="")
        if not name:
            return "unknown"
        # case-blind: `PASSED` would read as a pass in a table as well as `passed`
        return f"{name} (exception)" if name.lower() in RESERVED_CLASSES else name
    return status if status in STATUSES else "unknown"


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def printable_name(name: object, limit: int = 200, default: str = "unknown") -> str:
    """`name` as a class name fit for a terminal and a table: escape sequences and control
    or format characters removed, whitespace runs made one space, other characters than ASCII
    written as escapes (a Cyrillic `раssеd` is not `passed`); `default` if nothing is left."""
    if (isinstance(name, str) and name.isascii() and name.isprintable() and 0 < len(name) <= limit
            and name[0] != " " and name[-1] != " " and "  " not in name):
        # The common case (an exception's name): printable ASCII, no escape, no space to fold.
        return name
    text = _ANSI.sub("", name if isinstance(name, str) else "" if name is None else str(name))
    text = "".join(" " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch)[0] != "C")
    text = " ".join(text.split()).encode("ascii", "backslashreplace").decode("ascii")[:limit]
    return text or default


# What a candidate's text (its messages, traceback, output) must not bring to a terminal: C0
# controls but tab and newline (escape sequences, carriage returns), DEL and C1, and the
# invisible and bidirectional format characters that make text read other than it is.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def terminal_text(text: str) -> str:
    """`text` with every such character written as its escape (`\\x1b`), for a terminal."""
    return _UNSAFE.sub(lambda match: ascii(match.group())[1:-1], text)


NO_CODE_RESULT = ExecutionResult(status=NO_CODE, message="the pipeline produced no code")
