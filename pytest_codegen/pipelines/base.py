"""The pipeline interface: a problem in, a final program and its per-round history out.

Pipelines that call models record one `Round` per model call; pipelines that execute code in
between record the outcome class that execution saw, so the report can follow a problem from
`NameError` to `AssertionError` to `passed`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ..problems import Problem


@dataclass
class Round:
    """One step of a pipeline: usually one model call, optionally followed by an execution."""

    index: int
    role: str  # "generate", "refine", "resample", "analyze", "critic", "replay", "reference", ...
    program: str = ""
    # Outcome class of executing `program` against the feedback tests (None: not executed).
    feedback_outcome: str | None = None
    model: str | None = None
    request_hash: str | None = None
    template_hash: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cached: bool = False
    text: str = ""  # the model's raw output, kept for the results file

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Solution:
    """What a pipeline produced for one (problem, sample)."""

    problem: Problem
    program: str
    pipeline: str
    sample: int = 0
    rounds: list[Round] = field(default_factory=list)
    # Facts about the run that the record and JUnit carry (feedback policy, models, ...).
    properties: dict[str, Any] = field(default_factory=dict)


class Pipeline(Protocol):
    """Produces a solution. Implementations take their models and sandbox at construction."""

    name: str

    def solve(self, problem: Problem, sample: int) -> Solution: ...
