"""Evaluating genomes: one job is (genome, evaluation seed, problems) → per-problem verdicts.

An evaluation runs the genome with `GenomePipeline` on every problem (sample 0) with
`RunSettings.seed` set to the evaluation's seed, and judges each final program on every
scoring test. Results are cached by (genome JSON, seed, problem ids), so an identical genome
is never evaluated twice with the same seed; the cache travels in the search's checkpoint.

Jobs run in this process (`workers=1`; `search()` always uses it when given a models factory,
e.g. scripted test models) or in `workers` processes started with the *spawn* method (a
picklable models factory then travels to them); each worker starts its own
sandbox server first, then its own `ModelPool` with `cores // workers` llama.cpp threads over
the shared SQLite generation cache.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..pipelines.genome import Genome, genome_from_dict
from ..problems import Problem
from ..settings import RunSettings

ModelsFactory = Callable[[], Any]


def plain(genome: Genome) -> dict[str, Any]:
    """The genome as JSON data (lists, not the tuples `Genome.to_dict` keeps)."""
    return json.loads(json.dumps(genome.to_dict()))


def canonical(genome: Genome) -> str:
    """The genome as canonical JSON: the identity the cache and the log use."""
    return json.dumps(genome.to_dict(), sort_keys=True, separators=(",", ":"))


def evaluation_seed(base: int, phase: str, index: int) -> int:
    """The RunSettings.seed of evaluation `index` of `phase` ("search" or "holdout")."""
    digest = hashlib.sha256(f"evolve:{base}:{phase}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class EvalJob:
    genome: str  # canonical JSON
    seed: int
    problem_ids: tuple[str, ...]

    @property
    def key(self) -> str:
        text = json.dumps([self.genome, self.seed, list(self.problem_ids)], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class EvalResult:
    passed: tuple[bool, ...]
    classes: tuple[str, ...]  # outcome class per problem

    @property
    def pass_rate(self) -> float:
        return sum(self.passed) / len(self.passed)

    def to_dict(self) -> dict[str, list]:
        return {"passed": list(self.passed), "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> EvalResult:
        return cls(tuple(bool(p) for p in data["passed"]), tuple(data["classes"]))


def run_job(job: EvalJob, problems: dict[str, Problem], models: Any, sandbox: Any,
            settings: RunSettings) -> EvalResult:
    from ..pipelines.loop import GenomePipeline
    from ..verdict import judge

    pipeline = GenomePipeline("evolve", genome_from_dict(json.loads(job.genome)), models, sandbox,
                              replace(settings, seed=job.seed))
    passed, classes = [], []
    for pid in job.problem_ids:
        problem = problems[pid]
        solution = pipeline.solve(problem, 0)
        result = judge(sandbox, problem, solution.program)
        passed.append(result.passed)
        classes.append(result.outcome_class)
    return EvalResult(tuple(passed), tuple(classes))


# ----------------------------------------------------------------------- worker processes


@dataclass(frozen=True)
class WorkerSpec:
    problems: tuple[Problem, ...]
    settings: RunSettings
    rootdir: str | None = None
    models_factory: ModelsFactory | None = None  # must pickle (a module-level function)


_WORKER: dict[str, Any] = {}


def _init_worker(spec: WorkerSpec) -> None:
    from multiprocessing.util import Finalize

    from ..sandbox import Limits, Sandbox

    sandbox = Sandbox(Limits.from_settings(spec.settings))  # before any model is loaded
    models = spec.models_factory() if spec.models_factory is not None else _model_pool(spec.settings, spec.rootdir)
    _WORKER.update(sandbox=sandbox, models=models, settings=spec.settings,
                   problems={p.id: p for p in spec.problems})

    def close() -> None:
        for name in ("models", "sandbox"):
            closer = getattr(_WORKER.get(name), "close", None)
            if closer is not None:
                closer()

    Finalize(None, close, exitpriority=10)


def _worker_run(job: EvalJob) -> dict[str, list]:
    w = _WORKER
    return run_job(job, w["problems"], w["models"], w["sandbox"], w["settings"]).to_dict()


def _model_pool(settings: RunSettings, rootdir: str | None):
    from pathlib import Path

    from ..models import ModelPool

    return ModelPool.from_settings(settings, Path(rootdir) if rootdir else None)


# ----------------------------------------------------------------------- evaluator


class Evaluator:
    """Runs evaluation jobs with a result cache, in this process or in spawned workers.

    `cache` maps `EvalJob.key` to `EvalResult.to_dict()` and is updated in place.
    `sandbox` (in-process only) is used as is and not closed; otherwise one is started.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        settings: RunSettings,
        *,
        workers: int = 1,
        models_factory: ModelsFactory | None = None,
        sandbox: Any = None,
        rootdir: str | None = None,
        cache: dict[str, dict] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.problems = {p.id: p for p in problems}
        self.workers = workers
        from ..models.llama import available_cores

        threads = settings.threads or max(1, available_cores() // workers)
        self.settings = replace(settings, threads=threads)
        self.models_factory = models_factory
        self.rootdir = rootdir
        self.cache = {} if cache is None else cache
        self.runs = 0  # jobs actually run (cache misses)
        self._sandbox, self._own_sandbox = sandbox, sandbox is None
        self._models = None
        self._pool = None

    # in-process resources, started on first use: the sandbox before the models
    def _local(self) -> tuple[Any, Any]:
        if self._sandbox is None:
            from ..sandbox import Limits, Sandbox

            self._sandbox = Sandbox(Limits.from_settings(self.settings))
        if self._models is None:
            self._models = (self.models_factory() if self.models_factory is not None
                            else _model_pool(self.settings, self.rootdir))
        return self._sandbox, self._models

    def _workers(self):
        if self._pool is None:
            spec = WorkerSpec(tuple(self.problems.values()), self.settings, self.rootdir,
                              self.models_factory)
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, initializer=_init_worker, initargs=(spec,))
        return self._pool

    def cached(self, job: EvalJob) -> EvalResult | None:
        data = self.cache.get(job.key)
        return None if data is None else EvalResult.from_dict(data)

    def run(self, jobs: Sequence[EvalJob], on_done: Callable[[int], None] | None = None) -> list[EvalResult]:
        """Results in job order; `on_done(i)` after job i is known (cached ones first)."""
        results: list[EvalResult | None] = [None] * len(jobs)
        todo: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            hit = self.cached(job)
            if hit is not None:
                results[i] = hit
                if on_done:
                    on_done(i)
            else:
                todo.setdefault(job.key, []).append(i)
        pending = [jobs[indices[0]] for indices in todo.values()]
        for job, data in zip(pending, self._execute(pending)):
            self.cache[job.key] = data
            self.runs += 1
            for i in todo[job.key]:
                results[i] = EvalResult.from_dict(data)
                if on_done:
                    on_done(i)
        return results  # type: ignore[return-value]

    def _execute(self, jobs: Sequence[EvalJob]) -> Iterable[dict[str, list]]:
        if not jobs:
            return
        if self.workers == 1:
            sandbox, models = self._local()
            for job in jobs:
                yield run_job(job, self.problems, models, sandbox, self.settings).to_dict()
        else:
            yield from self._workers().imap(_worker_run, jobs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        if self._models is not None and self.models_factory is None:
            self._models.close()
        self._models = None
        if self._own_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None
