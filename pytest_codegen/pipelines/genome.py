"""Pipeline structure in the study's genome schema: a generator and 0-3 refinement stages.

    {"generator": {"model": "qwen2.5:1.5b", "system_prompt": "...", "temperature": 0.3},
     "stages": [{"innovation": 1, "max_iterations": 2,
                 "analyzer": {"model": ..., ...} | null,
                 "refiner": {"model": "llama3.2:3b", ...}}]}

also accepted wrapped as `{"fitness": ..., "genome": {...}}` (the study's champion files). The
built-in `single`, `refine`, `text` and `resample` pipelines are genomes too, so one code path runs them all.
A stage's `kind` extends the schema: "execution" (the study's), "review" (the text-only
control: a critic reads the code instead of running it; `analyzer` is that critic) or
"resample" (the no-feedback control: the stage's `refiner` writes a fresh program from the
generation prompt each round, executed and early-stopped like a refinement, so that what a
sampled refiner gains can be told apart from what sampling again alone gains).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..settings import RunSettings

EXECUTION = "execution"
REVIEW = "review"
RESAMPLE = "resample"
KINDS = (EXECUTION, REVIEW, RESAMPLE)
GENERATOR_TEMPERATURE = 0.3  # the study's fixed configurations
REFINER_TEMPERATURE = 0.2


class GenomeError(ValueError):
    """A genome file or dict that does not follow the schema."""


@dataclass(frozen=True)
class Node:
    """One model role: which model, with what system prompt and temperature."""

    model: str
    system_prompt: str | None = None
    temperature: float = REFINER_TEMPERATURE


@dataclass(frozen=True)
class Stage:
    innovation: int
    max_iterations: int
    refiner: Node
    analyzer: Node | None = None
    kind: str = EXECUTION


@dataclass(frozen=True)
class Genome:
    generator: Node
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    @property
    def rounds(self) -> int:
        return sum(stage.max_iterations for stage in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """`generator=a (T=0); execution x3: refiner=b (T=0.2), analyzer=c`, for the header."""
        parts = [f"generator={self.generator.model} (T={self.generator.temperature:g})"]
        for stage in self.stages:
            role = "resampler" if stage.kind == RESAMPLE else "refiner"
            refiner = stage.refiner
            part = f"{stage.kind} x{stage.max_iterations}: {role}={refiner.model} (T={refiner.temperature:g})"
            if stage.analyzer is not None:
                part += f", {'critic' if stage.kind == REVIEW else 'analyzer'}={stage.analyzer.model}"
            parts.append(part)
        return "; ".join(parts)

    def models(self) -> set[str]:
        names = {self.generator.model}
        for stage in self.stages:
            names.add(stage.refiner.model)
            if stage.analyzer is not None:
                names.add(stage.analyzer.model)
        return names


def builtin_genome(settings: RunSettings) -> Genome:
    """`single`, `refine`, `text` and `resample` from the command-line options."""
    def node(role: str, default_temperature: float) -> Node:
        temperature = settings.temperature
        if role != "generator" and settings.refiner_temperature is not None:
            temperature = settings.refiner_temperature
        return Node(
            model=settings.role_model(role),
            temperature=default_temperature if temperature is None else temperature,
        )

    generator = node("generator", GENERATOR_TEMPERATURE)
    if settings.pipeline == "single":
        return Genome(generator)
    if settings.rounds < 1:
        raise GenomeError(f"--rounds must be at least 1, not {settings.rounds}")
    if settings.pipeline == "refine":
        analyzer = node("analyzer", REFINER_TEMPERATURE) if settings.analyzer else None
        stage = Stage(1, settings.rounds, node("refiner", REFINER_TEMPERATURE), analyzer)
        return Genome(generator, (stage,))
    if settings.pipeline == "text":
        critic = replace(node("critic", REFINER_TEMPERATURE),
                         model=settings.critic or settings.analyzer or settings.role_model("refiner"))
        stage = Stage(1, settings.rounds, node("refiner", REFINER_TEMPERATURE), critic, REVIEW)
        return Genome(generator, (stage,))
    if settings.pipeline == "resample":
        return Genome(generator, (Stage(1, settings.rounds, node("refiner", REFINER_TEMPERATURE), kind=RESAMPLE),))
    raise GenomeError(f"{settings.pipeline!r} is not a built-in genome pipeline")


def load_genome(path: str | Path) -> Genome:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise GenomeError(f"cannot read genome {path}: {error}") from error
    try:
        return genome_from_dict(data)
    except GenomeError as error:
        raise GenomeError(f"{path}: {error}") from None


def genome_from_dict(data: Any) -> Genome:
    if isinstance(data, dict) and "genome" in data:
        data = data["genome"]
    if not isinstance(data, dict) or "generator" not in data:
        raise GenomeError("a genome needs a 'generator'")
    stages = data.get("stages") or []
    if not isinstance(stages, list) or len(stages) > 3:
        raise GenomeError("'stages' must be a list of at most 3 stages")
    return Genome(
        generator=_node(data["generator"], "generator", GENERATOR_TEMPERATURE),
        stages=tuple(_stage(s, i) for i, s in enumerate(stages)),
    )


def _node(data: Any, where: str, default_temperature: float) -> Node:
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        raise GenomeError(f"{where} needs a 'model' name")
    temperature = data.get("temperature", default_temperature)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise GenomeError(f"{where} temperature must be a number in [0, 2]")
    prompt = data.get("system_prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise GenomeError(f"{where} system_prompt must be a string")
    return Node(model=data["model"], system_prompt=prompt, temperature=float(temperature))


def _stage(data: Any, index: int) -> Stage:
    where = f"stage {index}"
    if not isinstance(data, dict):
        raise GenomeError(f"{where} must be an object")
    iterations = data.get("max_iterations", 1)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 1 <= iterations <= 10:
        raise GenomeError(f"{where} max_iterations must be an integer in [1, 10]")
    innovation = data.get("innovation", index + 1)
    if isinstance(innovation, bool) or not isinstance(innovation, int):
        raise GenomeError(f"{where} innovation must be an integer")
    kind = data.get("kind", EXECUTION)
    if kind not in KINDS:
        raise GenomeError(f"{where} kind must be one of {', '.join(map(repr, KINDS))}")
    analyzer = data.get("analyzer")
    if kind == RESAMPLE and analyzer is not None:
        raise GenomeError(f"{where}: a resample stage has no analyzer (it shows its model no program)")
    return Stage(
        innovation=innovation,
        max_iterations=iterations,
        refiner=_node(data.get("refiner"), f"{where} refiner", REFINER_TEMPERATURE),
        analyzer=None if analyzer is None else _node(analyzer, f"{where} analyzer", REFINER_TEMPERATURE),
        kind=kind,
    )
