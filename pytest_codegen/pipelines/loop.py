"""Runs any genome: generate, then for each stage execute → (analyze) → refine, review → refine,
or execute → generate afresh.

Every program a round produces is executed against the feedback tests (those the policy lets a
model see) and its outcome class recorded, so the report can show transitions and the effect of
each round. Early stopping ends the loop at the first program that passes the feedback tests;
review stages (the text-only control) never see execution results, so they do not stop early.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Protocol

from .. import prompts
from ..extract import extract_code
from ..models.backend import GenerationRequest, GenerationResponse, Mode
from ..outcome import ExecutionResult
from ..problems import Problem
from ..settings import RunSettings
from ..verdict import execute
from .base import Round, Solution
from .genome import RESAMPLE, REVIEW, Genome, Node, Stage


class Backend(Protocol):
    alias: str
    mode: Mode

    def generate(self, request: GenerationRequest) -> GenerationResponse: ...


class Models(Protocol):
    def get(self, name: str) -> Backend: ...


def derive_seed(base: int, problem_id: str, sample: int, round_index: int, role: str) -> int:
    """A seed per (problem, sample, round, role): outputs do not depend on xdist scheduling."""
    text = f"{base}:{problem_id}:{sample}:{round_index}:{role}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def program_from_output(problem: Problem, text: str) -> str:
    """Extract code and join the prompt's imports and helpers to it."""
    code = extract_code(text, problem.entry_point, prompt=problem.prompt if problem.prompt_is_code else None)
    if not code.strip():
        return ""
    if problem.prompt_is_code and code.startswith(problem.prompt):
        return code  # a continuation of the stub: the prompt's context is already there
    return problem.assemble(code)


class GenomePipeline:
    def __init__(self, name: str, genome: Genome, models: Models, sandbox, settings: RunSettings) -> None:
        self.name = name
        self.genome = genome
        self.models = models
        self.sandbox = sandbox
        self.settings = settings

    def solve(self, problem: Problem, sample: int) -> Solution:
        s = self.settings
        rounds: list[Round] = []
        tests = prompts.shown_tests(problem, s.feedback)

        def call(node: Node, role: str, build) -> tuple[GenerationResponse, Round]:
            backend = self.models.get(node.model)
            seed = derive_seed(s.seed, problem.id, sample, len(rounds), role)
            request, template, continues = build(backend.mode, seed)
            response = backend.generate(request)
            if continues:
                response = replace(response, text=continues + response.text)
            step = Round(
                index=len(rounds), role=role, model=node.model,
                request_hash=request.digest()[:16], template_hash=template,
                prompt_tokens=response.prompt_tokens,
                completion_tokens=response.completion_tokens,
                seconds=round(response.seconds, 3), cached=response.cached, text=response.text,
            )
            rounds.append(step)
            return response, step

        def run(step: Round, text: str) -> ExecutionResult:
            step.program = program_from_output(problem, text)
            result = execute(self.sandbox, problem, step.program, tests)
            step.feedback_outcome = result.outcome_class
            return result

        def refine(stage: Stage, program: str, result: ExecutionResult) -> tuple[GenerationResponse, Round]:
            feedback = None if stage.kind == REVIEW else prompts.feedback_text(result)
            note = None
            if stage.analyzer is not None:
                analyzer = stage.analyzer
                role = "critic" if stage.kind == REVIEW else "analyze"
                reply, _ = call(analyzer, role, lambda mode, seed: prompts.review_request(
                    problem, mode, program, policy=s.feedback, feedback=feedback,
                    temperature=analyzer.temperature, max_tokens=s.max_tokens, seed=seed,
                    system_prompt=analyzer.system_prompt))
                note = reply.text.strip()
            refiner = stage.refiner
            return call(refiner, "refine", lambda mode, seed: prompts.refine_request(
                problem, mode, program, policy=s.feedback, feedback=feedback,
                diagnosis=note if stage.kind != REVIEW else None,
                review=(note or "") if stage.kind == REVIEW else None,
                temperature=refiner.temperature, max_tokens=s.max_tokens, seed=seed,
                system_prompt=refiner.system_prompt))

        def generate(node: Node, role: str) -> tuple[GenerationResponse, Round]:
            """A program from the task alone (the first one, or a resample stage's)."""
            return call(node, role, lambda mode, seed: prompts.generation_request(
                problem, mode, policy=s.feedback, temperature=node.temperature,
                max_tokens=s.max_tokens, seed=seed, system_prompt=node.system_prompt))

        response, step = generate(self.genome.generator, "generate")
        result = run(step, response.text)
        program = step.program

        for stage in self.genome.stages:
            for _ in range(stage.max_iterations):
                if stage.kind != REVIEW and s.early_stop and result.passed:
                    break
                if stage.kind == RESAMPLE:
                    response, step = generate(stage.refiner, "resample")
                else:
                    response, step = refine(stage, program, result)
                result = run(step, response.text)
                program = step.program

        properties = {
            "feedback": s.feedback,
            "early_stop": s.early_stop,
            "genome": self.genome.to_dict(),
            "models": sorted(self.genome.models()),
            "tokens": sum(r.prompt_tokens + r.completion_tokens for r in rounds),
            "gen_seconds": round(sum(r.seconds for r in rounds if not r.cached), 3),
        }
        return Solution(problem, program, self.name, sample, rounds, properties)
