"""Execute a program against a problem's tests and say, readably, why it failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .outcome import DEFINE, FAILED, NO_CODE_RESULT, ExecutionResult, terminal_text
from .problems import Problem, TestCase

if TYPE_CHECKING:
    from .sandbox import Limits, Sandbox


def execute(
    sandbox: Sandbox,
    problem: Problem,
    program: str,
    tests: Sequence[TestCase],
    limits: Limits | None = None,
    explain: bool = True,
) -> ExecutionResult:
    """Run `program` against `tests` in the sandbox; an empty program is "no code".

    `explain` adds the values involved to failed asserts (a second, bounded run).
    """
    if not program.strip():
        return NO_CODE_RESULT
    return sandbox.run(
        program, tests, setup=problem.test_setup, entry_point=problem.entry_point,
        limits=limits, explain=explain,
    )


def judge(
    sandbox: Sandbox,
    problem: Problem,
    program: str,
    limits: Limits | None = None,
    explain: bool = True,
) -> ExecutionResult:
    """The verdict: every scoring test, whatever the pipeline was shown."""
    return execute(sandbox, problem, program, problem.scoring_tests, limits, explain)


def describe_failure(result: ExecutionResult, max_output: int = 800) -> str:
    """A failing item's explanation: class, failing test and its values, candidate frames."""
    lines = [f"{result.outcome_class}" + (f" (while {_phase(result)})" if result.phase else "")]
    failure = result.first_failure
    if failure is not None:
        lines.append(f"failing test {failure.name}:")
        lines.extend("    " + line for line in (failure.line or failure.message).splitlines())
        if failure.line and failure.message and failure.message not in failure.line:
            lines.append("    " + failure.message.splitlines()[0])
    elif result.message:
        lines.append(result.message)
    if result.status == FAILED and result.tests:
        passed = sum(t.passed for t in result.tests)
        lines.append(f"{passed}/{len(result.tests)} tests passed")
    if result.traceback:
        lines.append("traceback (candidate frames):")
        lines.extend("    " + line for line in result.traceback.rstrip().splitlines())
    if result.output:
        excerpt = result.output[:max_output]
        lines.append("output:")
        lines.extend("    " + line for line in excerpt.rstrip().splitlines())
    return terminal_text("\n".join(lines))  # the candidate wrote most of it


def _phase(result: ExecutionResult) -> str:
    return "defining the candidate" if result.phase == DEFINE else "testing"


PROGRAM_ROLES = ("generate", "refine", "resample", "reference", "null", "replay")


def judge_rounds(sandbox: Sandbox, solution, final: ExecutionResult) -> list[str]:
    """The scoring verdict (outcome class) of every program a pipeline produced, in order.

    The pipeline itself only saw the feedback tests; judging each round's program on every
    scoring test is what lets the report count problems solved after each round, and error
    classes fixed, independent of the feedback policy. Only the class is kept, so failures are
    not explained; under `--feedback=hidden` the feedback execution already was this verdict.
    """
    rounds = [r for r in solution.rounds if r.role in PROGRAM_ROLES]
    verdicts: dict[str, str] = {solution.program: final.outcome_class}
    for step in rounds:
        if step.program in verdicts:
            continue
        if step.feedback_outcome is not None and solution.properties.get("feedback") == "hidden":
            verdicts[step.program] = step.feedback_outcome  # it ran exactly the scoring tests
        else:
            verdicts[step.program] = judge(
                sandbox, solution.problem, step.program, explain=False
            ).outcome_class
    return [verdicts[r.program] for r in rounds] or [final.outcome_class]
