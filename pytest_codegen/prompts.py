"""Every prompt template, and the requests built from them. Nothing else writes prompt text.

Instruct models (mode "chat") get chat messages; base models (mode "completion") get text they
continue, with stop sequences. Each request comes with the hash of the templates it used, which
the results file records, so numbers from different prompt versions are never pooled unnoticed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from .models.backend import GenerationRequest, Message, Mode
from .outcome import ExecutionResult
from .problems import Problem, TestCase

VISIBLE = "visible"
HIDDEN = "hidden"
FEEDBACK_POLICIES = (VISIBLE, HIDDEN)

SYSTEM_CODER = (
    "You are an expert Python programmer. Reply with the complete solution in one "
    "```python code block and nothing else."
)
SYSTEM_REVIEWER = (
    "You are a careful Python code reviewer. Explain problems briefly in plain prose; "
    "do not write code."
)

GENERATE_FROM_STUB = (
    "Complete the following Python function. Reply with the whole function, its signature and "
    "the imports it needs included.\n\n```python\n{prompt}```"
)
GENERATE_FROM_TASK = "{prompt}\n\n{tests_block}"
TESTS_BLOCK = "Your code should pass {these}:\n```python\n{tests}\n```"

REFINE = (
    "Task:\n{task}\n\nThis program was written for the task:\n```python\n{program}\n```\n\n"
    "{evidence}\n\nFix the program. Reply with the whole corrected program in one ```python "
    "code block."
)
EXECUTION_EVIDENCE = "Running it against {tests} gave:\n{feedback}"
DIAGNOSIS_EVIDENCE = "\n\nA reviewer's diagnosis:\n{diagnosis}"
REVIEW_EVIDENCE = "A reviewer read it (without running it) and said:\n{review}"

ANALYZE = (
    "Task:\n{task}\n\nProgram:\n```python\n{program}\n```\n\nRunning it against {tests} gave:\n"
    "{feedback}\n\nIn two or three sentences, say what is wrong and how to fix it."
)
CRITIC = (
    "Task:\n{task}\n\nProgram:\n```python\n{program}\n```\n\nWithout running it, list the bugs "
    "you see that would make it fail the task, in a few sentences. If it is correct, say so."
)

# System prompts the evolutionary search draws from, per role; None is the role's default.
# Completion-mode (base) models have no system prompt, so for them this gene is neutral.
GENERATOR_PROMPTS: tuple[str | None, ...] = (
    None,
    "Output ONLY the function code.",
    "You are an expert Python programmer. Think about edge cases, then reply with the complete "
    "function in one ```python code block.",
    "Write simple, correct Python. Reply with the whole function, including its imports, in one "
    "```python code block and nothing else.",
    "You write Python that passes every test on the first try. Reply with code only.",
)

REFINER_PROMPTS: tuple[str | None, ...] = (
    None,
    "Output ONLY the corrected function code.",
    "You fix bugs in Python code. Read the error carefully, change only what is wrong, and reply "
    "with the whole corrected program in one ```python code block.",
    "You are a debugging expert. Make the failing test pass without breaking the others. Reply "
    "with code only.",
)

ANALYZER_PROMPTS: tuple[str | None, ...] = (
    None,
    "Explain the root cause of the failure in one or two sentences. Do not write code.",
    "You are a senior engineer reviewing a failing test. Name the faulty line and the fix in "
    "plain prose.",
)

POOLS: dict[str, tuple[str | None, ...]] = {
    "generator": GENERATOR_PROMPTS,
    "refiner": REFINER_PROMPTS,
    "analyzer": ANALYZER_PROMPTS,
}

# Base models continue a Python file; these stop them at the end of the solution.
COMPLETION_STOPS = ("\ndef test", "\nif __name__", "\nprint(", "\nassert ", "\n```", "\n# Test")
COMPLETION_TASK = '"""\n{prompt}\n{tests}\n"""\n'
COMPLETION_REFINE = (
    "# Task:\n{task_comment}\n# A first attempt:\n{program_comment}\n# It failed:\n"
    "{feedback_comment}\n# A corrected version:\n{start}"
)


class Prompt(NamedTuple):
    """A request, the hash of the templates it came from, and the text its output continues
    (prepended to the output before code extraction)."""

    request: GenerationRequest
    template_hash: str
    continues: str = ""


def template_hash(*templates: str) -> str:
    return hashlib.sha256("\x00".join(templates).encode()).hexdigest()[:12]


def shown_tests(problem: Problem, policy: str) -> tuple[TestCase, ...]:
    """The tests a model may see and be given feedback on under `policy`."""
    if policy == HIDDEN:
        return problem.scoring_tests  # oracle feedback, as the study did; reported as such
    if policy == VISIBLE:
        return problem.visible_tests
    raise ValueError(f"feedback policy must be one of {FEEDBACK_POLICIES}, not {policy!r}")


def _tests_phrase(tests: Sequence[TestCase]) -> str:
    return "this test" if len(tests) == 1 else "these tests"


def task_text(problem: Problem, policy: str) -> str:
    if problem.prompt_is_code:
        return f"```python\n{problem.prompt}```"
    tests = shown_tests(problem, policy)
    if not tests:
        return problem.prompt
    block = TESTS_BLOCK.format(
        these=_tests_phrase(tests), tests="\n".join(t.source for t in tests)
    )
    return GENERATE_FROM_TASK.format(prompt=problem.prompt, tests_block=block)


def generation_request(
    problem: Problem,
    mode: Mode,
    *,
    policy: str,
    temperature: float,
    max_tokens: int,
    seed: int,
    system_prompt: str | None = None,
) -> Prompt:
    if mode == "completion":
        if problem.prompt_is_code:
            prompt, used = problem.prompt, "raw-stub"
        else:
            tests = "\n".join(t.source for t in shown_tests(problem, policy))
            prompt, used = COMPLETION_TASK.format(prompt=problem.prompt, tests=tests), COMPLETION_TASK
        request = GenerationRequest(
            prompt=prompt, temperature=temperature, max_tokens=max_tokens,
            stop=COMPLETION_STOPS, seed=seed,
        )
        return Prompt(request, template_hash(used, *COMPLETION_STOPS))
    system = system_prompt or SYSTEM_CODER
    if problem.prompt_is_code:
        user, used = GENERATE_FROM_STUB.format(prompt=problem.prompt), GENERATE_FROM_STUB
    else:
        user, used = task_text(problem, policy), GENERATE_FROM_TASK + TESTS_BLOCK
    request = GenerationRequest(
        messages=(Message("system", system), Message("user", user)),
        temperature=temperature, max_tokens=max_tokens, seed=seed,
    )
    return Prompt(request, template_hash(system, used))


def refine_request(
    problem: Problem,
    mode: Mode,
    program: str,
    *,
    policy: str,
    feedback: str | None = None,
    diagnosis: str | None = None,
    review: str | None = None,
    temperature: float,
    max_tokens: int,
    seed: int,
    system_prompt: str | None = None,
) -> Prompt:
    """Ask for a fixed program, given execution feedback (and a diagnosis) or a review."""
    shown = shown_tests(problem, policy)
    tests = _tests_phrase(shown) if shown else "the program alone"
    if review is not None:
        evidence, used = REVIEW_EVIDENCE.format(review=review), REVIEW_EVIDENCE
    else:
        evidence = EXECUTION_EVIDENCE.format(tests=tests, feedback=feedback or "")
        used = EXECUTION_EVIDENCE
        if diagnosis:
            evidence += DIAGNOSIS_EVIDENCE.format(diagnosis=diagnosis)
            used += DIAGNOSIS_EVIDENCE
    if mode == "completion":
        # A base model continues text: start the corrected function for it, or it tends to
        # go on writing comments.
        start = problem.prompt if problem.prompt_is_code else f"def {problem.entry_point}("
        prompt = COMPLETION_REFINE.format(
            task_comment=_comment(problem.prompt if not problem.prompt_is_code else task_text(problem, policy)),
            program_comment=_comment(program),
            feedback_comment=_comment(evidence),
            start=start,
        )
        request = GenerationRequest(
            prompt=prompt, temperature=temperature, max_tokens=max_tokens,
            stop=COMPLETION_STOPS, seed=seed,
        )
        continues = "" if problem.prompt_is_code else start  # a stub is extract_code's job
        return Prompt(request, template_hash(COMPLETION_REFINE, used, *COMPLETION_STOPS), continues)
    system = system_prompt or SYSTEM_CODER
    user = REFINE.format(task=task_text(problem, policy), program=program, evidence=evidence)
    request = GenerationRequest(
        messages=(Message("system", system), Message("user", user)),
        temperature=temperature, max_tokens=max_tokens, seed=seed,
    )
    return Prompt(request, template_hash(system, REFINE, used))


def review_request(
    problem: Problem,
    mode: Mode,
    program: str,
    *,
    policy: str,
    feedback: str | None,
    temperature: float,
    max_tokens: int,
    seed: int,
    system_prompt: str | None = None,
) -> Prompt:
    """An analyzer's diagnosis of an execution failure, or (feedback None) a critic's review."""
    task = task_text(problem, policy)
    if feedback is None:
        body, used = CRITIC.format(task=task, program=program), CRITIC
    else:
        tests = _tests_phrase(shown_tests(problem, policy))
        body, used = ANALYZE.format(task=task, program=program, tests=tests, feedback=feedback), ANALYZE
    if mode == "completion":
        prompt = body + "\n\nAnswer:"
        request = GenerationRequest(
            prompt=prompt, temperature=temperature, max_tokens=min(max_tokens, 200),
            stop=("\n\n\n", "```"), seed=seed,
        )
        return Prompt(request, template_hash(used, "completion-answer"))
    system = system_prompt or SYSTEM_REVIEWER
    request = GenerationRequest(
        messages=(Message("system", system), Message("user", body)),
        temperature=temperature, max_tokens=min(max_tokens, 300), seed=seed,
    )
    return Prompt(request, template_hash(system, used))


def _comment(text: str) -> str:
    return "\n".join("# " + line if line else "#" for line in text.rstrip().splitlines())


def feedback_text(result: ExecutionResult, limit: int = 1500) -> str:
    """What a refiner is told about a failed execution: bounded, candidate frames only."""
    parts = [f"Outcome: {result.outcome_class}"]
    failure = result.first_failure
    if failure is not None:
        parts.append(f"Failing test:\n{failure.line or failure.message}")
        if failure.message and failure.message not in (failure.line or ""):
            parts.append(failure.message)
    elif result.message:
        parts.append(result.message)
    if result.traceback:
        parts.append("Traceback:\n" + result.traceback.strip())
    if result.output.strip():
        parts.append("Output:\n" + result.output.strip()[:400])
    text = "\n".join(parts)
    return text if len(text) <= limit else text[: limit - 15] + "\n... (truncated)"
