"""The plugin's per-process run state: settings, the results writer and records, and the
sandbox, models and pipeline, each built on first use and all closed together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .settings import RunSettings

if TYPE_CHECKING:
    from .models import ModelPool
    from .pipelines import Pipeline
    from .pipelines.genome import Genome
    from .record import Record
    from .results import ResultsWriter
    from .sandbox import Sandbox
    from .serving import ModelService

STATE_KEY = pytest.StashKey["CodegenState"]()


@dataclass
class CodegenState:
    """Per-process run state: the sandbox, models and pipeline, built on first use."""

    settings: RunSettings
    rootdir: Path | None = None
    writer: ResultsWriter | None = None
    records: list[Record] = field(default_factory=list)
    sandbox: Sandbox | None = None
    models: ModelPool | None = None
    pipeline: Pipeline | None = None
    error: str | None = None  # a pipeline that could not be built: every item reports it
    genome: Genome | None = None  # what a model-backed pipeline runs, parsed once
    run_key: str = ""
    # A resumed results file's records by nodeid (a worker knows the nodeids only), and those of
    # them this session selected (collected, then deselected because they are done): only those
    # count in its tables.
    done: dict[str, Record | None] = field(default_factory=dict)
    resumed: set[str] = field(default_factory=set)
    sandbox_cpu: int | None = None  # see `_sandbox_cpu`
    service: ModelService | None = None  # where models run (serving.py)
    config: pytest.Config | None = None  # for the backend and pipeline hooks

    def get_sandbox(self) -> Sandbox:
        if self.sandbox is None:
            from .sandbox import Limits, Sandbox

            self.sandbox = Sandbox(Limits.from_settings(self.settings), cpu=self.sandbox_cpu)
        return self.sandbox

    def get_models(self) -> ModelPool:
        if self.models is None:
            from .models import ModelPool

            self.models = ModelPool.from_settings(
                self.settings, self.rootdir, make_backend=self._make_backend,
                threads=self.service.in_process_threads(self.settings) if self.service else None)
        return self.models

    def _make_backend(self, name, spec, pool):
        """`ModelPool`'s factory: the `pytest_codegen_make_backend` hook."""
        assert self.config is not None
        return self.config.hook.pytest_codegen_make_backend(
            name=name, spec=spec, settings=self.settings, pool=pool, config=self.config)

    def get_pipeline(self) -> Pipeline:
        if self.error is not None:
            raise pytest.UsageError(self.error)
        if self.pipeline is None:
            try:
                # The sandbox server starts before any model loads: a process must never fork
                # after llama.cpp ran (its OpenMP threads hang the child).
                sandbox = self.get_sandbox()
                assert self.config is not None
                from .hookspecs import plugin_implements

                wants_models = self.genome is not None or plugin_implements(
                    self.config, "pytest_codegen_make_pipeline")
                self.pipeline = self.config.hook.pytest_codegen_make_pipeline(
                    name=self.settings.pipeline, settings=self.settings, sandbox=sandbox,
                    models=self.get_models() if wants_models else None, genome=self.genome,
                    config=self.config)
            except (ValueError, RuntimeError, OSError) as error:
                self.error = f"pytest-codegen: {error}"
                raise pytest.UsageError(self.error) from error
        return self.pipeline

    def close(self) -> None:
        """Close every resource, each even if closing an earlier one raised (the first
        error is raised at the end)."""
        self._close_from([self.models, self.sandbox, self.writer, self.service])

    def _close_from(self, resources: list[Any]) -> None:
        if not resources:
            return
        close = getattr(resources[0], "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._close_from(resources[1:])
