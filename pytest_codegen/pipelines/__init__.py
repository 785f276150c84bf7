"""Pipelines by name; `build_pipeline` is the one place that turns settings into a pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Pipeline, Round, Solution
from .basic import NullPipeline, ReferencePipeline, ReplayPipeline
from .genome import Genome, builtin_genome, load_genome

if TYPE_CHECKING:
    from ..sandbox import Sandbox
    from ..settings import RunSettings
    from .loop import Models

__all__ = ["Pipeline", "Round", "Solution", "build_pipeline", "pipeline_genome", "PIPELINES"]

MODEL_PIPELINES = ("single", "refine", "text", "resample")
PIPELINES = ("reference", "null", "replay", *MODEL_PIPELINES)


def pipeline_genome(settings: RunSettings) -> Genome | None:
    """The genome a model-backed pipeline runs (None for pipelines that call no model)."""
    name = settings.pipeline
    if name in MODEL_PIPELINES:
        return builtin_genome(settings)
    if name.endswith(".json"):
        return load_genome(name)
    if name in PIPELINES:
        return None
    raise ValueError(
        f"unknown pipeline {name!r}: choose one of {', '.join(PIPELINES)} or a genome .json file"
    )


def build_pipeline(
    settings: RunSettings,
    sandbox: Sandbox,
    models: Models | None = None,
    genome: Genome | None = None,
) -> Pipeline:
    """`genome`: the already parsed `pipeline_genome(settings)`, if the caller has it."""
    name = settings.pipeline
    genome = genome or pipeline_genome(settings)
    if genome is not None:
        from .loop import GenomePipeline

        if models is None:
            raise ValueError(f"pipeline {name!r} needs models")
        return GenomePipeline(name, genome, models, sandbox, settings)
    if name == "reference":
        return ReferencePipeline()
    if name == "null":
        return NullPipeline()
    if not settings.replay:
        raise ValueError("--pipeline=replay needs --replay FILE.jsonl")
    return ReplayPipeline(settings.replay)
