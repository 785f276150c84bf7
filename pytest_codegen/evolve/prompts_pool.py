"""System-prompt pools the search draws from, one per role.

These are prompt text and belong in `pytest_codegen/prompts.py` (the one module that writes
prompt text); they live here until that module takes them. `None` means the role's default
system prompt (`prompts.SYSTEM_CODER` / `prompts.SYSTEM_REVIEWER`). Completion-mode models
(base models such as gemma-270m) have no system prompt, so for them this gene is neutral.
"""

from __future__ import annotations

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
